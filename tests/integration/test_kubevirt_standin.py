"""The KubeVirt stand-in on a real kube-apiserver: CRD validation, the virt-api subresources
through the aggregation layer, and the VM/VMI lifecycle including node loss, drains,
migrations, snapshots and memory dumps."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client
from partition_helpers import SUB, subresource
from remote_restart_helpers import NodePool

from lparkube_devenv.controlplane import wait_until
from lparkube_devenv.kubevirt import AGENT_ANNOTATION, RESTORE, SNAPSHOT, VM, VMI, VMIM, StandIn
from lparkube_devenv.kubevirt.nodes import cordon, set_drain_taint

TIMEOUT = 30.0


def wait_for(predicate: Callable[[], Any], what: str, timeout: float = TIMEOUT) -> Any:
    """Poll until predicate returns something truthy; a timeout fails the test."""
    return wait_until(predicate, timeout, what, interval=0.1)


def vm_manifest(name: str, run_strategy: str = "Halted", **spec: Any) -> dict:
    """A realistic VM: container disk, cloud-init, pod network, guest-agent credentials."""
    template_spec = {
        "domain": {
            "cpu": {"cores": 2, "sockets": 1, "threads": 1},
            "memory": {"guest": "1Gi"},
            "resources": {"requests": {"memory": "1Gi", "cpu": "500m"}},
            "firmware": {"bootloader": {"efi": {"secureBoot": False}}},
            "devices": {
                "disks": [
                    {"name": "root", "disk": {"bus": "virtio"}, "bootOrder": 1},
                    {"name": "cloudinit", "cdrom": {"bus": "sata"}},
                ],
                "interfaces": [{"name": "default", "masquerade": {}}],
            },
        },
        "networks": [{"name": "default", "pod": {}}],
        "volumes": [
            {"name": "root", "containerDisk": {"image": "quay.io/containerdisks/fedora:41"}},
            {"name": "cloudinit", "cloudInitNoCloud": {"userData": "#cloud-config\n"}},
        ],
        "terminationGracePeriodSeconds": 30,
        **spec,
    }
    return {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "runStrategy": run_strategy,
            "template": {
                "metadata": {"labels": {"kubevirt.io/domain": name}, "annotations": {"a": "b"}},
                "spec": template_spec,
            },
        },
    }


class Cluster:
    """Small helpers over the stand-in's REST client for one namespace."""

    def __init__(self, kubevirt: StandIn, namespace: str):
        self.kube, self.ns = kubevirt.kube, namespace

    def create_vm(self, manifest: dict) -> dict:
        return self.kube.create(VM.path(self.ns), manifest)

    def vm(self, name: str) -> dict:
        return self.kube.request("GET", VM.path(self.ns, name))

    def vmi(self, name: str) -> dict | None:
        return self.kube.get(VMI.path(self.ns, name))

    def running_vmi(self, name: str, uid: str | None = None) -> dict:
        def running() -> dict | None:
            vmi = self.vmi(name) or {}
            phase = vmi.get("status", {}).get("phase")
            fresh = uid is None or vmi.get("metadata", {}).get("uid") != uid
            return vmi if phase == "Running" and fresh else None

        return wait_for(running, f"VMI {name} Running")

    def vm_status(self, name: str, printable: str) -> dict:
        def reached() -> dict | None:
            vm = self.vm(name)
            return vm if vm.get("status", {}).get("printableStatus") == printable else None

        return wait_for(reached, f"VM {name} {printable}")

    def create_pvc(self, name: str, mode: str = "ReadWriteMany") -> None:
        pvc = {
            "metadata": {"name": name},
            "spec": {"accessModes": [mode], "resources": {"requests": {"storage": "2Gi"}}},
        }
        self.kube.create(f"/api/v1/namespaces/{self.ns}/persistentvolumeclaims", pvc)


@pytest.fixture
def cluster(kubevirt: StandIn, namespace: str) -> Cluster:
    return Cluster(kubevirt, namespace)


