"""One VMI as one QEMU machine: the ``Domain`` read from the VMI spec, and the exact QEMU argv.

Pure: nothing here starts a process or touches a file. virt-launcher turns a VMI into a libvirt
domain and libvirt turns that into a QEMU command line; this module does both steps for the
subset of KubeVirt's API the stand-in supports, and raises ``SpecError`` (saying what to change)
for anything else rather than booting something other than what the spec asks for.

The machine is fixed so that a memory image written by one QEMU process can be restored by
another: machine type ``pc-q35-7.2`` (versioned, never the moving ``q35`` alias), SeaBIOS,
CPU model ``Nehalem-v1`` with ``enforce`` (see ``CPU_MODEL``), ``-nodefaults`` and every PCI
device at an address derived from the spec alone (``device_tree``).

What KubeVirt reads, and where (KubeVirt v1.9 source):

* memory: ``spec.domain.memory.guest``, else ``resources.requests.memory``, else
  ``resources.limits.memory`` (``vcpu.GetVirtualMemory``); rounded up to whole MiB here;
* CPU topology: ``spec.domain.cpu`` sockets/cores/threads (unset = 1); with none of them set,
  sockets = the CPU limit, else the CPU request, rounded up (``vcpu.GetCPUTopology``);
* panic devices: ``spec.domain.devices.panicDevices[].model`` one of ``isa`` (the default
  on x86), ``pvpanic`` (libvirt's PCI pvpanic) or ``hyperv`` (the ``hv-crash`` CPU feature)
  (``compute/panic_devices.go``, ``validatePanicDevices``);
* kernel boot: ``spec.domain.firmware.kernelBoot`` = ``{kernelArgs, container: {image,
  kernelPath, initrdPath}}``; kernelArgs without a container is invalid
  (``validateKernelBoot``);
* firmware UUID: ``spec.domain.firmware.uuid``, else the VM controller's
  SHA-1 UUID of the name in namespace 6a1a24a1-4061-4607-8bf4-a3963d0c5895
  (``watch/vm/firmware.go``); SMBIOS type 1 says KubeVirt/None/KubeVirt as KubeVirt's defaults;
* memory balloon unless ``autoattachMemBalloon: false``, with free page reporting unless the
  annotation ``kubevirt.io/free-page-reporting-disabled: "true"`` (``compute/balloon.go``).
"""

from __future__ import annotations

import math
import re
import shlex
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from kubernetes.utils import parse_quantity

from ..vmi_spec import mac_address, networks_of

MACHINE_TYPE = "pc-q35-7.2"
MACHINE_ALIASES = ("", "q35", MACHINE_TYPE)
# Nehalem-v1 is x86-64-v2 (SSE3, SSSE3, SSE4.1/4.2, POPCNT, CX16): more than Debian 12 needs
# (plain x86-64), emulated in full by TCG 7.2, runnable under KVM on any x86-64-v2 host, and
# versioned so QEMU never changes it under us. ``enforce`` makes QEMU refuse to start rather
# than drop a feature the host lacks, so a guest never sees a CPU other than this one.
CPU_MODEL = "Nehalem-v1"
GUEST_NETWORK = "10.0.2.0/24"
GUEST_GATEWAY = "10.0.2.2"
GUEST_ADDRESS = "10.0.2.15"
GUEST_SERVICE_ADDRESS = "10.0.2.100"  # where guestfwd answers for host services
HOSTS_FW_CFG = "opt/io.lparkube/hosts"
FIRMWARE_UUID_NAMESPACE = uuid.UUID("6a1a24a1-4061-4607-8bf4-a3963d0c5895")
FREE_PAGE_REPORTING_DISABLED = "kubevirt.io/free-page-reporting-disabled"
PANIC_MODELS = ("isa", "pvpanic", "hyperv")
WATCHDOG_ACTIONS = ("poweroff", "reset", "shutdown")
BACKING_FORMATS = ("raw", "qcow2")
SERIAL_PATTERN = re.compile(r"^[A-Za-z0-9_.+-]+$")  # KubeVirt's disk serial validation
VIRTIO_SERIAL_BYTES = 20  # virtio-blk hands the guest the first 20 bytes of the serial
SATA_PORTS = 6  # the ICH9 AHCI controller q35 builds in at 00:1f.2 (buses ide.0 .. ide.5)

