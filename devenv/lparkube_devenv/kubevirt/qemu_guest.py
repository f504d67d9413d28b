"""virt-launcher for real guests: a VMI and its launcher pod become one QEMU process.

`QemuGuests` is the `hosts.GuestFactory` the stand-in uses for VMIs of the QEMU runtime. For a
pod the node's kubelet starts, it resolves the VMI's volumes to host files (a PVC's thin volume
through `storage`, a Secret or ConfigMap as an ISO disk, cloud-init as a NoCloud seed disk, a
containerDisk or emptyDisk as an ephemeral sparse file: images are never pulled), boots the
project's guest image unless the VMI asks for its own `kernelBoot`, forwards the VMI's address
and ports to the guest and lets the guest reach the host services it is given (the operator's
agent gateway), then runs it as a `QemuLauncher` whose state the VMI follows (`QemuGuest`).
"""

from __future__ import annotations

import base64
import logging
import threading
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import guestimage
from ..qemu import machine, relay, volumes
from ..qemu.launcher import LaunchError, QemuLauncher, State
from ..qemu.qmp import QmpClosedError, QmpError
from .api import Kube
from .hosts import VolumeNotReadyError
from .logic import dig

log = logging.getLogger(__name__)
FILESYSTEM_DISK = "disk.img"  # the image KubeVirt keeps in a Filesystem-mode PVC
DEFAULT_AGENT_PORTS = (8443,)  # forwarded when an interface lists no ports


@dataclass(frozen=True)
class HostService:
    """A host loopback service guests reach by name, as a cluster Service would be."""

    name: str  # the DNS name guests use, e.g. lparkube-agent-gateway.lparkube-system.svc
    port: int
    host: str = "127.0.0.1"
    host_port: int = 0  # 0: the same as port


class RunImage:
    """The guest image for this stand-in's guests: built (or taken from the cache) and its
    overlay (init, agent from this checkout) assembled once, when the first guest starts."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._image: guestimage.GuestImage | None = None
        self._lock = threading.Lock()

    def get(self) -> guestimage.GuestImage:
        with self._lock:
            if self._image is None:
                self._image = guestimage.image_for_run(guestimage.ensure_image(), self.directory)
            return self._image

    def kernel_boot(self, _run_dir: Path) -> machine.KernelBoot:
        return machine.KernelBoot.of(self.get())


class QemuGuest:
    """One running QEMU as `hosts.Guest`: states as the VMI lifecycle reads them."""

    def __init__(self, launcher: QemuLauncher) -> None:
        self.launcher = launcher
        self._stopping = False
        self._dump: str | None = None  # None, active, completed, failed: <why>
        self._lock = threading.Lock()
        self._capacities: dict[str, int] = {}  # disk name -> bytes the guest sees (QMP)

    @property
    def console(self) -> Path:
        return self.launcher.files.serial_socket

    def state(self) -> str:
        status = self.launcher.status
        if status.state == State.DESTROYED:
            return "stopped" if self._stopping else "crashed"
        if status.state == State.PAUSED and status.pause_reason != "user":
            return "running"  # paused for a dump: the user did not pause it
        return str(status.state)

    def stop(self, grace: float) -> None:
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
        self.launcher.power_off(grace)

    def kill(self) -> None:
        self.launcher.kill(wait=True)
        self.launcher.close()

    def close(self) -> None:
        self.launcher.close()

    def pause(self) -> None:
        self.launcher.pause()

    def unpause(self) -> None:
        self.launcher.unpause()

    def reboot_soft(self) -> None:
        self.launcher.reboot_soft()

    def cpus_stopped(self) -> AbstractContextManager[None]:
        """The guest's CPUs stopped meanwhile, its disks holding one instant (a snapshot)."""
        return self.launcher.cpus_stopped("snapshot")

    def cut_network(self) -> None:
        """Each NIC's link down (QMP ``set_link``): the guest runs on, reaching nothing."""
        for nic in self.launcher.domain.nics:
            try:
                self.launcher.qmp.execute("set_link", {"name": f"ua-{nic.name}", "up": False})
            except (LaunchError, QmpError, QmpClosedError, TimeoutError) as error:
                log.warning(
                    "QEMU %s: link %s not cut: %s", self.launcher.domain.name, nic.name, error
                )

    def expand_disks(self, capacities: Mapping[str, int]) -> list[str]:
        """KubeVirt's ExpandDisks, online: each disk whose volume now offers more than the
        guest sees is resized in place (``block_resize``); a volume never shrinks a disk.
        The disks resized; a disk QEMU could not resize now is tried again next time."""
        if self.launcher.status.state not in (State.RUNNING, State.PAUSED):
            return []
        resized = []
        for disk, wanted in capacities.items():
            size = wanted - wanted % 512
            try:
                current = self._capacities.get(disk)
                if current is None:
                    current = self._capacities[disk] = self.launcher.disk_capacity(disk)
                if size <= current:
                    continue
                self.launcher.block_resize(disk, size)
            except (LaunchError, QmpError, QmpClosedError, TimeoutError) as error:
                log.warning(
                    "QEMU %s: disk %s not resized: %s", self.launcher.domain.name, disk, error
                )
                continue
            log.info(
                "QEMU %s: disk %s resized %d -> %d bytes",
                self.launcher.domain.name,
                disk,
                current,
                size,
            )
            self._capacities[disk] = size
            resized.append(disk)
        return resized

    def memory_dump(self, path: Path) -> None:
        with self._lock:
            if self._dump == "active":
                return
            self._dump = "active"
        threading.Thread(
            target=self._run_dump, args=(path,), name="memory-dump", daemon=True
        ).start()

    def _run_dump(self, path: Path) -> None:
        try:
            self.launcher.memory_dump(path)
            outcome = "completed"
        except Exception as error:
            outcome = f"failed: {error}"
        with self._lock:
            self._dump = outcome

    def dump_state(self) -> str:
        with self._lock:
            return self._dump or "failed: no dump was started"