def start_vm(cluster: Cluster, api: client.ApiClient, name: str, **spec: Any) -> dict:
    cluster.create_vm(vm_manifest(name, **spec))
    code, _ = subresource(api, "PUT", f"{SUB}/{cluster.ns}/virtualmachines/{name}/start")
    assert code == 202
    return cluster.running_vmi(name)


# --- CRDs --------------------------------------------------------------------------------------


def test_crds_have_kubevirt_names_and_versions(kubevirt: StandIn, kubectl) -> None:
    resources = kubectl("api-resources", "--api-group=kubevirt.io", "-o", "wide").stdout
    for short in ("vm,vms", "vmi,vmis", "vmim,vmims"):
        assert short in resources
    snapshots = kubectl("api-resources", "--api-group=snapshot.kubevirt.io").stdout
    assert "snapshot.kubevirt.io/v1beta1" in snapshots
    assert "vmsnapshot" in snapshots
    assert "vmrestore" in snapshots


def test_crd_accepts_realistic_vm_and_rejects_invalid_ones(cluster: Cluster, kubectl) -> None:
    realistic = vm_manifest(
        "good",
        evictionStrategy="LiveMigrate",
        nodeSelector={"kubernetes.io/os": "linux"},
        tolerations=[{"key": "k", "operator": "Exists", "effect": "NoSchedule"}],
        accessCredentials=[
            {
                "sshPublicKey": {
                    "source": {"secret": {"secretName": "keys"}},
                    "propagationMethod": {"qemuGuestAgent": {"users": ["fedora"]}},
                }
            }
        ],
    )
    created = cluster.create_vm(realistic)
    assert created["spec"]["template"]["spec"]["evictionStrategy"] == "LiveMigrate"

    bad = vm_manifest("bad", run_strategy="Sometimes")
    result = kubectl("apply", "-n", cluster.ns, "-f", "-", input=json.dumps(bad), check=False)
    assert result.returncode != 0
    assert "spec.runStrategy" in result.stderr and "Unsupported value" in result.stderr

    both = vm_manifest("both")
    both["spec"]["running"] = True
    with pytest.raises(client.ApiException) as error:
        cluster.create_vm(both)
    assert error.value.status == 422 and "mutually exclusive" in error.value.body

    wrong_strategy = vm_manifest("evict", evictionStrategy="Migrate")
    with pytest.raises(client.ApiException) as error:
        cluster.create_vm(wrong_strategy)
    assert "evictionStrategy" in error.value.body


# --- virt-api through the aggregation layer ----------------------------------------------------


def test_discovery_through_the_api_server(kubevirt: StandIn, kubectl) -> None:
    raw = json.loads(kubectl("get", "--raw", "/apis/subresources.kubevirt.io/v1").stdout)
    names = {r["name"] for r in raw["resources"]}
    assert {"virtualmachines/start", "virtualmachines/stop", "virtualmachines/migrate"} <= names
    assert {"virtualmachineinstances/pause", "virtualmachineinstances/guestosinfo"} <= names
    group = json.loads(kubectl("get", "--raw", "/apis/subresources.kubevirt.io").stdout)
    assert group["preferredVersion"]["groupVersion"] == "subresources.kubevirt.io/v1"
    version = json.loads(
        kubectl("get", "--raw", "/apis/subresources.kubevirt.io/v1/version").stdout
    )
    assert version["gitVersion"].startswith("v1.")
    kubectl("wait", "--for=condition=Available", "apiservice/v1.subresources.kubevirt.io")


