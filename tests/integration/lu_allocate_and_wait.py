"""Allocates one LU with the operator's adapter and stops in the middle, to be SIGKILLed there.

python lu_allocate_and_wait.py KUBECONFIG NAMESPACE POOL UID PARTITION SIZE LOCK_SECONDS MARKER

Once the claim's Lease and the PVC's claim are written, before the claim is committed, it
writes the PVC's name to MARKER and waits forever (the test kills it there).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from lparkube.adapters.kube import Kube
from lparkube.adapters.logical_units import LogicalUnits, Storage
from lparkube.domain.logical_units import PAGING, LURequest


async def main(argv: list[str]) -> int:
    kubeconfig, namespace, pool, uid, partition, size, lock, marker = argv
    kube = Kube.connect(Path(kubeconfig))

    async def stop_here(step: str, pvc: str) -> None:
        Path(marker).write_text(f"{step} {pvc}\n")
        await asyncio.sleep(3600)

    units = LogicalUnits(kube, hook=stop_here)
    request = LURequest(namespace, pool, PAGING, int(size), uid, initial_bytes=int(size))
    await units.allocate(request, partition, Storage("lparkube-thin"), float(lock))
    return 1  # never reached while the hook waits


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
