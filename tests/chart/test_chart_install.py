"""The chart on the real local control plane, in namespaces that enforce Pod Security restricted.

No kubelet runs here, so pods never start: the checks are what the API server admits. Pod
Security only warns about a Deployment's template and enforces on Pods, so the operator's pod
is also created as a Pod from the rendered template; a non-compliant variant must be refused,
or the check could not fail.
"""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Iterator

import pytest
import yaml
from chart_helpers import CHART_DIR, Helm, Kubectl, Render, one
from kubernetes import client

from lparkube_devenv.controlplane import LocalControlPlane

PSS_LABELS = {
    f"pod-security.kubernetes.io/{mode}": "restricted" for mode in ("enforce", "warn", "audit")
}
CLUSTER_KINDS = (
    "ClusterRole",
    "ClusterRoleBinding",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
)


@pytest.fixture
def restricted(api_client: client.ApiClient) -> Iterator[str]:
    """A namespace that enforces (and warns about) the restricted Pod Security Standard."""
    name = f"lparkube-pss-{uuid.uuid4().hex[:6]}"
    core = client.CoreV1Api(api_client)
    core.create_namespace({"metadata": {"name": name, "labels": PSS_LABELS}})
    yield name
    core.delete_namespace(name, propagation_policy="Background")


@pytest.fixture
def release() -> str:
    return f"lparkube-{uuid.uuid4().hex[:6]}"


def delete_cluster_objects(kubectl: Kubectl, objects: list[dict]) -> None:
    for obj in objects:
        if obj["kind"] in CLUSTER_KINDS:
            kubectl("delete", obj["kind"], obj["metadata"]["name"], "--ignore-not-found")


def pod_from_template(objects: list[dict], name: str) -> dict:
    """The Pod the Deployment would create (what Pod Security enforces on)."""
    template = copy.deepcopy(one(objects, "Deployment")["spec"]["template"])
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {**template["metadata"], "name": name},
            "spec": template["spec"]}  # fmt: skip


def test_rendered_chart_is_admitted(
    render: Render, kubectl: Kubectl, api_client: client.ApiClient, restricted: str, release: str
) -> None:
    objects = render(release=release, namespace=restricted)
    try:
        applied = kubectl("apply", "-f", "-", input=yaml.safe_dump_all(objects))
        assert "Warning" not in applied.stderr, applied.stderr
        for obj in objects:
            where = ["-n", restricted] if obj["kind"] not in CLUSTER_KINDS else []
            kubectl("get", obj["kind"], obj["metadata"]["name"], *where)
        stored = client.AppsV1Api(api_client).read_namespaced_deployment(release, restricted)
        container = stored.spec.template.spec.containers[0]
        assert container.security_context.read_only_root_filesystem is True
        assert container.security_context.capabilities.drop == ["ALL"]
        pod = pod_from_template(objects, f"{release}-probe")
        created = client.CoreV1Api(api_client).create_namespaced_pod(restricted, pod)
        assert created.spec.service_account_name == release
    finally:
        delete_cluster_objects(kubectl, objects)


NON_COMPLIANT = {
    "privilege escalation": ("allowPrivilegeEscalation", True),
    "capabilities kept": ("capabilities", {"add": ["NET_RAW"]}),
    "root": ("runAsUser", 0),
}


@pytest.mark.parametrize("variant", NON_COMPLIANT.values(), ids=NON_COMPLIANT.keys())
def test_non_compliant_variant_is_refused(
    render: Render,
    kubectl: Kubectl,
    api_client: client.ApiClient,
    restricted: str,
    variant: tuple[str, object],
) -> None:
    """The same check refuses a pod that breaks restricted (so the admission test can fail)."""
    objects = render(release="lparkube-bad", namespace=restricted)
    account = one(objects, "ServiceAccount")
    kubectl("apply", "-f", "-", input=yaml.safe_dump(account))
    pod = pod_from_template(objects, "lparkube-bad")
    field, value = variant
    pod["spec"]["containers"][0]["securityContext"][field] = value
    with pytest.raises(client.ApiException) as refused:
        client.CoreV1Api(api_client).create_namespaced_pod(restricted, pod)
    assert refused.value.status == 403
    assert 'violates PodSecurity "restricted' in json.loads(refused.value.body)["message"]
    deployment = copy.deepcopy(one(objects, "Deployment"))
    deployment["spec"]["template"]["spec"] = pod["spec"]
    warned = kubectl("apply", "-f", "-", input=yaml.safe_dump(deployment))
    assert "would violate PodSecurity" in warned.stderr


def test_helm_install_upgrade_uninstall(
    helm: Helm,
    kubectl: Kubectl,
    control_plane: LocalControlPlane,
    api_client: client.ApiClient,
    restricted: str,
) -> None:
    """The README's commands against the real API server; CRDs stay after uninstall."""
    release = "lparkube-helm"  # its namespace is new; no other test installs this release
    config = ("--kubeconfig", str(control_plane.kubeconfig), "--namespace", restricted)
    installed = helm("install", release, str(CHART_DIR), *config)
    assert "kubectl get partitions -A" in installed.stdout  # NOTES.txt
    apps = client.AppsV1Api(api_client)
    assert apps.read_namespaced_deployment(release, restricted).spec.replicas == 1
    crds = kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CHART_DIR / "crds"))
    assert "partitions.lparkube.io serverside-applied" in crds.stdout
    helm("upgrade", release, str(CHART_DIR), *config, "--reuse-values", "--set", "replicaCount=2")
    assert apps.read_namespaced_deployment(release, restricted).spec.replicas == 2
    helm("uninstall", release, *config)
    with pytest.raises(client.ApiException) as gone:
        apps.read_namespaced_deployment(release, restricted)
    assert gone.value.status == 404
    extensions = client.ApiextensionsV1Api(api_client)
    assert extensions.read_custom_resource_definition("partitions.lparkube.io")


def test_helm_install_refuses_bad_values(
    helm: Helm, control_plane: LocalControlPlane, api_client: client.ApiClient, restricted: str
) -> None:
    config = ("--kubeconfig", str(control_plane.kubeconfig), "--namespace", restricted)
    result = helm(
        "install", "lparkube-bad", str(CHART_DIR), *config, "--set", "replicaCount=-1", check=False
    )
    assert result.returncode != 0
    assert "/replicaCount" in result.stderr
    assert client.AppsV1Api(api_client).list_namespaced_deployment(restricted).items == []
