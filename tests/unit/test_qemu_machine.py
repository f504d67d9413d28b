"""The VMI spec -> Domain -> QEMU argv translation (pure): same spec, same machine."""

from __future__ import annotations

import copy
import json
import uuid
from pathlib import Path

import pytest

from lparkube_devenv.qemu.machine import (
    FIRMWARE_UUID_NAMESPACE,
    Backing,
    Disk,
    Domain,
    GuestService,
    HostForward,
    KernelBoot,
    Network,
    RunFiles,
    SpecError,
    device_tree,
    domain_from_vmi,
    hosts_text,
    memory_mib,
    netdev_option,
    qemu_argv,
    whole,
)
from lparkube_devenv.vmi_spec import mac_address

GUEST_KERNEL = KernelBoot(Path("/img/vmlinuz"), Path("/img/initrd"), "console=ttyS0")
RELAY = ("/venv/bin/python", "-m", "lparkube_devenv.qemu.relay")


def vmi(devices: dict | None = None, **domain) -> dict:
    """A VMI as the operator's templates make them: a root PVC and the secret key disk.

    ``devices`` are added to (or replace) the default devices; the rest go into the domain.
    """
    spec_domain = {
        "resources": {"requests": {"memory": "1Gi"}},
        "devices": {
            "disks": [
                {"name": "root", "disk": {"bus": "virtio"}},
                {"name": "lparkube-agent", "serial": "lparkube", "disk": {"bus": "virtio"}},
            ],
            **(devices or {}),
        },
    }
    spec_domain.update(domain)
    return {
        "metadata": {"name": "vm1", "namespace": "ns", "uid": "uid-1"},
        "spec": {"domain": spec_domain},
    }


def backings(*names: str) -> dict[str, Backing]:
    names = names or ("root", "lparkube-agent")
    return {name: Backing(Path(f"/pv/{name}.img")) for name in names}


def domain(spec: dict | None = None, **kwargs) -> Domain:
    spec = spec or vmi()
    disks = spec["spec"]["domain"].get("devices", {}).get("disks", [])
    return domain_from_vmi(spec, backings(*[d["name"] for d in disks]), **kwargs)


def argv(spec: dict | None = None, run_dir: str = "/run/vm1", network=None) -> list[str]:
    return qemu_argv(domain(spec, default_kernel=GUEST_KERNEL), RunFiles.in_dir(Path(run_dir)),
                     network)  # fmt: skip


def options(args: list[str], flag: str) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args) if a == flag]


# --- the whole command line ---------------------------------------------------------------------