def test_start_and_stop_through_subresources(
    cluster: Cluster, api_client: client.ApiClient, kubevirt: StandIn, kubectl
) -> None:
    vmi = start_vm(cluster, api_client, "web")
    status = vmi["status"]
    assert status["nodeName"] in kubevirt.node_names
    assert status["interfaces"][0]["ipAddress"].startswith("10.244.")
    assert status["interfaces"][0]["name"] == "default"
    conditions = {c["type"]: c["status"] for c in status["conditions"]}
    assert conditions["Ready"] == "True" and conditions["AgentConnected"] == "True"
    assert vmi["metadata"]["labels"]["kubevirt.io/domain"] == "web"
    assert vmi["metadata"]["labels"]["kubevirt.io/nodeName"] == status["nodeName"]
    owner = vmi["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["controller"]) == ("VirtualMachine", "web", True)
    vm = cluster.vm_status("web", "Running")
    assert vm["spec"]["runStrategy"] == "Always"
    assert vm["status"]["ready"] is True and vm["status"]["created"] is True

    columns = kubectl("get", "vmi", "web", "-n", cluster.ns).stdout
    assert "Running" in columns and status["nodeName"] in columns
    assert status["interfaces"][0]["ipAddress"] in columns

    code, body = subresource(api_client, "PUT", f"{SUB}/{cluster.ns}/virtualmachines/web/start")
    assert code == 409 and body["reason"] == "Conflict"
    assert "already running" in body["message"]

    code, _ = subresource(api_client, "PUT", f"{SUB}/{cluster.ns}/virtualmachines/web/stop")
    assert code == 202
    wait_for(lambda: cluster.vmi("web") is None, "VMI deleted")
    vm = cluster.vm_status("web", "Stopped")
    assert vm["spec"]["runStrategy"] == "Halted"
    wait_for(lambda: cluster.vm("web")["status"]["created"] is False, "VM status not created")

    code, body = subresource(api_client, "PUT", f"{SUB}/{cluster.ns}/virtualmachines/web/stop")
    assert code == 409 and "not running" in body["message"]
    code, body = subresource(api_client, "PUT", f"{SUB}/{cluster.ns}/virtualmachines/nope/start")
    assert code == 404 and body["kind"] == "Status" and body["reason"] == "NotFound"


def test_restart_replaces_the_vmi(cluster: Cluster, api_client: client.ApiClient) -> None:
    first = start_vm(cluster, api_client, "app")
    code, _ = subresource(api_client, "PUT", f"{SUB}/{cluster.ns}/virtualmachines/app/restart")
    assert code == 202
    second = cluster.running_vmi("app", uid=first["metadata"]["uid"])
    assert second["metadata"]["uid"] != first["metadata"]["uid"]


def test_manual_run_strategy_uses_state_change_requests(
    cluster: Cluster, api_client: client.ApiClient
) -> None:
    cluster.create_vm(vm_manifest("manual", run_strategy="Manual"))
    time.sleep(0.5)  # give the controller a pass: Manual must not start on its own
    assert cluster.vmi("manual") is None
    code, _ = subresource(api_client, "PUT", f"{SUB}/{cluster.ns}/virtualmachines/manual/start")
    assert code == 202
    cluster.running_vmi("manual")
    code, _ = subresource(api_client, "PUT", f"{SUB}/{cluster.ns}/virtualmachines/manual/stop")
    assert code == 202
    wait_for(lambda: cluster.vmi("manual") is None, "manual VMI deleted")
    vm = cluster.vm_status("manual", "Stopped")
    assert vm["spec"]["runStrategy"] == "Manual"
    assert not vm["status"].get("stateChangeRequests")


def test_pause_and_unpause(cluster: Cluster, api_client: client.ApiClient) -> None:
    start_vm(cluster, api_client, "db")
    path = f"{SUB}/{cluster.ns}/virtualmachineinstances/db"
    assert subresource(api_client, "PUT", f"{path}/pause")[0] == 202
    paused = wait_for(
        lambda: any(
            c["type"] == "Paused" and c["status"] == "True"
            for c in cluster.vmi("db")["status"]["conditions"]
        ),
        "Paused condition",
    )
    assert paused
    cluster.vm_status("db", "Paused")
    code, body = subresource(api_client, "PUT", f"{path}/pause")
    assert code == 409 and "already paused" in body["message"]
    assert subresource(api_client, "PUT", f"{path}/unpause")[0] == 202
    cluster.vm_status("db", "Running")
    conditions = {c["type"]: c["status"] for c in cluster.vmi("db")["status"]["conditions"]}
    assert "Paused" not in conditions and conditions["Ready"] == "True"


def test_freeze_guest_agent_and_guest_os_info(
    cluster: Cluster, api_client: client.ApiClient, kubevirt: StandIn
) -> None:
    start_vm(cluster, api_client, "agent")
    path = f"{SUB}/{cluster.ns}/virtualmachineinstances/agent"
    code, info = subresource(api_client, "GET", f"{path}/guestosinfo")
    assert code == 200 and info["os"]["id"] == "fedora"
    assert subresource(api_client, "PUT", f"{path}/freeze", {"unfreezeTimeout": "5m"})[0] == 202
    assert cluster.vmi("agent")["status"]["fsFreezeStatus"] == "frozen"
    assert subresource(api_client, "PUT", f"{path}/unfreeze")[0] == 202
    assert "fsFreezeStatus" not in cluster.vmi("agent")["status"]

    kubevirt.set_agent_connected(cluster.ns, "agent", False)
    wait_for(
        lambda: all(
            c["type"] != "AgentConnected" for c in cluster.vmi("agent")["status"]["conditions"]
        ),
        "AgentConnected removed",
    )
    code, body = subresource(api_client, "GET", f"{path}/guestosinfo")
    assert code == 409 and "guest agent" in body["message"]
    assert cluster.vmi("agent")["metadata"]["annotations"][AGENT_ANNOTATION] == "disconnected"
    kubevirt.set_agent_connected(cluster.ns, "agent", True)
    wait_for(lambda: subresource(api_client, "GET", f"{path}/guestosinfo")[0] == 200, "agent back")


def test_memory_dump_completes(cluster: Cluster, api_client: client.ApiClient) -> None:
    start_vm(cluster, api_client, "crashy")
    path = f"{SUB}/{cluster.ns}/virtualmachines/crashy/memorydump"
    code, body = subresource(api_client, "PUT", path, {})
    assert code == 400 and body["reason"] == "BadRequest"
    cluster.create_pvc("dump")
    assert subresource(api_client, "PUT", path, {"claimName": "dump"})[0] == 202

    def completed() -> dict | None:
        request = cluster.vm("crashy")["status"].get("memoryDumpRequest") or {}
        return request if request.get("phase") == "Completed" else None

    request = wait_for(completed, "memory dump Completed")
    assert request["claimName"] == "dump"
    assert request["fileName"].startswith("crashy-dump-") and request["fileName"].endswith(
        ".memory.dump"
    )
    pvc = cluster.kube.request(
        "GET", f"/api/v1/namespaces/{cluster.ns}/persistentvolumeclaims/dump"
    )
    assert pvc["metadata"]["annotations"]["kubevirt.io/memory-dump"] == request["fileName"]


def test_forbidden_user_is_refused(cluster: Cluster, api_client: client.ApiClient) -> None:
    cluster.create_vm(vm_manifest("guarded"))
    method, url, headers, body, _ = api_client.param_serialize(
        "PUT",
        f"{SUB}/{cluster.ns}/virtualmachines/guarded/start",
        header_params={"Impersonate-User": "mallory", "Accept": "application/json"},
        auth_settings=["BearerToken"],
    )
    response = api_client.call_api(method, url, headers, body)
    response.read()
    assert response.status == 403
    assert cluster.vm("guarded")["spec"]["runStrategy"] == "Halted"


# --- nodes, drains and migrations ---------------------------------------------------------------


def test_a_lost_node_keeps_its_vmi_until_fenced_then_it_restarts_elsewhere(
    cluster: Cluster, api_client: client.ApiClient, kubevirt: StandIn, nodes: NodePool
) -> None:
    nodes.add()
    nodes.add()
    vmi = start_vm(cluster, api_client, "ha", nodeSelector=nodes.selector)
    node, uid = vmi["status"]["nodeName"], vmi["metadata"]["uid"]
    nodes.power_off(node)
    wait_for(
        lambda: any(
            t["key"] in ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable")
            for t in kubevirt.kube.get(f"/api/v1/nodes/{node}")["spec"].get("taints") or []
        ),
        "the lost node tainted NoSchedule",
    )
    current = cluster.vmi("ha")  # KubeVirt waits: nothing says the guest stopped
    assert (current["metadata"]["uid"], current["status"]["phase"]) == (uid, "Running")

    nodes.fence(node)

    def failed() -> dict | None:
        current = cluster.vmi("ha")
        same = current and current["metadata"]["uid"] == uid
        return current if same and current["status"].get("phase") == "Failed" else None

    assert "reason" not in wait_for(failed, "VMI Failed")["status"]  # KubeVirt sets none
    again = cluster.running_vmi("ha", uid=uid)
    assert again["status"]["nodeName"] != node


def test_cordon_marks_external_eviction(
    cluster: Cluster, api_client: client.ApiClient, kubevirt: StandIn, healthy_nodes
) -> None:
    vmi = start_vm(cluster, api_client, "capk", evictionStrategy="External")
    node = vmi["status"]["nodeName"]
    cordon(kubevirt.kube, node)
    marked = wait_for(
        lambda: cluster.vmi("capk")["status"].get("evacuationNodeName") == node,
        "evacuationNodeName",
    )
    assert marked
    assert cluster.vmi("capk")["status"]["nodeName"] == node
    assert kubevirt.kube.items(VMIM.path(cluster.ns)) == []


def test_migrate_moves_the_vmi(cluster: Cluster, api_client: client.ApiClient, kubectl) -> None:
    vmi = start_vm(cluster, api_client, "mover")
    source = vmi["status"]["nodeName"]
    code, _ = subresource(
        api_client, "PUT", f"{SUB}/{cluster.ns}/virtualmachines/mover/migrate", {}
    )
    assert code == 202

    def succeeded() -> dict | None:
        items = cluster.kube.items(VMIM.path(cluster.ns))
        return (
            items[0] if items and items[0].get("status", {}).get("phase") == "Succeeded" else None
        )

    migration = wait_for(succeeded, "migration Succeeded")
    assert migration["spec"]["vmiName"] == "mover"
    moved = cluster.vmi("mover")["status"]
    state = moved["migrationState"]
    assert moved["nodeName"] == state["targetNode"] != source
    assert state["sourceNode"] == source and state["completed"] is True
    assert state["migrationUid"] == migration["metadata"]["uid"]
    assert "Succeeded" in kubectl("get", "vmim", "-n", cluster.ns).stdout


def test_drain_taint_live_migrates(
    cluster: Cluster, api_client: client.ApiClient, kubevirt: StandIn, healthy_nodes
) -> None:
    vmi = start_vm(cluster, api_client, "drained", evictionStrategy="LiveMigrate")
    node = vmi["status"]["nodeName"]
    set_drain_taint(kubevirt.kube, node)

    def moved() -> dict | None:
        status = cluster.vmi("drained")["status"]
        return status if status["nodeName"] != node else None

    status = wait_for(moved, "VMI moved off the drained node")
    assert "evacuationNodeName" not in status
    migrations = kubevirt.kube.items(VMIM.path(cluster.ns))
    annotations = migrations[0]["metadata"]["annotations"]
    assert annotations["kubevirt.io/evacuationMigration"] == node


# --- snapshots ---------------------------------------------------------------------------------


def test_snapshot_becomes_ready_and_restores(
    cluster: Cluster, api_client: client.ApiClient
) -> None:
    cluster.create_pvc("data")
    volumes = [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}]
    disks = [{"name": "data", "disk": {"bus": "virtio"}}]
    manifest = vm_manifest("backup")
    manifest["spec"]["template"]["spec"]["volumes"] += volumes
    manifest["spec"]["template"]["spec"]["domain"]["devices"]["disks"] += disks
    cluster.create_vm(manifest)
    assert (
        subresource(api_client, "PUT", f"{SUB}/{cluster.ns}/virtualmachines/backup/start")[0] == 202
    )
    cluster.running_vmi("backup")
    snapshot = {
        "apiVersion": "snapshot.kubevirt.io/v1beta1",
        "kind": "VirtualMachineSnapshot",
        "metadata": {"name": "nightly"},
        "spec": {"source": {"apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": "backup"}},
    }
    cluster.kube.create(SNAPSHOT.path(cluster.ns), snapshot)

    def ready() -> dict | None:
        current = cluster.kube.request("GET", SNAPSHOT.path(cluster.ns, "nightly"))
        return current if current.get("status", {}).get("readyToUse") is True else None

    status = wait_for(ready, "snapshot readyToUse")["status"]
    assert status["phase"] == "Succeeded"
    assert set(status["indications"]) == {"Online", "GuestAgent"}
    assert status["snapshotVolumes"]["includedVolumes"] == ["data"]

    restore = {
        "apiVersion": "snapshot.kubevirt.io/v1beta1",
        "kind": "VirtualMachineRestore",
        "metadata": {"name": "undo"},
        "spec": {
            "target": {"apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": "backup"},
            "virtualMachineSnapshotName": "nightly",
            "targetReadinessPolicy": "StopTarget",
        },
    }
    cluster.kube.create(RESTORE.path(cluster.ns), restore)
    done = wait_for(
        lambda: (
            cluster.kube.request("GET", RESTORE.path(cluster.ns, "undo"))
            .get("status", {})
            .get("complete")
        ),
        "restore complete",
    )
    assert done is True
    assert cluster.vm("backup")["spec"]["runStrategy"] == "Halted"


