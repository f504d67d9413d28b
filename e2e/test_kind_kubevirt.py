"""The user's path on a real cluster: helm install, a Partition, a manual save, helm uninstall.

One kind cluster with KubeVirt (software emulation) for the whole module; the tests run in
file order and build on each other, as a user's session would. The guest is Fedora Cloud with
the guest agent and a "notes" app installed by cloud-init (see e2e_guest.py).
"""

from __future__ import annotations

import base64
import json
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from e2e_cluster import (
    GATEWAY_URL,
    IMAGE,
    Kubectl,
    KubectlPlugin,
    Release,
    condition,
    get_json,
    wait_for,
)
from e2e_guest import AGENT_PORT, APP_NAME, HTTP_PORT, SAVED_FILE, partition_manifest
from pytest_kind import KindCluster

from lparkube.api.v1alpha1.remoterestart import STEPS as RESTART_STEPS
from lparkube_devenv.controlplane import REPO_ROOT

PARTITION = "notes-1"
LABELS = {"tier": "frontend"}  # what examples/saveevent-manual.yaml selects
MANUAL_SAVE = REPO_ROOT / "examples" / "saveevent-manual.yaml"
ADOPT_EXAMPLE = REPO_ROOT / "examples" / "partition-adopt-vm.yaml"
AGENT_POLICY = f"{PARTITION}-agent-ingress"
AGENT_CONNECT_TIMEOUT = 25 * 60  # pulling Fedora and booting it under emulation takes minutes
SAVE_TIMEOUT = 5 * 60
CLEANUP_TIMEOUT = 5 * 60
RESTART_TIMEOUT = 35 * 60  # the guest boots again on the target, under emulation
CLUSTER_SCOPED = (
    "clusterrole,clusterrolebinding,validatingadmissionpolicy,validatingadmissionpolicybinding"
)
# Setup (cluster, KubeVirt, image build, helm install) and the guest's boot outlast the
# suite-wide 600 s timeout.
pytestmark = pytest.mark.timeout(60 * 60)


def _partition(kubectl: Kubectl, namespace: str) -> dict[str, Any]:
    return get_json(kubectl, "-n", namespace, "partition", PARTITION)


def _when(obj: dict[str, Any], kind: str) -> dict[str, Any] | None:
    """``obj`` once its condition ``kind`` is True, else None (for wait_for)."""
    return obj if condition(obj, kind).get("status") == "True" else None


@pytest.fixture(scope="module")
def tenant(kind_cluster: KindCluster, kubectl: Kubectl, helm_release: Release) -> str:
    """A tenant namespace holding the Partition, created once the chart is installed."""
    namespace = f"e2e-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", namespace)
    manifest = partition_manifest(PARTITION, LABELS)
    kubectl("-n", namespace, "apply", "-f", "-", input=json.dumps(manifest))
    return namespace


@pytest.fixture(scope="module")
def saveevent(kind_cluster: KindCluster, kubectl: Kubectl, tenant: str) -> dict[str, Any]:
    """The shipped manual-save example, applied once the app is registered; when Complete."""
    wait_for(
        f"Partition {PARTITION} Ready with the {APP_NAME} app registered",
        lambda: (
            (p := _when(_partition(kubectl, tenant), "Ready"))
            and p["status"]["agent"].get("applications") == 1
        ),
        timeout=AGENT_CONNECT_TIMEOUT,
        interval=10,
    )
    kubectl("-n", tenant, "apply", "-f", str(MANUAL_SAVE))
    name = yaml.safe_load(MANUAL_SAVE.read_text())["metadata"]["name"]
    return wait_for(
        f"SaveEvent {name} Complete",
        lambda: _when(get_json(kubectl, "-n", tenant, "saveevent", name), "Complete"),
        timeout=SAVE_TIMEOUT,
    )


def test_helm_install_runs_the_operator(kubectl: Kubectl, helm_release: Release) -> None:
    release, namespace = helm_release.name, helm_release.namespace
    status = json.loads(helm_release.helm("status", release, "-n", namespace, "-o", "json"))
    assert status["info"]["status"] == "deployed"
    deployment = get_json(kubectl, "-n", namespace, "deployment", release)
    assert deployment["status"].get("readyReplicas") == 1, "the single replica leads, so is Ready"
    for crd in (
        "partitions",
        "saveevents",
        "conditionprofiles",
        "viosclusters",
        "hibernationimages",
        "remoterestarts",
    ):
        kubectl("get", "crd", f"{crd}.lparkube.io")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == IMAGE
    assert f"--agent-gateway-url={GATEWAY_URL}" in container["args"]