def test_an_operator_vm_gives_exactly_this_command_line() -> None:
    network = Network(
        forwards=(HostForward("127.77.0.5", 8443, 8443),),
        services=(GuestService(8444, "127.0.0.1", 40123, ("gw.lparkube.svc",)),),
        relay=RELAY,
    )
    firmware_uuid = str(uuid.uuid5(FIRMWARE_UUID_NAMESPACE, "vm1"))
    mac = mac_address("uid-1/default")
    assert argv(network=network) == [
        "qemu-system-x86_64",
        "-name", "guest=ns_vm1,debug-threads=on",
        "-uuid", firmware_uuid,
        "-machine", "pc-q35-7.2,acpi=on",
        "-accel", "tcg",
        "-cpu", "Nehalem-v1,enforce",
        "-m", "1024M",
        "-smp", "1,sockets=1,cores=1,threads=1",
        "-smbios", "type=1,manufacturer=KubeVirt,product=None,family=KubeVirt,"
        f"uuid={firmware_uuid}",
        "-rtc", "base=utc",
        "-nodefaults", "-no-user-config", "-display", "none", "-S",
        "-msg", "timestamp=on",
        "-action", "reboot=reset,shutdown=pause,panic=pause",
        "-chardev", "socket,id=qmp,path=/run/vm1/qmp.sock,server=on,wait=off",
        "-mon", "chardev=qmp,mode=control",
        "-chardev", "socket,id=charserial0,path=/run/vm1/serial0.sock,server=on,wait=off,"
        "logfile=/run/vm1/serial0.log,logappend=on",
        "-device", "isa-serial,chardev=charserial0,id=serial0,index=0",
        "-kernel", "/img/vmlinuz", "-initrd", "/img/initrd", "-append", "console=ttyS0",
        "-netdev", "user,id=net0,restrict=on,ipv6=off,net=10.0.2.0/24,host=10.0.2.2,"
        "dhcpstart=10.0.2.15,hostfwd=tcp:127.77.0.5:8443-10.0.2.15:8443,"
        "guestfwd=tcp:10.0.2.100:8444-cmd:/venv/bin/python -m lparkube_devenv.qemu.relay "
        "127.0.0.1 40123",
        "-fw_cfg", "name=opt/io.lparkube/hosts,file=/run/vm1/hosts",
        "-blockdev", "driver=file,filename=/pv/root.img,node-name=file0,read-only=off,"
        "discard=unmap",
        "-blockdev", "driver=raw,file=file0,node-name=disk0,read-only=off,discard=unmap",
        "-device", "virtio-blk-pci,bus=pcie.0,addr=0x08,drive=disk0,id=ua-root,serial=root",
        "-blockdev", "driver=file,filename=/pv/lparkube-agent.img,node-name=file1,read-only=off,"
        "discard=unmap",
        "-blockdev", "driver=raw,file=file1,node-name=disk1,read-only=off,discard=unmap",
        "-device", "virtio-blk-pci,bus=pcie.0,addr=0x09,drive=disk1,id=ua-lparkube-agent,"
        "serial=lparkube",
        "-device", "virtio-balloon-pci,id=balloon0,bus=pcie.0,addr=0x01,free-page-reporting=on",
        "-device", f"virtio-net-pci,id=ua-default,bus=pcie.0,addr=0x04,netdev=net0,mac={mac},"
        "romfile=",
    ]  # fmt: skip


def test_the_same_spec_gives_the_same_argv_whatever_its_key_order() -> None:
    spec = vmi(devices={"panicDevices": [{"model": "pvpanic"}]}, cpu={"cores": 2})
    reordered = json.loads(json.dumps(spec, sort_keys=True))
    reordered["spec"]["domain"] = dict(reversed(list(reordered["spec"]["domain"].items())))
    assert argv(spec) == argv(copy.deepcopy(spec)) == argv(reordered)


def test_another_run_dir_changes_paths_only_never_the_device_tree() -> None:
    first, second = argv(run_dir="/run/a"), argv(run_dir="/run/b")
    assert [a.replace("/run/a", "/run/b") for a in first] == second
    assert device_tree(domain()) == device_tree(domain(copy.deepcopy(vmi())))


# --- PCI addresses -----------------------------------------------------------------------------


def slots(d: Domain) -> dict[str, int]:
    return {device.id: device.slot for device in device_tree(d)}


def test_every_device_has_its_slot_by_kind_and_spec_order() -> None:
    spec = vmi(
        devices={
            "disks": [{"name": n} for n in ("a", "b", "c")],
            "panicDevices": [{"model": "pvpanic"}],
            "watchdog": {"name": "wd", "i6300esb": {"action": "poweroff"}},
        },
    )
    assert slots(domain(spec)) == {
        "balloon0": 0x01,
        "panic-pci": 0x02,
        "ua-wd": 0x03,
        "ua-default": 0x04,
        "ua-a": 0x08,
        "ua-b": 0x09,
        "ua-c": 0x0A,
    }


def test_optional_devices_leave_the_others_where_they_were() -> None:
    full = vmi(devices={"panicDevices": [{"model": "pvpanic"}]})
    bare = vmi()
    bare["spec"]["domain"]["devices"]["autoattachMemBalloon"] = False
    bare["spec"]["domain"]["devices"]["autoattachPodInterface"] = False
    assert slots(domain(bare)) == {"ua-root": 0x08, "ua-lparkube-agent": 0x09}
    assert {k: v for k, v in slots(domain(full)).items() if k.startswith("ua-l")} == {
        "ua-lparkube-agent": 0x09
    }