# --- odd and standalone objects -------------------------------------------------------------------


def test_standalone_vmi_runs_and_missing_pvc_blocks_start(
    cluster: Cluster, api_client: client.ApiClient
) -> None:
    vmi = {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstance",
        "metadata": {"name": "lonely"},
        "spec": {"domain": {"devices": {}}},
    }
    cluster.kube.create(VMI.path(cluster.ns), vmi)
    status = cluster.running_vmi("lonely")["status"]
    assert status["interfaces"][0]["name"] == "default"  # KubeVirt's default pod network

    manifest = vm_manifest("needs-pvc", run_strategy="Always")
    template = manifest["spec"]["template"]["spec"]
    template["volumes"].append({"name": "data", "persistentVolumeClaim": {"claimName": "late"}})
    template["domain"]["devices"]["disks"].append({"name": "data", "disk": {}})
    cluster.create_vm(manifest)
    cluster.vm_status("needs-pvc", "ErrorPvcNotFound")
    cluster.create_pvc("late", mode="ReadWriteOnce")
    running = cluster.running_vmi("needs-pvc")
    conditions = {c["type"]: c for c in running["status"]["conditions"]}
    assert conditions["LiveMigratable"]["status"] == "False"
    assert conditions["LiveMigratable"]["reason"] == "DisksNotLiveMigratable"

    cluster.kube.delete(VM.path(cluster.ns, "needs-pvc"))
    wait_for(lambda: cluster.vmi("needs-pvc") is None, "VMI removed with its VM")


