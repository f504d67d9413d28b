"""An operator crash (SIGKILL) and restart: no second VM, no second Secret, the same key, and
what changed while it was down is reconciled on resume."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from kubernetes import client
from partition_helpers import Partitions, partition_manifest, wait_for

from lparkube_devenv.controlplane import free_port
from lparkube_devenv.kubevirt import VM, StandIn

if TYPE_CHECKING:
    from conftest import OperatorProcess


@pytest.fixture
def parts(api_client: client.ApiClient, kubevirt: StandIn, namespace: str) -> Partitions:
    return Partitions(api_client, kubevirt, namespace)


def vms_of(parts: Partitions, partition: str) -> list[dict]:
    path = VM.path(parts.namespace)
    return [
        vm
        for vm in parts.kubevirt.kube.items(path)
        if (vm["metadata"].get("labels") or {}).get("lparkube.io/partition") == partition
    ]


def test_restart_creates_nothing_twice_and_keeps_the_key(
    parts: Partitions, operator: OperatorProcess
) -> None:
    parts.create(partition_manifest("steady", "127.0.0.51", free_port()))
    parts.create(partition_manifest("healed", "127.0.0.52", free_port()))
    for name in ("steady", "healed"):
        parts.wait_condition(name, "VMReady", "True")
    steady_vm = parts.vm("steady")["metadata"]["uid"]
    secrets = {n: parts.secret(f"{n}-agent-key").metadata.uid for n in ("steady", "healed")}
    keys = {n: parts.secret_file(f"{n}-agent-key", "key") for n in ("steady", "healed")}

    operator.kill()
    try:
        # While the operator is down: one VM is deleted, and a new Partition arrives.
        old_healed = parts.vm("healed")["metadata"]["uid"]
        parts.kubevirt.kube.delete(VM.path(parts.namespace, "healed"))
        wait_for(lambda: parts.vm("healed") is None, "the VM deleted")
        parts.create(partition_manifest("newcomer", "127.0.0.53", free_port()))
    finally:
        operator.start()

    parts.wait_condition("newcomer", "VMReady", "True")
    healed = wait_for(lambda: parts.vm("healed"), "the deleted VM recreated on resume")
    assert healed["metadata"]["uid"] != old_healed
    parts.wait_condition("healed", "VMReady", "True")

    assert [vm["metadata"]["uid"] for vm in vms_of(parts, "steady")] == [steady_vm]
    assert len(vms_of(parts, "healed")) == 1
    for name in ("steady", "healed"):
        assert parts.secret(f"{name}-agent-key").metadata.uid == secrets[name]
        assert parts.secret_file(f"{name}-agent-key", "key") == keys[name], "key unchanged"
    secret_names = [
        s.metadata.name for s in parts.core.list_namespaced_secret(parts.namespace).items
    ]
    assert sorted(n for n in secret_names if n.endswith("-agent-key")) == [
        "healed-agent-key",
        "newcomer-agent-key",
        "steady-agent-key",
    ]