def test_sata_disks_take_ahci_ports_and_no_pci_slot() -> None:
    spec = vmi(devices={"disks": [
        {"name": "cd", "cdrom": {}},
        {"name": "v"},
        {"name": "s", "disk": {"bus": "sata"}, "bootOrder": 1},
    ]})  # fmt: skip
    args = argv(spec)
    devices = options(args, "-device")
    assert "ide-cd,bus=ide.0,drive=disk0,id=ua-cd,serial=cd" in devices
    assert "virtio-blk-pci,bus=pcie.0,addr=0x08,drive=disk1,id=ua-v,serial=v" in devices
    assert "ide-hd,bus=ide.1,drive=disk2,id=ua-s,serial=s,bootindex=1" in devices
    blockdevs = options(args, "-blockdev")
    assert "driver=file,filename=/pv/cd.img,node-name=file0,read-only=on" in blockdevs


def test_too_many_disks_are_refused_not_squeezed() -> None:
    many = vmi(devices={"disks": [{"name": f"d{i}"} for i in range(24)]})
    with pytest.raises(SpecError, match="24 virtio disks do not fit"):
        device_tree(domain(many))
    sata = vmi(devices={"disks": [{"name": f"s{i}", "disk": {"bus": "sata"}} for i in range(7)]})
    with pytest.raises(SpecError, match="6 ports"):
        device_tree(domain(sata))


# --- what the spec says -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("resources", "memory", "mib"),
    [
        ({"requests": {"memory": "512Mi"}}, None, 512),
        ({"requests": {"memory": "512Mi"}, "limits": {"memory": "2Gi"}}, None, 512),
        ({"limits": {"memory": "2Gi"}}, None, 2048),
        ({"requests": {"memory": "1Gi"}}, {"guest": "768Mi"}, 768),
        ({"requests": {"memory": "1G"}}, None, 954),  # 10^9 bytes, rounded up to MiB
        ({"requests": {"memory": "536870912"}}, None, 512),
    ],
)
def test_guest_memory_comes_from_guest_then_requests_then_limits(resources, memory, mib) -> None:
    spec = vmi(resources=resources, **({"memory": memory} if memory else {}))
    assert domain(spec).memory_mib == mib
    assert f"{mib}M" in options(argv(spec), "-m")


@pytest.mark.parametrize(
    ("cpu", "resources", "topology"),
    [
        (None, {}, (1, 1, 1)),
        ({"cores": 2}, {}, (1, 2, 1)),
        ({"sockets": 2, "cores": 2, "threads": 2}, {}, (2, 2, 2)),
        (None, {"requests": {"cpu": "1500m"}}, (2, 1, 1)),
        (None, {"limits": {"cpu": "3"}, "requests": {"cpu": "1"}}, (3, 1, 1)),
        ({"threads": 2}, {"limits": {"cpu": "4"}}, (1, 1, 2)),
    ],
)
def test_cpu_topology_as_kubevirt_computes_it(cpu, resources, topology) -> None:
    resources = {**resources, "requests": {"memory": "1Gi", **resources.get("requests", {})}}
    spec = vmi(resources=resources, **({"cpu": cpu} if cpu else {}))
    d = domain(spec)
    assert (d.sockets, d.cores, d.threads) == topology
    sockets, cores, threads = topology
    assert options(argv(spec), "-smp") == [
        f"{sockets * cores * threads},sockets={sockets},cores={cores},threads={threads}"
    ]


def test_firmware_uuid_is_the_spec_s_or_the_vm_controller_s() -> None:
    given = vmi(firmware={"uuid": "5D307CA9-B3EF-428C-8861-06E72D69F223"})
    assert domain(given).uuid == "5d307ca9-b3ef-428c-8861-06e72d69f223"
    derived = uuid.UUID(domain().uuid)
    assert derived.version == 5
    assert derived == uuid.uuid5(uuid.UUID("6a1a24a1-4061-4607-8bf4-a3963d0c5895"), "vm1")