def test_partition_creates_its_vm_and_the_agent_connects(kubectl: Kubectl, tenant: str) -> None:
    partition = wait_for(
        "the guest agent's first signed report (AgentConnected)",
        lambda: _when(_partition(kubectl, tenant), "AgentConnected"),
        timeout=AGENT_CONNECT_TIMEOUT,
        interval=10,
    )
    assert condition(partition, "VMReady")["status"] == "True"
    agent = partition["status"]["agent"]
    assert agent["version"] == "0.1.0"
    assert agent["kernelRelease"], "the agent reports uname -r"

    vm = get_json(kubectl, "-n", tenant, "vm", PARTITION)
    assert vm["metadata"]["labels"]["lparkube.io/partition"] == PARTITION
    volumes = vm["spec"]["template"]["spec"]["volumes"]
    cloud_init = next(v["cloudInitNoCloud"] for v in volumes if "cloudInitNoCloud" in v)
    assert "userData" not in cloud_init, "the key travels in the Secret, never in the VM spec"
    secret = get_json(kubectl, "-n", tenant, "secret", cloud_init["secretRef"]["name"])
    assert len(base64.b64decode(secret["data"]["key"])) == 32

    # status.agent.applications counts the registered apps (the SaveEvent names them).
    wait_for(
        f"the {APP_NAME} app in the agent's report (Apps 1)",
        lambda: _partition(kubectl, tenant)["status"]["agent"].get("applications") == 1,
        timeout=3 * 60,
    )


def test_manual_saveevent_saves_the_app(saveevent: dict[str, Any]) -> None:
    status = saveevent["status"]
    assert condition(saveevent, "Complete")["reason"] == "Succeeded", status
    assert condition(saveevent, "Succeeded")["status"] == "True"
    assert (status["summary"]["partitions"], status["summary"]["succeeded"]) == (1, 1)
    (partition,) = status["partitions"]
    assert (partition["name"], partition["outcome"]) == (PARTITION, "Succeeded")
    (app,) = [a for a in partition["applications"] if a["name"] == APP_NAME]
    assert (app["method"], app["outcome"], app["order"]) == ("Command", "Saved", 1)
    assert f"notes saved for {saveevent['metadata']['uid']}" in app["message"]


def _vm_ip(kubectl: Kubectl, namespace: str) -> str:
    vmi = get_json(kubectl, "-n", namespace, "vmi", PARTITION)
    return vmi["status"]["interfaces"][0]["ipAddress"]


def _run_in_pod(kubectl: Kubectl, namespace: str, code: str) -> str:
    """Run Python ``code`` in a new pod on the pod network (the operator's image, none of an
    operator pod's labels); its output, once it succeeded."""
    probe = f"probe-{uuid.uuid4().hex[:6]}"
    kubectl(
        "-n", namespace, "run", probe, f"--image={IMAGE}", "--image-pull-policy=Never",
        "--restart=Never", "--command", "--", "python", "-c", code,
    )  # fmt: skip
    phase = wait_for(
        f"pod {probe} to finish",
        lambda: (
            {"Succeeded", "Failed"}
            & {get_json(kubectl, "-n", namespace, "pod", probe)["status"]["phase"]}
        ),
        timeout=180,
        interval=2,
    )
    output = kubectl("-n", namespace, "logs", probe)
    assert phase == {"Succeeded"}, output
    return output


def _reachable(kubectl: Kubectl, namespace: str, ip: str) -> dict[int, bool]:
    """Whether a pod that is not the operator's can connect to the VM's web and agent ports."""
    code = (
        "import socket\n"
        f"for port in ({HTTP_PORT}, {AGENT_PORT}):\n"
        "    try:\n"
        f"        socket.create_connection(({ip!r}, port), timeout=10).close()\n"
        "        print(port, 'open')\n"
        "    except OSError:\n"
        "        print(port, 'closed')\n"
    )
    lines = _run_in_pod(kubectl, namespace, code).splitlines()
    return {int(port): state == "open" for port, state in (ln.split() for ln in lines if ln)}