# PCI slots on pcie.0. 00.0 is the host bridge and 1f.x the ICH9 functions q35 builds in;
# everything else is placed here, by kind and by index in spec order, never by discovery.
SLOT_BALLOON = 0x01
SLOT_PVPANIC = 0x02
SLOT_WATCHDOG = 0x03
SLOT_NIC = 0x04
FIRST_DISK_SLOT = 0x08
LAST_DISK_SLOT = 0x1E


class SpecError(ValueError):
    """The VMI asks for something the stand-in's QEMU cannot give it; the message says what."""


@dataclass(frozen=True)
class Backing:
    """What a disk is backed by on the host: a file (a PVC's, or a generated ISO)."""

    path: Path
    format: str = "raw"
    readonly: bool = False
    # A PVC's file: each node reaches a volume through its own attachment, so this host's
    # file locks must not stand in for Kubernetes' attach rules (RWX is shared across nodes).
    host_locks: bool = True


@dataclass(frozen=True)
class Disk:
    name: str  # the disk's (and its volume's) name
    serial: str
    bus: str  # virtio | sata
    device: str  # disk | cdrom
    backing: Backing
    readonly: bool
    boot_order: int | None = None


@dataclass(frozen=True)
class Nic:
    name: str
    mac: str
    boot_order: int | None = None


@dataclass(frozen=True)
class KernelBoot:
    kernel: Path
    initrd: Path | None
    cmdline: str

    @classmethod
    def of(cls, image: Any) -> KernelBoot:
        """From anything with ``kernel``, ``initrd`` and ``cmdline`` (the guest image)."""
        return cls(Path(image.kernel), Path(image.initrd) if image.initrd else None, image.cmdline)


@dataclass(frozen=True)
class Watchdog:
    name: str
    action: str = "reset"  # KubeVirt's default for i6300esb


@dataclass(frozen=True)
class Domain:
    """The machine one VMI asks for, with every volume resolved to its host file."""

    name: str  # <namespace>_<name>, as virt-launcher names the libvirt domain
    uuid: str
    memory_mib: int
    sockets: int = 1
    cores: int = 1
    threads: int = 1
    disks: tuple[Disk, ...] = ()
    nics: tuple[Nic, ...] = ()
    kernel_boot: KernelBoot | None = None  # None: SeaBIOS boots from the disks
    panic_models: tuple[str, ...] = ()
    watchdog: Watchdog | None = None
    balloon: bool = True
    free_page_reporting: bool = True
    serial_console: bool = True
    acpi: bool = True

    @property
    def vcpus(self) -> int:
        return self.sockets * self.cores * self.threads

    @property
    def memory_bytes(self) -> int:
        return self.memory_mib * 1024 * 1024


@dataclass(frozen=True)
class HostForward:
    """Host (VMI loopback IP, port) -> guest port: ``hostfwd``."""

    host_ip: str
    host_port: int
    guest_port: int


@dataclass(frozen=True)
class GuestService:
    """Guest 10.0.2.100:``port`` -> a host loopback service, through the relay."""

    port: int
    host: str
    host_port: int
    names: tuple[str, ...] = ()  # host names the guest resolves to 10.0.2.100 (fw_cfg)


@dataclass(frozen=True)
class Network:
    forwards: tuple[HostForward, ...] = ()
    services: tuple[GuestService, ...] = ()
    relay: tuple[str, ...] = ()  # argv prefix; HOST PORT are appended per service


@dataclass(frozen=True)
class RunFiles:
    """Where one QEMU process keeps its sockets and logs."""

    qmp_socket: Path
    serial_socket: Path
    serial_log: Path
    hosts_file: Path

    @classmethod
    def in_dir(cls, run_dir: Path, socket_dir: Path | None = None) -> RunFiles:
        sockets = socket_dir or run_dir
        return cls(
            qmp_socket=sockets / "qmp.sock",
            serial_socket=sockets / "serial0.sock",
            serial_log=run_dir / "serial0.log",
            hosts_file=run_dir / "hosts",
        )