def test_serial_defaults_to_the_volume_name_and_readonly_follows_disk_and_claim() -> None:
    spec = vmi(devices={"disks": [
        {"name": "data", "disk": {"readonly": True}},
        {"name": "keys", "serial": "lparkube"},
        {"name": "claimed"},
    ]})  # fmt: skip
    d = domain_from_vmi(
        spec,
        {
            "data": Backing(Path("/d")),
            "keys": Backing(Path("/k")),
            "claimed": Backing(Path("/c"), readonly=True),
        },
    )
    assert [(x.name, x.serial, x.readonly) for x in d.disks] == [
        ("data", "data", True),
        ("keys", "lparkube", False),
        ("claimed", "claimed", True),
    ]


def test_kernel_boot_comes_from_the_spec_s_image_else_the_guest_image(tmp_path: Path) -> None:
    assert domain(default_kernel=GUEST_KERNEL).kernel_boot == GUEST_KERNEL
    assert domain().kernel_boot is None  # SeaBIOS boots the disks
    spec = vmi(firmware={"kernelBoot": {
        "kernelArgs": "console=ttyS0 quiet",
        "container": {"image": "example/kernel:1", "kernelPath": "/boot/vmlinuz",
                      "initrdPath": "/boot/initrd.img"},
    }})  # fmt: skip
    booted = domain(spec, default_kernel=GUEST_KERNEL, kernel_images={"example/kernel:1": tmp_path})
    assert booted.kernel_boot == KernelBoot(
        tmp_path / "boot/vmlinuz", tmp_path / "boot/initrd.img", "console=ttyS0 quiet"
    )
    args = qemu_argv(booted, RunFiles.in_dir(tmp_path))
    assert options(args, "-kernel") == [str(tmp_path / "boot/vmlinuz")]
    assert options(args, "-append") == ["console=ttyS0 quiet"]


def test_panic_devices_as_kubevirt_1_9_has_them() -> None:
    def panic(*models):
        spec = vmi(devices={"panicDevices": [{"model": m} if m else {} for m in models]})
        return argv(spec)

    assert "pvpanic-pci,id=panic-pci,bus=pcie.0,addr=0x02" in options(panic("pvpanic"), "-device")
    assert "pvpanic,id=panic-isa" in options(panic(None), "-device")  # isa, x86's default
    assert options(panic("hyperv"), "-cpu") == ["Nehalem-v1,enforce,hv-crash"]
    bare = argv()
    assert not [d for d in options(bare, "-device") if "pvpanic" in d]
    assert options(bare, "-action") == ["reboot=reset,shutdown=pause,panic=pause"]


def test_a_watchdog_gets_its_device_and_action() -> None:
    spec = vmi(devices={"disks": [], "watchdog": {"name": "wd", "i6300esb": {}}})
    args = argv(spec)
    assert "i6300esb,id=ua-wd,bus=pcie.0,addr=0x03" in options(args, "-device")
    assert options(args, "-action") == ["reboot=reset,shutdown=pause,panic=pause,watchdog=reset"]


def test_balloon_serial_console_and_acpi_follow_their_switches() -> None:
    spec = vmi()
    spec["metadata"]["annotations"] = {"kubevirt.io/free-page-reporting-disabled": "true"}
    assert any("free-page-reporting=off" in d for d in options(argv(spec), "-device"))
    spec["spec"]["domain"]["devices"].update(
        {"autoattachMemBalloon": False, "autoattachSerialConsole": False}
    )
    spec["spec"]["domain"]["features"] = {"acpi": {"enabled": False}}
    args = argv(spec)
    assert not [d for d in options(args, "-device") if "balloon" in d or "isa-serial" in d]
    assert options(args, "-chardev") == ["socket,id=qmp,path=/run/vm1/qmp.sock,server=on,wait=off"]
    assert options(args, "-machine") == ["pc-q35-7.2,acpi=off"]