def _agent_policy_rules(kubectl: Kubectl, namespace: str) -> int:
    return len(get_json(kubectl, "-n", namespace, "networkpolicy", AGENT_POLICY)["spec"]["ingress"])


def test_the_saved_file_is_in_the_guest(
    kubectl: Kubectl, tenant: str, saveevent: dict[str, Any]
) -> None:
    """Read the file through the guest's own HTTP server, from a pod on the pod network."""
    url = f"http://{_vm_ip(kubectl, tenant)}:{HTTP_PORT}/{SAVED_FILE}"
    code = (
        f"import urllib.request;print(urllib.request.urlopen({url!r}, timeout=20)"
        ".read().decode(), end='')"
    )
    saved = _run_in_pod(kubectl, tenant, code)
    assert saved.splitlines() == [f"{saveevent['metadata']['uid']} Manual"]


def test_only_the_operator_reaches_the_agent_port(
    kubectl: Kubectl, tenant: str, saveevent: dict[str, Any]
) -> None:
    """The attack: any pod connects to the agent. The agent policy selects the VM's
    virt-launcher pod by the labels KubeVirt gives it and refuses every pod but the operator's
    on the agent port, while the VM's web server stays open (no policy of the tenant's
    restricts the VM), and the save just made went through it."""
    policy = get_json(kubectl, "-n", tenant, "networkpolicy", AGENT_POLICY)
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert selector == {"kubevirt.io": "virt-launcher", "vm.kubevirt.io/name": PARTITION}
    labels = ",".join(f"{k}={v}" for k, v in selector.items())
    (pod,) = get_json(kubectl, "-n", tenant, "pod", "-l", labels)["items"]
    assert pod["metadata"]["ownerReferences"][0]["kind"] == "VirtualMachineInstance"
    assert _agent_policy_rules(kubectl, tenant) == 2, "open: the agent port and all the others"
    reachable = _reachable(kubectl, tenant, _vm_ip(kubectl, tenant))
    assert reachable == {HTTP_PORT: True, AGENT_PORT: False}


def test_a_tenants_default_deny_still_admits_the_operator(
    kubectl: Kubectl, tenant: str, saveevent: dict[str, Any]
) -> None:
    """The tenant isolates every pod of the namespace: the agent policy no longer admits the
    VM's other ports (it would widen the tenant's rule), still admits the operator, so a save
    succeeds; the tenant lifting it opens them again."""
    deny = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "default-deny"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
    }
    kubectl("-n", tenant, "apply", "-f", "-", input=json.dumps(deny))
    wait_for(
        "the agent policy to keep only the operator's port",
        lambda: _agent_policy_rules(kubectl, tenant) == 1,
        timeout=60,
        interval=1,
    )
    reachable = _reachable(kubectl, tenant, _vm_ip(kubectl, tenant))
    assert reachable == {HTTP_PORT: False, AGENT_PORT: False}

    save = yaml.safe_load(MANUAL_SAVE.read_text())
    save["metadata"]["name"] = "save-behind-default-deny"
    kubectl("-n", tenant, "apply", "-f", "-", input=json.dumps(save))
    done = wait_for(
        "the SaveEvent behind the default deny Complete",
        lambda: _when(
            get_json(kubectl, "-n", tenant, "saveevent", save["metadata"]["name"]), "Complete"
        ),
        timeout=SAVE_TIMEOUT,
    )
    assert condition(done, "Complete")["reason"] == "Succeeded", done["status"]

    kubectl("-n", tenant, "delete", "networkpolicy", "default-deny")
    wait_for(
        "the agent policy to admit the other ports again",
        lambda: _agent_policy_rules(kubectl, tenant) == 2,
        timeout=60,
        interval=1,
    )