@dataclass(frozen=True)
class PciDevice:
    slot: int
    driver: str
    id: str
    options: tuple[str, ...] = field(default=())

    @property
    def address(self) -> str:
        return f"0x{self.slot:02x}"


# --- the VMI spec -> Domain ---------------------------------------------------------------------


def _get(obj: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(key)
    return obj


def domain_from_vmi(
    vmi: Mapping[str, Any],
    backings: Mapping[str, Backing],
    default_kernel: KernelBoot | None = None,
    kernel_images: Mapping[str, Path] | None = None,
) -> Domain:
    """The Domain for a VMI whose volumes are resolved to ``backings`` (by volume name).

    ``default_kernel`` boots a VMI without ``kernelBoot`` (the guest image); ``kernel_images``
    maps a kernelBoot container image to the host directory standing for its file system.
    """
    spec = vmi.get("spec") or {}
    domain = spec.get("domain") or {}
    check_machine(domain)
    metadata = vmi.get("metadata") or {}
    sockets, cores, threads = cpu_topology(domain)
    devices = domain.get("devices") or {}
    annotations = metadata.get("annotations") or {}
    return Domain(
        name=f"{metadata.get('namespace', 'default')}_{metadata.get('name', '')}",
        uuid=firmware_uuid(vmi),
        memory_mib=memory_mib(domain),
        sockets=sockets,
        cores=cores,
        threads=threads,
        disks=disks_of(devices, backings),
        nics=nics_of(spec, metadata.get("uid", "")),
        kernel_boot=kernel_boot_of(domain, default_kernel, kernel_images or {}),
        panic_models=panic_models_of(devices),
        watchdog=watchdog_of(devices),
        balloon=devices.get("autoattachMemBalloon") is not False,
        free_page_reporting=annotations.get(FREE_PAGE_REPORTING_DISABLED) != "true",
        serial_console=devices.get("autoattachSerialConsole") is not False,
        acpi=_get(domain, "features", "acpi", "enabled") is not False,
    )


def check_machine(domain: Mapping[str, Any]) -> None:
    """The VMI asks for no machine type or firmware other than the stand-in's."""
    machine = _get(domain, "machine", "type") or ""
    if machine not in MACHINE_ALIASES:
        raise SpecError(
            f"machine type {machine!r} is not available: the stand-in's QEMU runs only "
            f"{MACHINE_TYPE} (leave spec.domain.machine unset or say q35)"
        )
    if _get(domain, "firmware", "bootloader", "efi") is not None:
        raise SpecError("EFI firmware is not available: the stand-in boots SeaBIOS only")


def memory_mib(domain: Mapping[str, Any]) -> int:
    requests = _get(domain, "resources", "requests") or {}
    limits = _get(domain, "resources", "limits") or {}
    value = _get(domain, "memory", "guest") or requests.get("memory") or limits.get("memory")
    if value is None:
        raise SpecError(
            "the VMI asks for no memory: set spec.domain.memory.guest or "
            "spec.domain.resources.requests.memory"
        )
    try:
        size = whole(value)
    except ValueError as exc:
        raise SpecError(f"guest memory: {value!r} is not a quantity (like 512Mi or 1G)") from exc
    mib = -(-size // (1024 * 1024))
    if mib < 1:
        raise SpecError(f"guest memory {value!r} is not a positive size")
    return mib


def whole(value: str | int) -> int:
    """A quantity rounded up to an integer, as Kubernetes' ``Quantity.Value()`` does."""
    return math.ceil(parse_quantity(value))


def cpu_topology(domain: Mapping[str, Any]) -> tuple[int, int, int]:
    cpu = domain.get("cpu") or {}
    counts = [cpu.get(key) or 0 for key in ("sockets", "cores", "threads")]
    for key, count in zip(("sockets", "cores", "threads"), counts, strict=True):
        if not isinstance(count, int) or count < 0:
            raise SpecError(f"spec.domain.cpu.{key} must be a whole number >= 1, not {count!r}")
    sockets, cores, threads = (count or 1 for count in counts)
    if not any(counts):
        resources = domain.get("resources") or {}
        cpus = (resources.get("limits") or {}).get("cpu") or (resources.get("requests") or {}).get(
            "cpu"
        )
        if cpus is not None:
            sockets = max(1, whole(cpus))
    return sockets, cores, threads


def firmware_uuid(vmi: Mapping[str, Any]) -> str:
    given = _get(vmi, "spec", "domain", "firmware", "uuid")
    if given:
        return str(uuid.UUID(str(given)))
    return str(uuid.uuid5(FIRMWARE_UUID_NAMESPACE, _get(vmi, "metadata", "name") or ""))


def disks_of(devices: Mapping[str, Any], backings: Mapping[str, Backing]) -> tuple[Disk, ...]:
    disks = tuple(_disk(d, backings) for d in devices.get("disks") or [])
    _check_unique((d.name for d in disks), "disk name")
    _check_unique((d.serial[:VIRTIO_SERIAL_BYTES] for d in disks if d.bus == "virtio"), "serial")
    return disks


def _disk(disk: Mapping[str, Any], backings: Mapping[str, Backing]) -> Disk:
    name = disk.get("name") or ""
    kinds = [k for k in ("disk", "cdrom", "lun") if k in disk]
    if len(kinds) > 1:
        raise SpecError(f"disk {name!r} says both {kinds[0]} and {kinds[1]}; choose one")
    kind = kinds[0] if kinds else "disk"
    if kind == "lun":
        raise SpecError(f"disk {name!r} is a lun: the stand-in attaches files, not SCSI LUNs")
    target = disk.get(kind) or {}
    bus = target.get("bus") or ("sata" if kind == "cdrom" else "virtio")
    if bus not in ("virtio", "sata") or (kind == "cdrom" and bus != "sata"):
        raise SpecError(
            f"disk {name!r}: bus {bus!r} is not available for a {kind}; the stand-in has "
            "virtio and sata disks and sata CD-ROMs"
        )
    if name not in backings:
        raise SpecError(f"disk {name!r} has no volume of that name in spec.volumes")
    backing = backings[name]
    if backing.format not in BACKING_FORMATS:
        raise SpecError(f"disk {name!r}: image format {backing.format!r} is not raw or qcow2")
    serial = disk.get("serial") or name
    if not SERIAL_PATTERN.match(serial):
        raise SpecError(f"disk {name!r}: serial {serial!r} may hold only A-Z a-z 0-9 _ . + -")
    readonly = target.get("readonly", kind == "cdrom") or backing.readonly
    return Disk(name, serial, bus, kind, backing, bool(readonly), _boot_order(disk, name))


def _boot_order(item: Mapping[str, Any], name: str) -> int | None:
    order = item.get("bootOrder")
    if order is None:
        return None
    if not isinstance(order, int) or order < 1:
        raise SpecError(f"{name!r}: bootOrder must be a whole number >= 1, not {order!r}")
    return order


def _check_unique(values: Iterable[str], what: str) -> None:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise SpecError(
                f"two disks have the {what} {value!r} (the guest sees only the first "
                f"{VIRTIO_SERIAL_BYTES} bytes of a virtio serial); make them differ"
            )
        seen.add(value)


def nics_of(spec: Mapping[str, Any], uid: str) -> tuple[Nic, ...]:
    """The one NIC on the pod network; the stand-in has no other network to offer."""
    networks = {n.get("name"): n for n in networks_of(spec)}
    interfaces = _get(spec, "domain", "devices", "interfaces")
    if interfaces is None:
        interfaces = [{"name": name} for name, net in networks.items() if "pod" in net]
    nics = []
    for interface in interfaces:
        name = interface.get("name") or ""
        network = networks.get(name)
        if network is None or "pod" not in network:
            raise SpecError(
                f"interface {name!r} is not on the pod network: the stand-in's VMs have only "
                "the pod network (QEMU user networking)"
            )
        model = interface.get("model") or "virtio"
        if model != "virtio":
            raise SpecError(f"interface {name!r}: model {model!r} is not available (virtio)")
        mac = interface.get("macAddress") or mac_address(f"{uid}/{name}")
        nics.append(Nic(name, mac.lower(), _boot_order(interface, name)))
    if len(nics) > 1:
        raise SpecError("more than one interface on the pod network; KubeVirt allows one")
    return tuple(nics)


def kernel_boot_of(
    domain: Mapping[str, Any],
    default: KernelBoot | None,
    images: Mapping[str, Path],
) -> KernelBoot | None:
    kernel_boot = _get(domain, "firmware", "kernelBoot") or {}
    container = kernel_boot.get("container")
    if not container:
        if kernel_boot.get("kernelArgs"):
            raise SpecError("kernel arguments cannot be provided without an external kernel")
        return default
    image = container.get("image") or ""
    root = images.get(image)
    if root is None:
        known = ", ".join(sorted(images)) or "none"
        raise SpecError(
            f"kernelBoot image {image!r} is not one the stand-in has (it pulls no images; "
            f"known: {known})"
        )
    if not container.get("kernelPath"):
        raise SpecError("kernelBoot needs container.kernelPath: QEMU boots no initrd alone")
    kernel = _inside(root, container["kernelPath"], "kernelPath")
    initrd = (
        _inside(root, container["initrdPath"], "initrdPath")
        if container.get("initrdPath")
        else None
    )
    return KernelBoot(kernel, initrd, kernel_boot.get("kernelArgs") or "")


def _inside(root: Path, path: str, what: str) -> Path:
    relative = PurePosixPath(path)
    if not relative.is_absolute() or ".." in relative.parts:
        raise SpecError(f"kernelBoot {what} {path!r} must be an absolute path without '..'")
    return Path(root).joinpath(*relative.parts[1:])


def panic_models_of(devices: Mapping[str, Any]) -> tuple[str, ...]:
    models = []
    for panic in devices.get("panicDevices") or []:
        model = (panic or {}).get("model") or "isa"
        if model not in PANIC_MODELS:
            raise SpecError(f"invalid PanicDeviceModel({model})")
        if model in models:
            raise SpecError(f"panic device model {model!r} is listed twice")
        models.append(model)
    return tuple(models)


def watchdog_of(devices: Mapping[str, Any]) -> Watchdog | None:
    watchdog = devices.get("watchdog")
    if not watchdog:
        return None
    if "i6300esb" not in watchdog:
        raise SpecError("watchdog: only the i6300esb watchdog exists on x86")
    action = (watchdog.get("i6300esb") or {}).get("action") or "reset"
    if action not in WATCHDOG_ACTIONS:
        raise SpecError(f"watchdog action {action!r} is not poweroff, reset or shutdown")
    return Watchdog(watchdog.get("name") or "watchdog", action)


# --- Domain -> QEMU argv ------------------------------------------------------------------------


def qemu_argv(
    domain: Domain,
    files: RunFiles,
    network: Network | None = None,
    accel: str = "tcg",
    binary: str = "qemu-system-x86_64",
) -> list[str]:
    """The whole command line. QEMU starts with its CPUs stopped (``-S``): the launcher
    connects to QMP first, so it sees every event of the boot, then sends ``cont``."""
    if accel not in ("kvm", "tcg"):
        raise ValueError(f"accelerator {accel!r} is not kvm or tcg")
    network = network or Network()
    return [
        binary,
        *_machine_args(domain, accel),
        *_monitor_args(files),
        *_serial_args(domain, files),
        *_kernel_args(domain),
        *_network_args(domain, files, network),
        *_disk_args(domain),
        *_device_args(domain),
    ]


def _machine_args(domain: Domain, accel: str) -> list[str]:
    # Guest power-off and panic stop the CPUs and keep the process, so the launcher sees
    # SHUTDOWN / GUEST_PANICKED and then ends QEMU itself, as libvirt (-no-shutdown) does.
    actions = "reboot=reset,shutdown=pause,panic=pause"
    if domain.watchdog:
        actions += f",watchdog={domain.watchdog.action}"
    cpu = f"{CPU_MODEL},enforce" + (",hv-crash" if "hyperv" in domain.panic_models else "")
    topology = f"sockets={domain.sockets},cores={domain.cores},threads={domain.threads}"
    smbios = f"type=1,manufacturer=KubeVirt,product=None,family=KubeVirt,uuid={domain.uuid}"
    return [
        "-name", f"guest={_opt(domain.name)},debug-threads=on",
        "-uuid", domain.uuid,
        "-machine", f"{MACHINE_TYPE},acpi={'on' if domain.acpi else 'off'}",
        "-accel", accel,
        "-cpu", cpu,
        "-m", f"{domain.memory_mib}M",
        "-smp", f"{domain.vcpus},{topology}",
        "-smbios", smbios,
        "-rtc", "base=utc",
        "-nodefaults", "-no-user-config", "-display", "none", "-S",
        "-msg", "timestamp=on",
        "-action", actions,
    ]  # fmt: skip


def _monitor_args(files: RunFiles) -> list[str]:
    return [
        "-chardev", f"socket,id=qmp,path={_opt(files.qmp_socket)},server=on,wait=off",
        "-mon", "chardev=qmp,mode=control",
    ]  # fmt: skip


def _serial_args(domain: Domain, files: RunFiles) -> list[str]:
    if not domain.serial_console:
        return []
    chardev = (
        f"socket,id=charserial0,path={_opt(files.serial_socket)},server=on,wait=off,"
        f"logfile={_opt(files.serial_log)},logappend=on"
    )
    return ["-chardev", chardev, "-device", "isa-serial,chardev=charserial0,id=serial0,index=0"]


def _kernel_args(domain: Domain) -> list[str]:
    boot = domain.kernel_boot
    if boot is None:
        return []
    args = ["-kernel", str(boot.kernel)]
    if boot.initrd is not None:
        args += ["-initrd", str(boot.initrd)]
    if boot.cmdline:
        args += ["-append", boot.cmdline]
    return args


def _network_args(domain: Domain, files: RunFiles, network: Network) -> list[str]:
    if not domain.nics:
        if network.forwards or network.services:
            raise SpecError("ports are forwarded to a VMI that has no interface")
        return []
    args = ["-netdev", netdev_option(network)]
    if network.services:
        args += ["-fw_cfg", f"name={HOSTS_FW_CFG},file={_opt(files.hosts_file)}"]
    return args


def netdev_option(network: Network) -> str:
    """User networking in its isolated mode: only the forwarded ports reach in or out."""
    parts = [
        "user,id=net0,restrict=on,ipv6=off",
        f"net={GUEST_NETWORK},host={GUEST_GATEWAY},dhcpstart={GUEST_ADDRESS}",
    ]
    for forward in network.forwards:
        parts.append(
            f"hostfwd=tcp:{forward.host_ip}:{forward.host_port}-{GUEST_ADDRESS}:{forward.guest_port}"
        )
    if network.services and not network.relay:
        raise ValueError("guest services need the relay command")
    for service in network.services:
        command = relay_command(network.relay, service)
        parts.append(f"guestfwd=tcp:{GUEST_SERVICE_ADDRESS}:{service.port}-cmd:{_opt(command)}")
    return ",".join(parts)


def relay_command(relay: Sequence[str], service: GuestService) -> str:
    """The command line QEMU runs (through glib's shell-style parsing) for one connection."""
    return shlex.join([*relay, service.host, str(service.host_port)])


def hosts_text(services: Iterable[GuestService]) -> str:
    """The fw_cfg hosts file: one ``10.0.2.100 <name>`` line per service name."""
    return "".join(f"{GUEST_SERVICE_ADDRESS} {name}\n" for s in services for name in s.names)


def _disk_args(domain: Domain) -> list[str]:
    args: list[str] = []
    slots = {d.id: d.address for d in device_tree(domain) if d.driver == "virtio-blk-pci"}
    sata_port = 0
    for index, disk in enumerate(domain.disks):
        args += _blockdev_args(index, disk)
        if disk.bus == "virtio":
            device = f"virtio-blk-pci,bus=pcie.0,addr={slots[f'ua-{disk.name}']}"
        else:
            driver = "ide-cd" if disk.device == "cdrom" else "ide-hd"
            device = f"{driver},bus=ide.{sata_port}"
            sata_port += 1
        device += f",drive={disk_node_name(index)},id=ua-{disk.name},serial={disk.serial}"
        if disk.boot_order is not None:
            device += f",bootindex={disk.boot_order}"
        args += ["-device", device]
    return args


def disk_node_name(index: int) -> str:
    """The node name of the format (raw/qcow2) node of the Domain's disk at ``index``: what
    the guest's device is attached to, and what QMP ``block_resize`` names."""
    return f"disk{index}"


def _blockdev_args(index: int, disk: Disk) -> list[str]:
    readonly = "on" if disk.readonly else "off"
    discard = "" if disk.readonly else ",discard=unmap"
    locking = "" if disk.backing.host_locks else ",locking=off"
    file_node = (
        f"driver=file,filename={_opt(disk.backing.path)},node-name=file{index},"
        f"read-only={readonly}{discard}{locking}"
    )
    format_node = (
        f"driver={disk.backing.format},file=file{index},node-name={disk_node_name(index)},"
        f"read-only={readonly}{discard}"
    )
    return ["-blockdev", file_node, "-blockdev", format_node]


def _device_args(domain: Domain) -> list[str]:
    args = ["-device", "pvpanic,id=panic-isa"] if "isa" in domain.panic_models else []
    for device in device_tree(domain):
        if device.driver != "virtio-blk-pci":  # disks are placed with their drives
            options = "".join(f",{o}" for o in device.options)
            placed = f"{device.driver},id={device.id},bus=pcie.0,addr={device.address}"
            args += ["-device", placed + options]
    return args


def device_tree(domain: Domain) -> list[PciDevice]:
    """Every PCI device we add, at its slot on pcie.0, from the Domain alone."""
    devices = []
    if domain.balloon:
        reporting = "on" if domain.free_page_reporting else "off"
        option = f"free-page-reporting={reporting}"
        devices.append(PciDevice(SLOT_BALLOON, "virtio-balloon-pci", "balloon0", (option,)))
    if "pvpanic" in domain.panic_models:
        devices.append(PciDevice(SLOT_PVPANIC, "pvpanic-pci", "panic-pci"))
    if domain.watchdog:
        devices.append(PciDevice(SLOT_WATCHDOG, "i6300esb", f"ua-{domain.watchdog.name}"))
    devices += [_nic_device(index, nic) for index, nic in enumerate(domain.nics)]
    devices += _disk_devices(domain)
    return devices


def _nic_device(index: int, nic: Nic) -> PciDevice:
    # romfile= (no iPXE ROM): nothing boots from the network, and the ROM's size would make
    # the machine depend on the ipxe-qemu package's version.
    options = [f"netdev=net{index}", f"mac={nic.mac}", "romfile="]
    if nic.boot_order is not None:
        options.append(f"bootindex={nic.boot_order}")
    return PciDevice(SLOT_NIC + index, "virtio-net-pci", f"ua-{nic.name}", tuple(options))


def _disk_devices(domain: Domain) -> list[PciDevice]:
    virtio = [d for d in domain.disks if d.bus == "virtio"]
    if len(virtio) > LAST_DISK_SLOT - FIRST_DISK_SLOT + 1:
        raise SpecError(
            f"{len(virtio)} virtio disks do not fit: the stand-in's machine has PCI slots "
            f"for {LAST_DISK_SLOT - FIRST_DISK_SLOT + 1}"
        )
    if sum(d.bus == "sata" for d in domain.disks) > SATA_PORTS:
        raise SpecError(f"more than {SATA_PORTS} sata disks: the AHCI controller has 6 ports")
    return [
        PciDevice(FIRST_DISK_SLOT + index, "virtio-blk-pci", f"ua-{disk.name}")
        for index, disk in enumerate(virtio)
    ]


def _opt(value: object) -> str:
    """A value inside a QEMU option list, where a comma is written twice."""
    return str(value).replace(",", ",,")