def test_the_nic_takes_the_spec_s_mac_else_the_stand_in_s() -> None:
    spec = vmi(devices={"disks": [], "interfaces": [
        {"name": "default", "masquerade": {}, "macAddress": "02:AA:BB:CC:DD:EE", "bootOrder": 2}
    ]})  # fmt: skip
    assert domain(spec).nics[0].mac == "02:aa:bb:cc:dd:ee"
    nic_options = "mac=02:aa:bb:cc:dd:ee,romfile=,bootindex=2"
    assert any(nic_options in d for d in options(argv(spec), "-device"))
    assert domain().nics[0].mac == mac_address("uid-1/default")


def test_network_is_isolated_and_forwards_only_what_it_is_told() -> None:
    network = Network(
        forwards=(HostForward("127.77.0.9", 8443, 8443), HostForward("127.77.0.9", 2222, 22)),
        services=(GuestService(8444, "127.0.0.1", 5000), GuestService(9000, "127.0.0.1", 5001)),
        relay=("/path,with,commas/python", "-m", "relay"),
    )
    option = netdev_option(network)
    assert option.startswith("user,id=net0,restrict=on,")
    assert "hostfwd=tcp:127.77.0.9:8443-10.0.2.15:8443" in option
    assert "hostfwd=tcp:127.77.0.9:2222-10.0.2.15:22" in option
    assert (
        "guestfwd=tcp:10.0.2.100:8444-cmd:/path,,with,,commas/python -m relay 127.0.0.1 5000"
        in (option)
    )
    assert "guestfwd=tcp:10.0.2.100:9000-cmd:" in option
    with pytest.raises(ValueError, match="relay"):
        netdev_option(Network(services=(GuestService(1, "127.0.0.1", 2),)))


def test_hosts_file_names_every_service_at_the_guest_service_address() -> None:
    services = (
        GuestService(8444, "127.0.0.1", 5000, ("lparkube-agent-gateway.lparkube.svc", "gw")),
        GuestService(9000, "127.0.0.1", 5001),
    )
    assert hosts_text(services) == (
        "10.0.2.100 lparkube-agent-gateway.lparkube.svc\n10.0.2.100 gw\n"
    )


# --- what the stand-in cannot do says so --------------------------------------------------------