def test_a_second_partition_for_the_vm_is_refused_and_touches_nothing(
    kubectl: Kubectl, tenant: str, saveevent: dict[str, Any]
) -> None:
    generation = get_json(kubectl, "-n", tenant, "vm", PARTITION)["metadata"]["generation"]
    thief = {
        "apiVersion": "lparkube.io/v1alpha1",
        "kind": "Partition",
        "metadata": {"name": "thief"},
        "spec": {"vmName": PARTITION},
    }
    kubectl("-n", tenant, "apply", "-f", "-", input=json.dumps(thief))
    refused = wait_for(
        "the second Partition's VMNameConflict",
        lambda: (
            (c := condition(get_json(kubectl, "-n", tenant, "partition", "thief"), "VMReady")).get(
                "reason"
            )
            == "VMNameConflict"
            and c
        ),
        timeout=60,
    )
    assert f"belongs to Partition {PARTITION}" in refused["message"]
    kubectl("-n", tenant, "delete", "partition", "thief", "--wait", "--timeout=2m")
    vm = get_json(kubectl, "-n", tenant, "vm", PARTITION)
    assert vm["metadata"]["generation"] == generation
    names = [v["name"] for v in vm["spec"]["template"]["spec"]["volumes"]]
    assert "lparkube-cloudinit" in names or "lparkube-agent" in names, "the key disk stays"


def test_applying_the_adoption_example_again_changes_nothing(kubectl: Kubectl, tenant: str) -> None:
    vm, partition = yaml.safe_load_all(ADOPT_EXAMPLE.read_text())
    vm["spec"]["runStrategy"] = "Halted"  # no second guest to boot; the manifest is the point
    manifest = yaml.safe_dump_all([vm, partition])
    kubectl("-n", tenant, "apply", "-f", "-", input=manifest)
    name = vm["metadata"]["name"]
    wait_for(
        f"VirtualMachine {name} adopted",
        lambda: (
            get_json(kubectl, "-n", tenant, "vm", name)["metadata"]
            .get("annotations", {})
            .get("lparkube.io/adopted-by")
            == name
        ),
        timeout=60,
    )
    for _ in range(3):
        kubectl("-n", tenant, "apply", "-f", "-", input=manifest)
        assert get_json(kubectl, "-n", tenant, "vm", name)["metadata"]["generation"] == 1


def test_a_user_who_may_only_create_partitions_gets_no_vm(kubectl: Kubectl, tenant: str) -> None:
    """The chart's admission policy on a real cluster: the right to create Partitions alone is
    not the operator's right to create VMs (docs/rbac.md, "Admission")."""
    user = "e2e-partition-editor"
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": user},
        "rules": [
            {"apiGroups": ["lparkube.io"], "resources": ["partitions"], "verbs": ["create", "get"]}
        ],
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": user},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": user},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
    }
    kubectl("-n", tenant, "apply", "-f", "-", input=yaml.safe_dump_all([role, binding]))
    manifest = json.dumps(partition_manifest("not-mine", LABELS))
    with pytest.raises(AssertionError) as refused:
        kubectl("-n", tenant, f"--as={user}", "create", "-f", "-", input=manifest)
    assert "spec.vmTemplate: the operator creates a VirtualMachine from it" in str(refused.value)
    assert f"you ({user}) may not create virtualmachines.kubevirt.io" in str(refused.value)
    assert not kubectl("-n", tenant, "get", "partition,vm", "not-mine", "--ignore-not-found")


def _hibernate(kubectl: Kubectl, namespace: str, name: str, partition: str) -> dict[str, Any]:
    """A HibernationImage of `partition`, once its Captured condition is final."""
    image = {
        "apiVersion": "lparkube.io/v1alpha1",
        "kind": "HibernationImage",
        "metadata": {"name": name},
        "spec": {"partitionName": partition},
    }
    kubectl("-n", namespace, "apply", "-f", "-", input=json.dumps(image))

    def final() -> dict[str, Any] | None:
        found = get_json(kubectl, "-n", namespace, "hibernationimage", name)
        captured = condition(found, "Captured")
        done = captured.get("status") == "True" or captured.get("reason") not in (
            None,
            "InProgress",
        )
        return found if done else None

    return wait_for(f"{name}'s Captured condition", final, timeout=120)


