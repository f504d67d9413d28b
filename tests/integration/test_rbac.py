"""The chart's ServiceAccount is refused what the operator never needs, allowed what it does.

The identity is the one the integration suite's operator runs as: the chart rendered by the
real helm, its RBAC applied to the real API server, a token from the TokenRequest API. Each
check asks the API server as that token (SelfSubjectAccessReview) or makes the real call.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import chart_identity
import pytest
from kubernetes import client, config

from lparkube_devenv.controlplane import LocalControlPlane, find_tool

Attributes = dict[str, str]


@pytest.fixture(scope="module")
def identity(
    control_plane: LocalControlPlane,
    kubeconfig: Path,
    api_client: client.ApiClient,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[chart_identity.ChartIdentity]:
    """A fresh release's identity in its own namespace (the operator's is left alone)."""
    suffix = uuid.uuid4().hex[:6]
    namespace = f"lparkube-rbac-{suffix}"
    core = client.CoreV1Api(api_client)
    core.create_namespace({"metadata": {"name": namespace}})
    found = chart_identity.install_identity(
        api_client,
        find_tool("helm", control_plane.bin_dir),
        release=f"lparkube-rbac-{suffix}",
        namespace=namespace,
        admin_kubeconfig=kubeconfig,
        workdir=tmp_path_factory.mktemp("rbac"),
    )
    yield found
    chart_identity.remove_cluster_objects(api_client, found)
    core.delete_namespace(namespace, propagation_policy="Background")


@pytest.fixture(scope="module")
def as_operator(identity: chart_identity.ChartIdentity) -> Iterator[client.ApiClient]:
    """An API client authenticated only by the ServiceAccount token."""
    with config.new_client_from_config(config_file=str(identity.kubeconfig)) as api:
        yield api


def allowed(api: client.ApiClient, attributes: Attributes) -> tuple[bool, str]:
    """Ask the API server whether the caller may do this; (allowed, reason)."""
    review = {"spec": {"resourceAttributes": attributes}}
    result = client.AuthorizationV1Api(api).create_self_subject_access_review(review)
    return bool(result.status.allowed), result.status.reason or ""


def test_the_token_is_the_service_account(
    as_operator: client.ApiClient, identity: chart_identity.ChartIdentity
) -> None:
    review = client.AuthenticationV1Api(as_operator).create_self_subject_review({})
    assert review.status.user_info.username == identity.username


# --- refused ---------------------------------------------------------------------------------

FORBIDDEN: dict[str, Attributes] = {
    "delete nodes": {"verb": "delete", "resource": "nodes"},
    "patch nodes (cordon, taint)": {"verb": "patch", "resource": "nodes"},
    "create pods": {"verb": "create", "resource": "pods", "namespace": "default"},
    "exec into pods": {
        "verb": "create", "resource": "pods", "subresource": "exec", "namespace": "default",
    },
    "read configmaps": {"verb": "list", "resource": "configmaps"},
    "watch secrets": {"verb": "watch", "resource": "secrets"},
    "get secrets anywhere": {"verb": "get", "resource": "secrets"},
    "list secrets anywhere": {"verb": "list", "resource": "secrets"},
    "get a tenant's secret": {
        "verb": "get", "resource": "secrets", "namespace": "default", "name": "db-password",
    },
    "list a tenant's secrets": {"verb": "list", "resource": "secrets", "namespace": "default"},
    "delete secrets": {"verb": "delete", "resource": "secrets", "namespace": "default"},
    "mint ServiceAccount tokens": {
        "verb": "create", "resource": "serviceaccounts", "subresource": "token",
        "namespace": "kube-system",
    },
    "create clusterrolebindings": {
        "verb": "create", "group": "rbac.authorization.k8s.io", "resource": "clusterrolebindings",
    },
    "escalate clusterroles": {
        "verb": "escalate", "group": "rbac.authorization.k8s.io", "resource": "clusterroles",
    },
    "bind clusterroles": {
        "verb": "bind", "group": "rbac.authorization.k8s.io", "resource": "clusterroles",
    },
    "impersonate users": {"verb": "impersonate", "resource": "users"},
    "impersonate serviceaccounts": {"verb": "impersonate", "resource": "serviceaccounts"},
    "patch CRDs": {
        "verb": "patch", "group": "apiextensions.k8s.io",
        "resource": "customresourcedefinitions",
    },
    "delete CRDs": {
        "verb": "delete", "group": "apiextensions.k8s.io",
        "resource": "customresourcedefinitions",
    },
    "delete namespaces": {"verb": "delete", "resource": "namespaces"},
    "create namespaces": {"verb": "create", "resource": "namespaces"},
    "delete partitions": {"verb": "delete", "group": "lparkube.io", "resource": "partitions"},
    "update partitions (only patch)": {
        "verb": "update", "group": "lparkube.io", "resource": "partitions",
    },
    "stop VMs (virt-api subresources; only start is granted)": {
        "verb": "update", "group": "subresources.kubevirt.io",
        "resource": "virtualmachines", "subresource": "stop", "namespace": "default",
    },
    "migrate VMs (virt-api subresources)": {
        "verb": "update", "group": "subresources.kubevirt.io",
        "resource": "virtualmachines", "subresource": "migrate", "namespace": "default",
    },
    "delete VMIs": {
        "verb": "delete", "group": "kubevirt.io", "resource": "virtualmachineinstances",
    },
    "leases in kube-system": {
        "verb": "update", "group": "coordination.k8s.io", "resource": "leases",
        "namespace": "kube-system", "name": "kube-controller-manager",
    },
}  # fmt: skip


@pytest.mark.parametrize("attributes", FORBIDDEN.values(), ids=FORBIDDEN.keys())
def test_refused(as_operator: client.ApiClient, attributes: Attributes) -> None:
    permitted, reason = allowed(as_operator, attributes)
    assert not permitted, f"the chart's identity may {attributes}: {reason}"


def test_only_its_root_secret_is_readable_in_its_namespace(
    as_operator: client.ApiClient, identity: chart_identity.ChartIdentity
) -> None:
    """The Role names the root secret: no other Secret of the release namespace is readable."""
    own = {"verb": "get", "resource": "secrets", "namespace": identity.namespace}
    assert allowed(as_operator, own | {"name": f"{identity.release}-identity"})[0]
    assert not allowed(as_operator, own | {"name": "someone-elses-secret"})[0]
    assert not allowed(as_operator, own | {"verb": "list"})[0]


def test_other_leases_in_its_namespace_are_refused(
    as_operator: client.ApiClient, identity: chart_identity.ChartIdentity
) -> None:
    """The Role names its one Lease: another Lease there may be created but not taken over."""
    other = {
        "verb": "update", "group": "coordination.k8s.io", "resource": "leases",
        "namespace": identity.namespace, "name": "someone-elses-lease",
    }  # fmt: skip
    assert not allowed(as_operator, other)[0]


def _status(call: Callable[[], object]) -> int:
    try:
        call()
    except client.ApiException as error:
        return error.status
    return 200


def test_real_calls_are_refused(as_operator: client.ApiClient) -> None:
    """Not just the review: the API server answers 403 to the calls themselves."""
    core = client.CoreV1Api(as_operator)
    rbac = client.RbacAuthorizationV1Api(as_operator)
    binding = {
        "metadata": {"name": "lparkube-rbac-test-escape"},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": "admin",
        },
        "subjects": [{"kind": "User", "name": "anyone", "apiGroup": "rbac.authorization.k8s.io"}],
    }
    pod = {
        "metadata": {"name": "lparkube-rbac-test"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]},
    }
    calls = {
        "delete node": lambda: core.delete_node("node-a"),
        "create pod": lambda: core.create_namespaced_pod("default", pod),
        "list configmaps": core.list_config_map_for_all_namespaces,
        "create clusterrolebinding": lambda: rbac.create_cluster_role_binding(binding),
        "delete namespace": lambda: core.delete_namespace("default"),
        "list secrets": core.list_secret_for_all_namespaces,
        "list a tenant's secrets": lambda: core.list_namespaced_secret("default"),
        "read a tenant's secret": lambda: core.read_namespaced_secret("any", "default"),
    }
    answers = {name: _status(call) for name, call in calls.items()}
    assert answers == dict.fromkeys(calls, 403)


def test_impersonation_is_refused(identity: chart_identity.ChartIdentity) -> None:
    with config.new_client_from_config(config_file=str(identity.kubeconfig)) as api:
        api.set_default_header("Impersonate-User", "kubernetes-admin")
        with pytest.raises(client.ApiException) as refused:
            client.CoreV1Api(api).list_namespace()
    assert refused.value.status == 403
    assert "impersonate" in str(refused.value.body)


# --- allowed ---------------------------------------------------------------------------------


def _granted(identity: chart_identity.ChartIdentity) -> list[Attributes]:
    """Every (verb, resource) the rendered ClusterRole and Role grant, as review attributes."""
    checks: list[Attributes] = []
    for role in (o for o in identity.objects if o["kind"] in ("ClusterRole", "Role")):
        namespace = role["metadata"].get("namespace")
        for rule in role["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    name, _, sub = resource.partition("/")
                    for verb in rule["verbs"]:
                        attributes = {"verb": verb, "group": group, "resource": name}
                        attributes |= {"subresource": sub} if sub else {}
                        attributes |= {"namespace": namespace} if namespace else {}
                        names = rule.get("resourceNames") or [""]
                        checks += [attributes | ({"name": n} if n else {}) for n in names]
    return checks


def test_every_granted_rule_is_effective(
    as_operator: client.ApiClient, identity: chart_identity.ChartIdentity
) -> None:
    """The bindings work: each rule the chart writes is allowed to the token."""
    checks = _granted(identity)
    assert len(checks) > 30
    refused = [c for c in checks if not allowed(as_operator, c)[0]]
    assert refused == []


def test_secrets_partitions_and_vms_in_a_tenant_namespace(
    as_operator: client.ApiClient, namespace: str
) -> None:
    """What a Partition in any namespace needs, asked for a namespace made after the chart
    (its agent NetworkPolicy included)."""
    needed = [
        {"verb": "create", "resource": "secrets"},
        {"verb": "patch", "resource": "secrets"},
        {"verb": "create", "group": "kubevirt.io", "resource": "virtualmachines"},
        {"verb": "create", "group": "snapshot.kubevirt.io", "resource": "virtualmachinesnapshots"},
        {"verb": "create", "group": "snapshot.kubevirt.io", "resource": "virtualmachinerestores"},
        {"verb": "delete", "resource": "pods"},  # failover: a self-fenced guest's launcher
        {"verb": "patch", "group": "lparkube.io", "resource": "partitions",
         "subresource": "status"},
        {"verb": "create", "resource": "events"},
        {"verb": "list", "group": "networking.k8s.io", "resource": "networkpolicies"},
        {"verb": "create", "group": "networking.k8s.io", "resource": "networkpolicies"},
        {"verb": "patch", "group": "networking.k8s.io", "resource": "networkpolicies"},
        {"verb": "delete", "group": "networking.k8s.io", "resource": "networkpolicies"},
    ]  # fmt: skip
    refused = [a for a in needed if not allowed(as_operator, a | {"namespace": namespace})[0]]
    assert refused == []


def test_real_calls_are_allowed(
    as_operator: client.ApiClient, identity: chart_identity.ChartIdentity
) -> None:
    """The operator's first calls, made for real with the token: list its kinds, hold its Lease."""
    custom = client.CustomObjectsApi(as_operator)
    custom.list_cluster_custom_object("lparkube.io", "v1alpha1", "partitions")
    client.CoreV1Api(as_operator).list_node()
    leases = client.CoordinationV1Api(as_operator)
    name = next(
        r["resourceNames"][0]
        for o in identity.objects
        if o["kind"] == "Role"
        for r in o["rules"]
        if r.get("resourceNames") and r["resources"] == ["leases"]
    )
    body = {"metadata": {"name": name}, "spec": {"holderIdentity": "rbac-test"}}
    leases.create_namespaced_lease(identity.namespace, body)
    lease = leases.read_namespaced_lease(name, identity.namespace)
    lease.spec.holder_identity = "rbac-test-2"
    stored = leases.replace_namespaced_lease(name, identity.namespace, lease)
    assert stored.spec.holder_identity == "rbac-test-2"
