"""A Partition from a template on the real control plane, with the KubeVirt stand-in, the real
operator and a real guest agent: VM, key Secret, status, heartbeats, columns, deletion."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from kubernetes import client
from partition_helpers import Partitions, partition_manifest, vm_spec, wait_for

from lparkube.adapters.guest_agent import AgentClient, AgentTarget
from lparkube_devenv.controlplane import free_port
from lparkube_devenv.kubevirt import VM, StandIn

if TYPE_CHECKING:
    from conftest import OperatorProcess

    from lparkube.adapters.agent_identity import OperatorCredentials

pytestmark = pytest.mark.usefixtures("operator")


@pytest.fixture
def parts(api_client: client.ApiClient, kubevirt: StandIn, namespace: str) -> Partitions:
    return Partitions(api_client, kubevirt, namespace)


def agent_cli(agent, *args: str) -> str:
    exe = str(Path(sys.executable).with_name("lparkube-agent"))
    result = subprocess.run(
        [exe, *args, f"--socket={agent.socket}"], capture_output=True, text=True, check=True
    )
    return result.stdout


def test_template_partition_end_to_end(
    parts: Partitions,
    operator: OperatorProcess,
    operator_credentials: OperatorCredentials,
    guest_agent,
    kubectl,
) -> None:
    ip, port = "127.0.0.21", free_port()
    created = parts.create(partition_manifest("web-1", ip, port))
    check_vm_and_secret(parts, operator, operator_credentials, created, port)

    # Status mirrors the running VMI; no agent yet.
    status = parts.wait_condition("web-1", "VMReady", "True")
    assert status["vmName"] == "web-1"
    assert "lparkube.io/finalizer" in parts.get("web-1")["metadata"]["finalizers"]
    assert status["observedGeneration"] == created["metadata"]["generation"]
    assert status["nodeName"] in parts.kubevirt.node_names
    assert status["addresses"] == [{"interface": "default", "ip": ip}]
    assert status["agent"] == {"keySecretName": "web-1-agent-key", "endpoint": f"{ip}:{port}"}
    assert parts.condition("web-1", "AgentConnected")["reason"] == "NoHeartbeat"
    ready = parts.condition("web-1", "Ready")
    assert (ready["status"], ready["observedGeneration"]) == ("False", 1)

    # A real agent with the operator's config: connected within seconds, with its report.
    agent = guest_agent(parts.namespace, "web-1", ip=ip)
    status = parts.wait_condition("web-1", "AgentConnected", "True", timeout=15)
    reported = status["agent"]
    assert reported["kernelRelease"] == os.uname().release
    assert reported["vmcoreinfo"] == {"address": "0x1f5c8b000", "size": 4096}
    assert reported["applications"] == 0
    assert reported["version"] and reported["lastHeartbeatTime"] and reported["bootTime"]
    assert parts.condition("web-1", "Ready")["status"] == "True"

    check_registered_app(parts, agent, operator_credentials, kubectl)

    # The agent stops: AgentConnected turns False after heartbeatTimeout (3s).
    agent.stop()
    lost = parts.wait_condition("web-1", "AgentConnected", "False", timeout=15)
    condition = next(c for c in lost["conditions"] if c["type"] == "AgentConnected")
    assert condition["reason"] == "HeartbeatTimeout"
    assert parts.condition("web-1", "Ready")["reason"] == "HeartbeatTimeout"
    wanted = {"VMCreated", "KeyCreated", "AgentConnected", "AgentLost"}
    wait_for(lambda: wanted <= parts.reasons("web-1"), "events")

    # Deleting the Partition deletes its VM (garbage collection) and its Secret.
    parts.delete("web-1")
    wait_for(lambda: parts.get("web-1") is None, "the Partition gone")
    wait_for(lambda: parts.vm("web-1") is None, "the owned VM deleted", timeout=60)
    wait_for(lambda: parts.secret("web-1-agent-key") is None, "the Secret gone", timeout=60)


def check_vm_and_secret(
    parts: Partitions,
    operator: OperatorProcess,
    credentials: OperatorCredentials,
    created: dict,
    port: int,
) -> None:
    """The VM is controlled by the Partition and gets the key as a disk; the Secret holds the
    Partition's key, its TLS files and the agent config; no cluster credential reaches the
    VM."""
    uid = created["metadata"]["uid"]
    vm = wait_for(lambda: parts.vm("web-1"), "the VM")
    (ref,) = vm["metadata"]["ownerReferences"]
    owner = (ref["kind"], ref["uid"], ref["controller"], ref["blockOwnerDeletion"])
    assert owner == ("Partition", uid, True, True)
    assert vm["metadata"]["labels"] == {"tier": "web", "lparkube.io/partition": "web-1"}
    pod = vm["spec"]["template"]["spec"]
    assert {"name": "lparkube-agent", "secret": {"secretName": "web-1-agent-key"}} in pod["volumes"]
    assert any(d.get("serial") == "lparkube" for d in pod["domain"]["devices"]["disks"])
    text = json.dumps(vm["spec"])
    assert "serviceAccount" not in text and "token" not in text.lower()

    wait_for(lambda: parts.secret("web-1-agent-key"), "the key Secret")
    key = parts.secret_file("web-1-agent-key", "key")
    # derived from the operator's root secret and this Partition's uid, never stored elsewhere
    assert key == credentials.identity.partition_key(parts.namespace, "web-1", uid)
    assert base64.b64encode(key).decode() not in json.dumps(vm)
    made = credentials.identity.agent_credentials(parts.namespace, "web-1", uid)
    for name, pem in (
        ("ca.crt", made.ca_pem),
        ("tls.crt", made.cert_pem),
        ("tls.key", made.key_pem),
    ):
        assert parts.secret_file("web-1-agent-key", name) == pem
    assert parts.agent_config("web-1-agent-key") == {
        "partition": f"{parts.namespace}/web-1",
        "listen": f"0.0.0.0:{port}",
        "operatorURL": operator.advertised_url,
        "reportIntervalSeconds": 1,
    }
    secret_owner = parts.secret("web-1-agent-key").metadata.owner_references[0]
    assert (secret_owner.uid, secret_owner.controller) == (uid, True)


def check_registered_app(
    parts: Partitions, agent, credentials: OperatorCredentials, kubectl
) -> None:
    """A registered app shows in status and columns; the operator's client reaches the agent."""
    sleeper = subprocess.Popen(["sleep", "120"])
    try:
        agent_cli(agent, "register", "--name", "db", f"--pid={sleeper.pid}", "--method=Signal")
        wait_for(lambda: parts.status("web-1")["agent"].get("applications") == 1, "apps = 1")

        status = parts.status("web-1")
        uid = parts.get("web-1")["metadata"]["uid"]
        target = AgentTarget(parts.namespace, "web-1", uid, status["agent"]["endpoint"])
        report = asyncio.run(_report(credentials, target))
        assert [app["name"] for app in report["applications"]] == ["db"]

        table = kubectl("get", "partitions", "-n", parts.namespace).stdout.splitlines()
        assert table[0].split() == ["NAME", "VM", "READY", "AGENT", "NODE", "APPS", "AGE"]
        assert table[1].split()[:6] == ["web-1", "web-1", "True", "True", status["nodeName"], "1"]
        wide = kubectl("get", "part", "web-1", "-n", parts.namespace, "-o", "wide").stdout
        assert status["addresses"][0]["ip"] in wide and os.uname().release in wide
    finally:
        sleeper.kill()
        sleeper.wait()


