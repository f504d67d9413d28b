"""The local control plane is a real Kubernetes control plane: version, RBAC, admission,
namespace lifecycle + garbage collection, volume binding and watches all work for real."""

from __future__ import annotations

import json
import queue
import threading
import uuid

import pytest
from kubernetes import client, config, watch

from lparkube_devenv.controlplane import LocalControlPlane, wait_until

TIMEOUT = 60


def _suffix() -> str:
    return uuid.uuid4().hex[:6]


def _exists(read, *args) -> bool:
    try:
        read(*args)
    except client.ApiException as error:
        if error.status == 404:
            return False
        raise
    return True


def test_apiserver_reports_pinned_version(api_client: client.ApiClient, kubectl) -> None:
    info = client.VersionApi(api_client).get_code()
    assert (info.git_version, info.major, info.minor) == ("v1.35.4", "1", "35")
    server = json.loads(kubectl("version", "-o", "json").stdout)["serverVersion"]
    assert server["gitVersion"] == "v1.35.4"


def test_rbac_denies_unbound_user_until_bound(
    control_plane: LocalControlPlane, api_client: client.ApiClient, namespace: str
) -> None:
    user = f"nobody-{_suffix()}"
    with config.new_client_from_config(config_file=str(control_plane.kubeconfig)) as nobody:
        nobody.set_default_header("Impersonate-User", user)
        with pytest.raises(client.ApiException) as denied:
            client.CoreV1Api(nobody).list_namespaced_config_map(namespace)
        assert denied.value.status == 403
        assert f'User "{user}" cannot list resource "configmaps"' in _message(denied.value)

        rbac = client.RbacAuthorizationV1Api(api_client)
        rule = {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["list"]}
        rbac.create_namespaced_role(namespace, {"metadata": {"name": "read"}, "rules": [rule]})
        binding = {
            "metadata": {"name": "read"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
        }
        rbac.create_namespaced_role_binding(namespace, binding)
        allowed = wait_until(
            lambda: _can(lambda: client.CoreV1Api(nobody).list_namespaced_config_map(namespace)),
            TIMEOUT,
            "the RoleBinding to take effect",
        )
        assert allowed


def _message(error: client.ApiException) -> str:
    return json.loads(error.body)["message"]


def _can(call) -> bool:
    try:
        call()
    except client.ApiException as error:
        if error.status == 403:
            return False
        raise
    return True


def _pod(name: str, *, privileged: bool) -> dict:
    if privileged:
        security = {"privileged": True}
    else:
        security = {
            "allowPrivilegeEscalation": False,
            "runAsNonRoot": True,
            "runAsUser": 1000,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        }
    container = {"name": "c", "image": "busybox", "securityContext": security}
    return {"metadata": {"name": name}, "spec": {"containers": [container]}}


def test_pod_security_rejects_privileged_pod(api_client: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(api_client)
    labels = {"pod-security.kubernetes.io/enforce": "restricted"}
    core.patch_namespace(namespace, {"metadata": {"labels": labels}})
    wait_until(
        lambda: _exists(core.read_namespaced_service_account, "default", namespace),
        TIMEOUT,
        "the default ServiceAccount (needed by the ServiceAccount admission plugin)",
    )
    with pytest.raises(client.ApiException) as rejected:
        core.create_namespaced_pod(namespace, _pod("privileged", privileged=True))
    assert rejected.value.status == 403
    message = _message(rejected.value)
    assert 'violates PodSecurity "restricted:latest"' in message
    assert "must not set securityContext.privileged=true" in message

    created = core.create_namespaced_pod(namespace, _pod("restricted", privileged=False))
    assert created.metadata.name == "restricted"


def _owned_config_maps(core: client.CoreV1Api, ns: str, owner: str, children: list[str]) -> None:
    parent = core.create_namespaced_config_map(ns, {"metadata": {"name": owner}})
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": owner, "uid": parent.metadata.uid}
    for child in children:
        core.create_namespaced_config_map(
            ns, {"metadata": {"name": child, "ownerReferences": [ref]}}
        )


def test_garbage_collector_and_namespace_deletion(api_client: client.ApiClient) -> None:
    core = client.CoreV1Api(api_client)
    ns = f"gc-{_suffix()}"
    core.create_namespace({"metadata": {"name": ns}})
    _owned_config_maps(core, ns, "owner-a", ["child-a1", "child-a2"])
    core.create_namespaced_config_map(ns, {"metadata": {"name": "unowned"}})

    core.delete_namespaced_config_map("owner-a", ns, propagation_policy="Background")
    wait_until(
        lambda: (
            not any(
                _exists(core.read_namespaced_config_map, c, ns) for c in ("child-a1", "child-a2")
            )
        ),
        TIMEOUT,
        "the garbage collector to delete the ConfigMaps owned by owner-a",
    )
    assert _exists(core.read_namespaced_config_map, "unowned", ns)

    _owned_config_maps(core, ns, "owner-b", ["child-b1"])
    core.delete_namespace(ns)
    wait_until(
        lambda: not _exists(core.read_namespace, ns),
        TIMEOUT,
        "the namespace controller to empty and remove the namespace",
    )
    listed = core.list_config_map_for_all_namespaces(field_selector=f"metadata.namespace={ns}")
    assert listed.items == []


def test_pvc_binds_to_matching_pv(api_client: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(api_client)
    suffix = _suffix()
    storage_class = f"manual-{suffix}"
    pv_name = f"pv-{suffix}"
    core.create_persistent_volume(
        {
            "metadata": {"name": pv_name},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": storage_class,
                "persistentVolumeReclaimPolicy": "Retain",
                "hostPath": {"path": f"/tmp/lparkube-{pv_name}"},
            },
        }
    )
    try:
        core.create_namespaced_persistent_volume_claim(
            namespace,
            {
                "metadata": {"name": "data"},
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "storageClassName": storage_class,
                    "resources": {"requests": {"storage": "500Mi"}},
                },
            },
        )
        pvc = wait_until(
            lambda: _bound(core.read_namespaced_persistent_volume_claim("data", namespace)),
            TIMEOUT,
            "the PVC to bind",
        )
        assert pvc.spec.volume_name == pv_name
        assert pvc.status.capacity["storage"] == "1Gi"
        pv = core.read_persistent_volume(pv_name)
        assert pv.status.phase == "Bound"
        assert (pv.spec.claim_ref.namespace, pv.spec.claim_ref.name) == (namespace, "data")
    finally:
        core.delete_persistent_volume(pv_name)


def _bound(pvc):
    return pvc if pvc.status.phase == "Bound" else None


def _node_condition(node, kind: str) -> str | None:
    for condition in node.status.conditions or []:
        if condition.type == kind:
            return condition.status
    return None


def _watch_until_not_ready(kubeconfig: str, name: str, rv: str, seen: queue.Queue) -> None:
    """On its own client and stream: report node ``name``'s events after ``rv`` until Ready
    is no longer True."""
    with config.new_client_from_config(config_file=kubeconfig) as api:
        stream = watch.Watch().stream(
            client.CoreV1Api(api).list_node,
            field_selector=f"metadata.name={name}",
            resource_version=rv,
            timeout_seconds=TIMEOUT,
        )
        for event in stream:
            ready = _node_condition(event["object"], "Ready")
            seen.put((event["type"], ready))
            if ready != "True":
                stream.close()
                return


def test_node_condition_change_reaches_a_watch(
    control_plane: LocalControlPlane, api_client: client.ApiClient
) -> None:
    core = client.CoreV1Api(api_client)
    name = f"node-{_suffix()}"
    node = core.create_node({"metadata": {"name": name, "labels": {"lparkube.test": "true"}}})
    try:
        ready = {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "ok"}
        patched = core.patch_node_status(name, {"status": {"conditions": [ready]}})
        assert _node_condition(patched, "Ready") == "True"

        seen: queue.Queue = queue.Queue()
        watcher = threading.Thread(
            target=_watch_until_not_ready,
            args=(str(control_plane.kubeconfig), name, patched.metadata.resource_version, seen),
            daemon=True,
        )
        watcher.start()
        not_ready = {**ready, "status": "False", "reason": "KernelDeadlock", "message": "hung"}
        core.patch_node_status(name, {"status": {"conditions": [not_ready]}})
        assert seen.get(timeout=TIMEOUT) == ("MODIFIED", "False")
        watcher.join(TIMEOUT)
        assert node.metadata.uid == core.read_node(name).metadata.uid
    finally:
        core.delete_node(name)
