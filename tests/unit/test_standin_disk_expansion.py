"""Which disks of a running real guest may grow, and to what: its writable PVC disks, to their
claims' reported capacity (KubeVirt's ExpandDisks reads the same)."""

from __future__ import annotations

from lparkube_devenv.kubevirt.hosts import claim_disk_capacities


def vmi(disks: list[dict], volumes: list[dict]) -> dict:
    return {
        "metadata": {"namespace": "ns", "name": "vm"},
        "spec": {"domain": {"devices": {"disks": disks}}, "volumes": volumes},
    }


def claim(name: str, capacity: str | None) -> tuple[tuple[str, str], dict]:
    status = {"capacity": {"storage": capacity}} if capacity else {}
    return ("ns", name), {"metadata": {"name": name, "namespace": "ns"}, "status": status}


def test_each_writable_claim_disk_gets_its_claim_s_capacity_in_bytes() -> None:
    spec = vmi(
        [
            {"name": "data", "disk": {"bus": "virtio"}},
            {"name": "paging", "disk": {"bus": "virtio"}, "serial": "lparkube-paging"},
            {"name": "dv", "disk": {}},
        ],
        [
            {"name": "data", "persistentVolumeClaim": {"claimName": "data-pvc"}},
            {"name": "paging", "persistentVolumeClaim": {"claimName": "lu-7"}},
            {"name": "dv", "dataVolume": {"name": "dv-pvc"}},
        ],
    )
    pvcs = dict([claim("data-pvc", "192Mi"), claim("lu-7", "1Gi"), claim("dv-pvc", "2G")])
    assert claim_disk_capacities(spec, pvcs) == {
        "data": 192 << 20,
        "paging": 1 << 30,
        "dv": 2_000_000_000,
    }


def test_readonly_cdrom_unknown_and_capacity_less_claims_are_left_alone() -> None:
    spec = vmi(
        [
            {"name": "ro", "disk": {"readonly": True}},
            {"name": "ro-claim", "disk": {}},
            {"name": "iso", "cdrom": {"bus": "sata"}},
            {"name": "pending", "disk": {}},
            {"name": "missing", "disk": {}},
            {"name": "secret", "disk": {}},
        ],
        [
            {"name": "ro", "persistentVolumeClaim": {"claimName": "a"}},
            {"name": "ro-claim", "persistentVolumeClaim": {"claimName": "a", "readOnly": True}},
            {"name": "iso", "persistentVolumeClaim": {"claimName": "a"}},
            {"name": "pending", "persistentVolumeClaim": {"claimName": "unbound"}},
            {"name": "missing", "persistentVolumeClaim": {"claimName": "nowhere"}},
            {"name": "secret", "secret": {"secretName": "s"}},
        ],
    )
    pvcs = dict([claim("a", "1Gi"), claim("unbound", None)])
    assert claim_disk_capacities(spec, pvcs) == {}