@dataclass
class QemuGuests:
    """The factory: what a node needs to run a VMI's guest."""

    kube: Kube
    storage: Any  # storage.ThinStorage
    workdir: Path
    image: Callable[[Path], machine.KernelBoot]  # the guest image for a run directory
    services: tuple[HostService, ...] = ()
    relay: tuple[str, ...] = field(default_factory=relay.command)
    kernel_images: Mapping[str, Path] = field(default_factory=dict)  # kernelBoot images

    def __call__(self, vmi: dict, pod: dict, node: str) -> QemuGuest:
        meta = vmi["metadata"]
        run_dir = guest_run_dir(self.workdir, meta["namespace"], meta["name"])
        run_dir.mkdir(parents=True, exist_ok=True)
        backings = self._backings(vmi, run_dir)
        domain = machine.domain_from_vmi(
            vmi, backings, self.image(run_dir), dict(self.kernel_images)
        )
        address = str(dig(pod, "status", "podIP") or "")
        network = machine.Network(
            forwards=tuple(machine.HostForward(address, p, p) for p in forwarded_ports(vmi)),
            services=tuple(_guest_service(s) for s in self.services),
            relay=self.relay,
        )
        launcher = QemuLauncher(domain, run_dir, network=network)
        launcher.start()
        return QemuGuest(launcher)

    def _backings(self, vmi: dict, run_dir: Path) -> dict[str, machine.Backing]:
        namespace = vmi["metadata"]["namespace"]
        return volumes.resolve_volumes(
            vmi,
            run_dir,
            claim_file=lambda claim: self._claim_file(namespace, claim),
            secret_data=lambda name: self._data(namespace, "secrets", name),
            config_map_data=lambda name: self._data(namespace, "configmaps", name),
        )

    def _claim_file(self, namespace: str, claim: str) -> Path:
        backing = self.storage.backing(namespace, claim)
        if backing.volume_mode == "Block":
            return backing.path
        image = backing.path / FILESYSTEM_DISK
        if not image.exists():  # virt-launcher creates the disk image in a Filesystem PVC
            pvc = self.kube.get(f"/api/v1/namespaces/{namespace}/persistentvolumeclaims/{claim}")
            size = dig(pvc, "status", "capacity", "storage") or dig(
                pvc, "spec", "resources", "requests", "storage"
            )
            _sparse(image, machine.whole(size) if size else volumes.EPHEMERAL_DISK_BYTES)
        return image

    def _data(self, namespace: str, kind: str, name: str) -> dict[str, bytes]:
        obj = self.kube.get(f"/api/v1/namespaces/{namespace}/{kind}/{name}")
        if obj is None:  # as kubelet's MountVolume.SetUp: the pod waits for it
            what = "secret" if kind == "secrets" else "configmap"
            raise VolumeNotReadyError(f'MountVolume.SetUp failed: {what} "{name}" not found')
        decoded = {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
        plain = {k: v.encode() for k, v in (obj.get("stringData") or {}).items()}
        return {**decoded, **plain}


def guest_run_dir(workdir: Path, namespace: str, name: str) -> Path:
    """Where a VMI's QEMU keeps its sockets (QMP, serial console) and logs."""
    return workdir / "guests" / namespace / name


def forwarded_ports(vmi: dict) -> list[int]:
    """The pod-network interface's declared ports, else the agent's default port."""
    ports: list[int] = []
    for iface in dig(vmi, "spec", "domain", "devices", "interfaces", default=[]) or []:
        for port in iface.get("ports") or []:
            if (port.get("protocol") or "TCP") == "TCP" and isinstance(port.get("port"), int):
                ports.append(port["port"])
    return sorted(set(ports)) or list(DEFAULT_AGENT_PORTS)


def _sparse(path: Path, size: int) -> None:
    with path.open("ab") as handle:
        handle.truncate(max(size, handle.tell()))


def _guest_service(service: HostService) -> machine.GuestService:
    return machine.GuestService(
        port=service.port,
        host=service.host,
        host_port=service.host_port or service.port,
        names=(service.name,),
    )