async def _report(credentials: OperatorCredentials, target: AgentTarget) -> dict:
    agents = AgentClient(credentials)
    try:
        return await agents.report(target)
    finally:
        await agents.close()


def test_migration_moves_node_into_status(
    parts: Partitions, kubevirt: StandIn, namespace: str
) -> None:
    parts.create(partition_manifest("mover", "127.0.0.22", free_port()))
    before = parts.wait_condition("mover", "VMReady", "True")["nodeName"]
    path = f"/apis/subresources.kubevirt.io/v1/namespaces/{namespace}/virtualmachines/mover/migrate"
    parts.kubevirt.kube.request("PUT", path, {})
    moved = wait_for(
        lambda: (
            (parts.status("mover").get("nodeName") or before) != before and parts.status("mover")
        ),
        "the new node in status",
        timeout=30,
    )
    assert moved["nodeName"] == parts.vmi("mover")["status"]["nodeName"]


def test_a_stopped_vm_is_not_ready_and_its_address_goes(parts: Partitions, namespace: str) -> None:
    manifest = partition_manifest("halt", "127.0.0.23", free_port())
    manifest["spec"]["vmTemplate"]["spec"]["runStrategy"] = "Halted"
    parts.create(manifest)
    wait_for(lambda: parts.condition("halt", "VMReady").get("reason") == "VMNotRunning", "stopped")
    status = parts.status("halt")
    assert "nodeName" not in status and status["addresses"] == []
    assert "endpoint" not in status["agent"]


