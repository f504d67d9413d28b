#!/usr/bin/env python3
"""Benchmark a real guest's hibernation onto its paging disk and its resume in a new QEMU.

    make bench-hibernate [BENCH_ARGS="--repeat 3 --memory 512"]

Each run: a cold boot of the guest image (QEMU, no operator) with a new sparse paging disk
(serial lparkube-paging), swap enabled on it and a shell counter running; then, typed on the
console as the agent's /v1/hibernate does, /sys/power/resume and /sys/power/disk = shutdown
and ``echo disk > /sys/power/state``. Measured:

* hibernate: the write to /sys/power/state -> the QEMU process gone (image written, powered
  off, QEMU ended by the launcher);
* resume: a new QEMU process started for the same Domain -> its console's shell answering (the
  guest image's rcS found the image and the kernel restored it);
* cold boot: QEMU started -> the console's shell answering, for comparison.

Also the image size (the kernel's "Need to copy N pages") and what the paging disk's sparse
file really holds afterwards. One guest at a time (the machine's 2 cores are shared). Prints
each run and the medians.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from lparkube_devenv import guestimage
from lparkube_devenv.qemu import hibernation
from lparkube_devenv.qemu.launcher import State
from lparkube_devenv.qemu.machine import KernelBoot

MIB = 1024 * 1024
TIMEOUT = 600.0
COUNTER = "(sh -c 'n=0; while :; do n=$((n+1)); echo \"counter $n\" >/dev/null; sleep 1; done' &)"


def one_run(kernel_boot: KernelBoot, workdir: Path, memory_mib: int, paging_mib: int) -> dict:
    paging = hibernation.paging_disk(workdir / "paging.img", paging_mib * MIB)
    domain = hibernation.guest_domain(kernel_boot, (paging,), memory_mib, name="bench")
    first = hibernation.start(domain, workdir / "cold", TIMEOUT)
    try:
        hibernation.enable_swap(first.console)
        boot_id = first.console.run("cat /proc/sys/kernel/random/boot_id").strip()
        first.console.run(COUNTER)
        hibernated = hibernation.hibernate(first, TIMEOUT)
    finally:
        first.close()
    if hibernated.status.state != State.SHUTDOWN or not hibernated.copied_pages:
        raise SystemExit(f"the guest did not hibernate: {hibernated.status}")
    on_disk = hibernation.disk_usage(paging.backing.path)
    second = hibernation.start(domain, workdir / "resume", TIMEOUT)
    try:
        restored = second.console.run("cat /proc/sys/kernel/random/boot_id").strip()
    finally:
        second.close()
    if restored != boot_id:
        raise SystemExit(f"the image was not restored: boot id {restored} after {boot_id}")
    return {
        "cold boot": first.responsive_after,
        "hibernate": hibernated.seconds,
        "resume": second.responsive_after,
        "image MiB": hibernated.image_bytes / MIB,
        "on disk MiB": on_disk / MIB,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--memory", type=int, default=512, help="guest memory, MiB")
    parser.add_argument("--paging", type=int, default=1024, help="paging disk size, MiB")
    args = parser.parse_args()
    image = guestimage.ensure_image()
    runs = []
    with tempfile.TemporaryDirectory(prefix="lparkube-bench-hib-") as tmp:
        kernel_boot = KernelBoot.of(guestimage.image_for_run(image, Path(tmp) / "image"))
        for index in range(args.repeat):
            result = one_run(kernel_boot, Path(tmp) / f"run-{index}", args.memory, args.paging)
            runs.append(result)
            print(f"run {index + 1}: " + ", ".join(f"{k} {v:.1f}" for k, v in result.items()))
            sys.stdout.flush()
    print(f"medians of {len(runs)} ({args.memory} MiB guest, seconds unless said):")
    for name in runs[0]:
        print(f"  {name:12} {statistics.median(r[name] for r in runs):7.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