def test_hibernating_a_partition_without_a_paging_lu_is_refused_and_it_keeps_running(
    kubectl: Kubectl, tenant: str
) -> None:
    before = get_json(kubectl, "-n", tenant, "vmi", PARTITION)["metadata"]["uid"]
    image = _hibernate(kubectl, tenant, "no-paging", PARTITION)
    refused = condition(image, "Captured")
    assert (refused["status"], refused["reason"]) == ("False", "NoPagingLU"), refused
    vmi = get_json(kubectl, "-n", tenant, "vmi", PARTITION)
    assert vmi["metadata"]["uid"] == before and vmi["status"]["phase"] == "Running"
    vm = get_json(kubectl, "-n", tenant, "vm", PARTITION)
    assert vm["spec"]["runStrategy"] == "Always"
    assert "lparkube.io/run-strategy-before-hibernation" not in vm["metadata"].get(
        "annotations", {}
    )
    kubectl("-n", tenant, "delete", "hibernationimage", "no-paging")


def _pool(kubectl: Kubectl, name: str) -> dict[str, Any]:
    return get_json(kubectl, "vioscluster", name)


def _default_storage_class(kubectl: Kubectl) -> dict[str, Any]:
    classes = get_json(kubectl, "storageclass")["items"]
    return next(
        c for c in classes
        if c["metadata"].get("annotations", {}).get("storageclass.kubernetes.io/is-default-class")
        == "true"
    )  # fmt: skip


def _expanding_class(default: dict[str, Any], name: str) -> dict[str, Any]:
    """A StorageClass of the default's provisioner that allows volume expansion."""
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {"name": name},
        "provisioner": default["provisioner"],
        "volumeBindingMode": default.get("volumeBindingMode", "WaitForFirstConsumer"),
        "allowVolumeExpansion": True,
    }


def test_a_vios_cluster_on_the_clusters_storage_gives_a_paging_lu(
    kubectl: Kubectl, tenant: str
) -> None:
    """kind's default StorageClass (local-path) cannot expand: the pool says so; a class of the
    same provisioner that allows expansion makes it Ready, and a Partition with spec.paging
    gets its paging LU as the VM's disk lparkube-paging; deleting the Partition frees it."""
    default = _default_storage_class(kubectl)
    pool = f"e2e-pool-{uuid.uuid4().hex[:4]}"
    expanding = f"{pool}-expanding"
    manifest = {
        "apiVersion": "lparkube.io/v1alpha1",
        "kind": "VIOSCluster",
        "metadata": {"name": pool},
        "spec": {
            "storage": {
                "storageClassName": default["metadata"]["name"],
                "volumeMode": "Filesystem",  # local-path serves no block volumes
            },
            "thin": {"initialSize": "256Mi", "maxSize": "4Gi"},
        },
    }
    kubectl("apply", "-f", "-", input=json.dumps(manifest))
    try:
        refused = wait_for(
            "the pool's Ready=False, ExpansionNotAllowed",
            lambda: (c := condition(_pool(kubectl, pool), "Ready")).get("reason")
            == "ExpansionNotAllowed" and c,
            timeout=60,
        )  # fmt: skip
        assert default["metadata"]["name"] in refused["message"]
        kubectl("apply", "-f", "-", input=json.dumps(_expanding_class(default, expanding)))
        patch = {"spec": {"storage": {"storageClassName": expanding}}}
        kubectl("patch", "vioscluster", pool, "--type=merge", "-p", json.dumps(patch))
        ready = wait_for("the pool Ready", lambda: _when(_pool(kubectl, pool), "Ready"), timeout=60)
        nodes = get_json(kubectl, "nodes")["items"]
        assert ready["status"]["readyNodes"] == len(nodes)

        partition = partition_manifest("paged-1", {"tier": "paged"})
        partition["spec"]["vmTemplate"]["spec"]["runStrategy"] = "Halted"  # no second boot
        partition["spec"]["viosClusterName"] = pool
        partition["spec"]["paging"] = {}
        kubectl("-n", tenant, "apply", "-f", "-", input=json.dumps(partition))
        paged = wait_for(
            "PagingReady on paged-1",
            lambda: _when(get_json(kubectl, "-n", tenant, "partition", "paged-1"), "PagingReady"),
            timeout=120,
        )
        claim = paged["status"]["paging"]["claimName"]
        assert paged["status"]["paging"]["size"] == "1280Mi"  # 1Gi of memory x 1.25
        vm = get_json(kubectl, "-n", tenant, "vm", "paged-1")
        volumes = {v["name"]: v for v in vm["spec"]["template"]["spec"]["volumes"]}
        assert volumes["lparkube-paging"]["persistentVolumeClaim"]["claimName"] == claim
        pvc = get_json(kubectl, "-n", tenant, "pvc", claim)
        assert pvc["metadata"]["labels"]["lparkube.io/vios-cluster"] == pool
        assert pvc["metadata"]["labels"]["lparkube.io/partition"] == "paged-1"
        wait_for(
            "the pool counting the LU in use",
            lambda: (_pool(kubectl, pool)["status"].get("logicalUnits") or {}).get("inUse") == 1,
            timeout=60,
        )

        # Its root is a containerDisk, made anew for each VMI: hibernation refuses it.
        refused = condition(_hibernate(kubectl, tenant, "paged-1-image", "paged-1"), "Captured")
        assert (refused["status"], refused["reason"]) == ("False", "EphemeralDisk"), refused
        assert "rootdisk (containerDisk)" in refused["message"]
        kubectl("-n", tenant, "delete", "hibernationimage", "paged-1-image")

        kubectl("-n", tenant, "delete", "partition", "paged-1", "--wait", "--timeout=3m")
        freed = get_json(kubectl, "-n", tenant, "pvc", claim)
        assert "lparkube.io/partition" not in freed["metadata"]["labels"], "released, kept"
    finally:
        kubectl("-n", tenant, "delete", "pvc", "-l", f"lparkube.io/vios-cluster={pool}",
                "--wait=false")  # fmt: skip
        kubectl("delete", "vioscluster", pool, "--ignore-not-found", "--wait", "--timeout=2m")
        kubectl("delete", "storageclass", expanding, "--ignore-not-found")