def test_cloud_init_delivery_keeps_the_key_out_of_the_vm(parts: Partitions, namespace: str) -> None:
    manifest = partition_manifest("ci", "127.0.0.24", free_port(), keyDelivery="CloudInit")
    volumes = manifest["spec"]["vmTemplate"]["spec"]["template"]["spec"]["volumes"]
    volumes.append(
        {"name": "cloudinit", "cloudInitNoCloud": {"userData": "#cloud-config\nhostname: ci\n"}}
    )
    parts.create(manifest)
    vm = wait_for(lambda: parts.vm("ci"), "the VM")
    cloud = next(v for v in vm["spec"]["template"]["spec"]["volumes"] if v["name"] == "cloudinit")
    assert cloud == {
        "name": "cloudinit",
        "cloudInitNoCloud": {"secretRef": {"name": "ci-agent-key"}},
    }
    user_data = parts.secret_file("ci-agent-key", "userdata").decode()
    assert user_data.startswith("#cloud-config\n") and "hostname: ci" in user_data
    assert "/etc/lparkube/key" in user_data and "/etc/lparkube/config.json" in user_data
    key = parts.secret_file("ci-agent-key", "key")
    assert base64.b64encode(key).decode() in user_data
    assert base64.b64encode(key).decode() not in json.dumps(vm)
    parts.wait_condition("ci", "VMReady", "True")


def test_a_vm_name_taken_by_another_vm_is_a_clear_condition(
    parts: Partitions, kubevirt: StandIn, namespace: str
) -> None:
    kubevirt.kube.create(
        VM.path(namespace),
        {
            "apiVersion": "kubevirt.io/v1",
            "kind": "VirtualMachine",
            "metadata": {"name": "taken"},
            "spec": vm_spec("127.0.0.25"),
        },
    )
    parts.create(partition_manifest("taken", "127.0.0.25", free_port()))
    wait_for(
        lambda: parts.condition("taken", "VMReady").get("reason") == "VMNameConflict", "conflict"
    )
    assert "spec.vmName" in parts.condition("taken", "VMReady")["message"]
    assert parts.vm("taken")["metadata"].get("ownerReferences") is None


def test_an_edited_vm_template_reaches_the_vm_but_not_its_run_strategy(
    parts: Partitions, namespace: str
) -> None:
    parts.create(partition_manifest("grow", "127.0.0.26", free_port()))
    parts.wait_condition("grow", "VMReady", "True")
    stop = f"/apis/subresources.kubevirt.io/v1/namespaces/{namespace}/virtualmachines/grow/stop"
    parts.kubevirt.kube.request("PUT", stop, {})  # virtctl stop: KubeVirt sets Halted
    wait_for(lambda: parts.vm("grow")["spec"]["runStrategy"] == "Halted", "the VM stopped")

    edit = {
        "spec": {
            "vmTemplate": {
                "metadata": {"labels": {"size": "large"}},
                "spec": {"template": {"spec": {"domain": {"memory": {"guest": "1Gi"}}}}},
            }
        }
    }
    parts.custom.patch_namespaced_custom_object(
        "lparkube.io", "v1alpha1", namespace, "partitions", "grow", edit
    )

    vm = wait_for(
        lambda: (
            (vm := parts.vm("grow"))
            and vm["spec"]["template"]["spec"]["domain"]["memory"] == {"guest": "1Gi"}
            and vm
        ),
        "the edited template on the VM",
    )
    assert vm["metadata"]["labels"]["size"] == "large"
    assert vm["spec"]["runStrategy"] == "Halted", "the template must not restart a stopped VM"
    volumes = {v["name"] for v in vm["spec"]["template"]["spec"]["volumes"]}
    assert volumes == {"root", "lparkube-agent"}, "the key disk stays"
    wait_for(lambda: "VMUpdated" in parts.reasons("grow"), "a VMUpdated event")


def test_a_secret_the_partition_does_not_own_is_never_written(
    parts: Partitions, api_client: client.ApiClient
) -> None:
    """keySecretName naming a tenant's own Secret (a database password, say): the operator
    may patch Secrets anywhere, but its patch tests the owner reference first, so the Secret
    keeps every byte and the Partition says KeySecretConflict."""
    core = client.CoreV1Api(api_client)
    precious = {"metadata": {"name": "db-password"}, "stringData": {"password": "s3cret"}}
    before = core.create_namespaced_secret(parts.namespace, precious)
    manifest = partition_manifest("web-9", "127.0.0.29", free_port(), keySecretName="db-password")
    parts.create(manifest)
    status = parts.wait_condition("web-9", "VMReady", "False")
    condition = next(c for c in status["conditions"] if c["type"] == "VMReady")
    assert condition["reason"] == "KeySecretConflict"
    assert "db-password exists and is not this Partition's" in condition["message"]
    after = core.read_namespaced_secret("db-password", parts.namespace)
    assert after.data == before.data and after.metadata.resource_version == (
        before.metadata.resource_version
    )
    assert not after.metadata.owner_references
    assert parts.vm("web-9") is None  # nothing made for a Partition whose Secret conflicts
    wait_for(lambda: "KeySecretConflict" in parts.reasons("web-9"), "the Warning")