def devices(**devices) -> dict:
    spec = vmi()
    spec["spec"]["domain"]["devices"] = devices
    return spec


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (vmi(resources={}), "asks for no memory"),
        (vmi(resources={"requests": {"memory": "lots"}}), "is not a quantity"),
        (vmi(machine={"type": "pc-q35-rhel9.4.0"}), "pc-q35-7.2"),
        (vmi(firmware={"bootloader": {"efi": {}}}), "SeaBIOS only"),
        (vmi(cpu={"cores": -1}), "whole number"),
        (devices(disks=[{"name": "root", "lun": {}}]), "not SCSI LUNs"),
        (devices(disks=[{"name": "root", "disk": {"bus": "scsi"}}]), "bus 'scsi'"),
        (devices(disks=[{"name": "root", "cdrom": {"bus": "virtio"}}]), "for a cdrom"),
        (devices(disks=[{"name": "root", "disk": {}, "cdrom": {}}]), "choose one"),
        (devices(disks=[{"name": "nothing"}]), "no volume of that name"),
        (devices(disks=[{"name": "root", "serial": "a,b"}]), "may hold only"),
        (devices(disks=[{"name": "root", "bootOrder": 0}]), "bootOrder"),
        (
            devices(
                disks=[
                    {"name": "root", "serial": "abcdefghijklmnopqrst-1"},
                    {"name": "lparkube-agent", "serial": "abcdefghijklmnopqrst-2"},
                ]
            ),
            "first 20 bytes",
        ),
        (devices(interfaces=[{"name": "default", "model": "e1000"}]), "model 'e1000'"),
        (devices(interfaces=[{"name": "other"}]), "not on the pod network"),
        (vmi(firmware={"kernelBoot": {"kernelArgs": "quiet"}}), "without an external kernel"),
        (
            vmi(firmware={"kernelBoot": {"container": {"image": "x", "kernelPath": "/k"}}}),
            "not one the stand-in has",
        ),
        (vmi(devices={"panicDevices": [{"model": "s390"}]}), r"invalid PanicDeviceModel\(s390\)"),
        (vmi(devices={"panicDevices": [{"model": "isa"}, {}]}), "listed twice"),
        (devices(watchdog={"name": "w", "diag288": {}}), "i6300esb"),
        (devices(watchdog={"name": "w", "i6300esb": {"action": "dump"}}), "'dump'"),
    ],
)
def test_odd_specs_are_refused_with_the_reason(spec: dict, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        domain_from_vmi(spec, backings())


def test_two_pod_interfaces_are_refused() -> None:
    spec = devices(interfaces=[{"name": "a"}, {"name": "b"}])
    spec["spec"]["networks"] = [{"name": "a", "pod": {}}, {"name": "b", "pod": {}}]
    with pytest.raises(SpecError, match="more than one interface"):
        domain_from_vmi(spec, backings())


@pytest.mark.parametrize(
    ("container", "message"),
    [
        ({"image": "k", "initrdPath": "/initrd"}, "needs container.kernelPath"),
        ({"image": "k", "kernelPath": "boot/vmlinuz"}, "absolute path"),
        ({"image": "k", "kernelPath": "/boot/../../etc/passwd"}, "without '..'"),
    ],
)
def test_kernel_paths_stay_inside_their_image(container: dict, message: str) -> None:
    spec = vmi(firmware={"kernelBoot": {"container": container}})
    with pytest.raises(SpecError, match=message):
        domain_from_vmi(spec, backings(), kernel_images={"k": Path("/images/k")})


def test_ports_forwarded_to_a_vmi_without_interface_are_an_error() -> None:
    spec = vmi()
    spec["spec"]["domain"]["devices"]["autoattachPodInterface"] = False
    network = Network(forwards=(HostForward("127.0.0.1", 1, 1),))
    with pytest.raises(SpecError, match="no interface"):
        qemu_argv(domain(spec), RunFiles.in_dir(Path("/r")), network)


# --- quantities ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("512Mi", 512 * 2**20),
        ("1Gi", 2**30),
        ("1G", 10**9),
        ("1.5Gi", 3 * 2**29),
        ("500m", 1),  # whole() rounds up, as Quantity.Value() does
        ("2", 2),
        ("1e3", 1000),
        ("12k", 12000),
        (1024, 1024),
    ],
)
def test_quantities_parse_like_kubernetes(text, value) -> None:
    assert whole(text) == value


@pytest.mark.parametrize("text", ["Gi", "1gi", "1.2.3", "0x10"])
def test_what_is_no_quantity_is_refused(text: str) -> None:
    with pytest.raises(SpecError, match="not a quantity"):
        memory_mib({"memory": {"guest": text}})


def test_a_volume_file_is_opened_without_host_locks_an_iso_with_them(tmp_path: Path) -> None:
    """Kubernetes' attach rules guard a PVC across nodes; QEMU's locks on this one host must
    not refuse a ReadWriteMany volume two "nodes" use."""
    domain = Domain(
        name="ns_vm",
        uuid=str(uuid.uuid4()),
        memory_mib=256,
        disks=(
            Disk("data", "data", "virtio", "disk", Backing(Path("/pv/d"), host_locks=False), False),
            Disk("key", "key", "virtio", "disk", Backing(Path("/run/key.iso")), True),
        ),
    )
    argv = qemu_argv(domain, RunFiles.in_dir(tmp_path), Network(relay=RELAY), "tcg", "qemu")
    files = [a for a in argv if a.startswith("driver=file,")]
    assert "locking=off" in files[0] and "locking" not in files[1]