def test_a_data_volume_template_becomes_the_vms_pvc(
    cluster: Cluster, api_client: client.ApiClient
) -> None:
    """CDI's part: the DataVolume's PVC, blank, owned by the VM, with the template's request."""
    manifest = vm_manifest("dv-root", "Always")
    spec = manifest["spec"]["template"]["spec"]
    spec["volumes"][0] = {"name": "root", "dataVolume": {"name": "dv-root-disk"}}
    manifest["spec"]["dataVolumeTemplates"] = [
        {
            "metadata": {"name": "dv-root-disk", "labels": {"disk": "root"}},
            "spec": {
                "source": {"registry": {"url": "docker://quay.io/containerdisks/fedora:41"}},
                "storage": {"resources": {"requests": {"storage": "3Gi"}}},
            },
        }
    ]
    vm = cluster.create_vm(manifest)
    path = f"/api/v1/namespaces/{cluster.ns}/persistentvolumeclaims/dv-root-disk"
    pvc = wait_for(lambda: cluster.kube.get(path), "the DataVolume's PVC")
    assert pvc["spec"]["resources"]["requests"]["storage"] == "3Gi"
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert pvc["metadata"]["labels"] == {"disk": "root"}
    [owner] = pvc["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["uid"], owner["controller"]) == (
        "VirtualMachine",
        vm["metadata"]["uid"],
        True,
    )
    cluster.running_vmi("dv-root")