@pytest.fixture(scope="module")
def restart_pool(kubectl: Kubectl, tenant: str) -> Iterator[str]:
    """A VIOSCluster of every node (no nodeSelector) on an expanding class of the default
    StorageClass's provisioner: the targets a RemoteRestart may pick from."""
    pool = f"e2e-restart-{uuid.uuid4().hex[:4]}"
    expanding = f"{pool}-expanding"
    default = _default_storage_class(kubectl)
    kubectl("apply", "-f", "-", input=json.dumps(_expanding_class(default, expanding)))
    manifest = {
        "apiVersion": "lparkube.io/v1alpha1",
        "kind": "VIOSCluster",
        "metadata": {"name": pool},
        "spec": {"storage": {"storageClassName": expanding, "volumeMode": "Filesystem"}},
    }
    kubectl("apply", "-f", "-", input=json.dumps(manifest))
    wait_for("the restart pool Ready", lambda: _when(_pool(kubectl, pool), "Ready"), timeout=60)
    yield pool
    kubectl("-n", tenant, "delete", "remoterestarts", "--all", "--wait", "--timeout=2m")
    kubectl("delete", "vioscluster", pool, "--ignore-not-found", "--wait", "--timeout=2m")
    kubectl("delete", "storageclass", expanding, "--ignore-not-found")


def _node_names(kubectl: Kubectl) -> list[str]:
    nodes = sorted(n["metadata"]["name"] for n in get_json(kubectl, "nodes")["items"])
    assert len(nodes) >= 2, f"a restart needs two nodes; the cluster has {nodes}"
    return nodes


def _restart_of(kubectl: Kubectl, namespace: str, done: subprocess.CompletedProcess) -> dict:
    """The RemoteRestart the plugin created (its first line names it)."""
    first = done.stdout.splitlines()[0]
    assert first.startswith("remoterestart.lparkube.io/") and first.endswith(" created"), first
    name = first.removeprefix("remoterestart.lparkube.io/").removesuffix(" created")
    return get_json(kubectl, "-n", namespace, "remoterestart", name)


def _token_leases(kubectl: Kubectl, namespace: str, token: str) -> list[str]:
    selector = f"lparkube.io/operation-token={token}"
    leases = get_json(kubectl, "-n", namespace, "leases", "-l", selector)["items"]
    return [lease["metadata"]["name"] for lease in leases]


def test_a_restart_to_a_node_the_vms_node_selector_excludes_is_refused_touching_nothing(
    kubectl: Kubectl, kubectl_lparkube: KubectlPlugin, tenant: str, restart_pool: str
) -> None:
    """Validation comes before anything is touched: a target outside the VM's own nodeSelector
    ends RestartFailed/1 (NodeSelectorMismatch) at once; the VM and the Leases are as before."""
    home, elsewhere = _node_names(kubectl)[:2]
    manifest = partition_manifest("pinned-1", {"tier": "pinned"})
    vm_spec = manifest["spec"]["vmTemplate"]["spec"]
    vm_spec["runStrategy"] = "Halted"  # no second guest to boot: validation is the point
    vm_spec["template"]["spec"]["nodeSelector"] = {"kubernetes.io/hostname": home}
    kubectl("-n", tenant, "apply", "-f", "-", input=json.dumps(manifest))
    wait_for(
        "pinned-1's VM",
        lambda: condition(get_json(kubectl, "-n", tenant, "partition", "pinned-1"), "VMReady"),
        timeout=120,
    )

    def kept() -> tuple[Any, ...]:
        vm = get_json(kubectl, "-n", tenant, "vm", "pinned-1")
        leases = get_json(kubectl, "-n", tenant, "leases")["items"]
        return (
            vm["spec"], vm["metadata"].get("labels"), vm["metadata"].get("annotations"),
            sorted((lease["metadata"]["name"], lease["spec"]) for lease in leases),
        )  # fmt: skip

    before = kept()
    done = kubectl_lparkube("restart", "pinned-1", "--to", elsewhere, "--vios-cluster",
                            restart_pool, "-n", tenant, "--timeout", "3m")  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr.startswith("error: RestartFailed: NodeSelectorMismatch: "), done.stderr
    assert any(line.startswith("Validating Failed") for line in done.stdout.splitlines())
    restart = _restart_of(kubectl, tenant, done)
    status = restart["status"]
    assert (status["terminationState"], status["terminationCode"]) == ("RestartFailed", 1)
    assert condition(restart, "Complete")["reason"] == "NodeSelectorMismatch"
    assert kept() == before
    assert _token_leases(kubectl, tenant, restart["metadata"]["uid"]) == []
    kubectl("-n", tenant, "delete", "partition", "pinned-1", "--wait", "--timeout=3m")


def test_a_restart_from_disk_boots_the_stopped_partition_on_the_named_node(
    kubectl: Kubectl, kubectl_lparkube: KubectlPlugin, tenant: str, restart_pool: str
) -> None:
    """notes-1 is stopped on its node (its VMI gone: proven stopped); a RemoteRestart to the
    other node boots it there from disk: every step Done (RestoringMemory Skipped),
    RestartSucceeded/0, its agent back with a new boot id, no lock left, the VM unpinned."""
    vmi = get_json(kubectl, "-n", tenant, "vmi", PARTITION)
    source = vmi["status"]["nodeName"]
    target = next(node for node in _node_names(kubectl) if node != source)
    boot_before = _partition(kubectl, tenant)["status"]["agent"]["bootId"]
    halt = {"spec": {"runStrategy": "Halted"}}
    kubectl("-n", tenant, "patch", "vm", PARTITION, "--type=merge", "-p", json.dumps(halt))
    wait_for(
        "notes-1's VMI gone",
        lambda: not get_json(kubectl, "-n", tenant, "vmi", "--field-selector",
                             f"metadata.name={PARTITION}")["items"],
        timeout=5 * 60,
    )  # fmt: skip

    done = kubectl_lparkube("restart", PARTITION, "--to", target, "--vios-cluster", restart_pool,
                            "--deadline", "30m", "-n", tenant, "--timeout", "32m",
                            timeout=RESTART_TIMEOUT)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[-1].startswith(f"RestartSucceeded: partition {PARTITION} runs on node {target}")
    for line in ("RestoringMemory Skipped", "Booting Done", "Verifying Done", "Unlocking Done"):
        assert any(shown.startswith(line) for shown in lines), (line, lines)
    restart = _restart_of(kubectl, tenant, done)
    status = restart["status"]
    assert (status["terminationState"], status["terminationCode"]) == ("RestartSucceeded", 0)
    assert status["targetNodeName"] == target
    assert {s["name"]: s["status"] for s in status["steps"]} == {
        **{name: "Done" for name in RESTART_STEPS}, "RestoringMemory": "Skipped",
    }  # fmt: skip
    assert _token_leases(kubectl, tenant, restart["metadata"]["uid"]) == []

    running = get_json(kubectl, "-n", tenant, "vmi", PARTITION)
    assert (running["status"]["phase"], running["status"]["nodeName"]) == ("Running", target)
    partition = wait_for(
        "notes-1's agent reporting from its new boot",
        lambda: (p := _when(_partition(kubectl, tenant), "AgentConnected"))
        and p["status"]["agent"]["bootId"] != boot_before and p,
        timeout=AGENT_CONNECT_TIMEOUT,
    )  # fmt: skip
    assert partition["status"]["nodeName"] == target
    vm = get_json(kubectl, "-n", tenant, "vm", PARTITION)
    assert "lparkube.io/restart-hold" not in vm["metadata"].get("annotations", {})
    assert "lparkube.io/operation-token" not in vm["metadata"].get("labels", {})
    selector = vm["spec"]["template"]["spec"].get("nodeSelector") or {}
    assert "kubernetes.io/hostname" not in selector, "the pin is gone with the hold"


def test_failover_status_of_a_partition_without_failover_shows_it_disabled(
    kubectl_lparkube: KubectlPlugin, tenant: str
) -> None:
    """``kubectl lparkube failover status`` on the operator's Partition: notes-1 does not
    fail over, so no failure, no escalation and no image; a missing Partition exits 1."""
    done = kubectl_lparkube("failover", "status", PARTITION, "-n", tenant)
    assert (done.returncode, done.stderr) == (0, ""), done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[:6] == [
        f"Partition:   {tenant}/{PARTITION}",
        "Failover:    disabled (spec.failover.enabled is not true)",
        "Lease:       none granted",
        "Condition:   none (no failure yet)",
        "Under way:   none",
        "Failures:    0 recorded, 0 in the last 15m",
    ]
    assert "Escalation:  none: failover is disabled, a failure is not failed over" in lines
    assert lines[-2:] == ["History (newest last):", "  none"]
    missing = kubectl_lparkube("failover", "status", "ghost-1", "-n", tenant)
    assert missing.returncode == 1
    assert missing.stderr.strip() == (
        f'error: partitions.lparkube.io "ghost-1" not found in namespace "{tenant}"'
    )


def test_helm_uninstall_cleans_up(kubectl: Kubectl, tenant: str, helm_release: Release) -> None:
    # Partitions go first, while the operator still runs to release their finalizers.
    kubectl("-n", tenant, "delete", "remoterestarts,hibernationimages,saveevents,partitions",
            "--all", "--wait", "--timeout=5m")  # fmt: skip
    owned = f"lparkube.io/partition={PARTITION}"
    wait_for(
        "the Partition's VM, VMI, key Secret and agent NetworkPolicy to be deleted",
        lambda: not get_json(kubectl, "-n", tenant, "vm,vmi,secret,netpol", "-l", owned)["items"],
        timeout=CLEANUP_TIMEOUT,
    )
    selector = f"app.kubernetes.io/instance={helm_release.name}"
    assert get_json(kubectl, "clusterrole", "-l", selector)["items"], "the selector finds the chart"
    assert get_json(kubectl, "validatingadmissionpolicy", "-l", selector)["items"]

    helm_release.helm("uninstall", helm_release.name, "-n", helm_release.namespace, "--wait")

    namespaced = "deployment,replicaset,pod,service,serviceaccount,role,rolebinding,configmap"
    wait_for(
        "the release's objects to be gone",
        lambda: (
            not get_json(kubectl, "-n", helm_release.namespace, namespaced, "-l", selector)["items"]
            and not get_json(kubectl, CLUSTER_SCOPED, "-l", selector)["items"]
        ),
        timeout=CLEANUP_TIMEOUT,
    )
    # Helm leaves the CRDs of a chart's crds/ directory installed, so no user data is lost.
    kubectl("get", "crd", "partitions.lparkube.io")
