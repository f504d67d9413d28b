"""The Helm chart's ServiceAccount as a real identity on the local control plane.

The integration suite runs the operator as this identity, not as the admin, so a permission
the chart forgot fails a flow instead of hiding behind system:masters. The chart's admission
policy is applied with it, so every flow also runs under the policy (tests create Partitions as
the admin, who passes its checks). The objects come from ``helm template`` of the real chart
(the real helm), so what is proven is what ships.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml
from kubernetes import client, utils

from lparkube_devenv.controlplane import REPO_ROOT

CHART_DIR = REPO_ROOT / "charts" / "lparkube"
RBAC_KINDS = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")
ADMISSION_KINDS = ("ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")
APPLIED_KINDS = RBAC_KINDS + ADMISSION_KINDS
TOKEN_SECONDS = 6 * 3600  # outlives the longest test session


@dataclass(frozen=True)
class ChartIdentity:
    """A chart release's ServiceAccount with its RBAC (and admission policy) applied, and a
    kubeconfig that uses it."""

    release: str
    namespace: str
    service_account: str
    kubeconfig: Path
    objects: tuple[dict, ...]

    @property
    def username(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.service_account}"


def server_version(api_client: client.ApiClient) -> str:
    """The API server's version (``helm template`` otherwise assumes Kubernetes 1.20)."""
    return client.VersionApi(api_client).get_code().git_version.removeprefix("v")


def helm_template(
    helm: str, release: str, namespace: str, kube_version: str, *args: str
) -> list[dict]:
    """The chart's rendered objects; ``args`` are extra helm flags (``--set ...``)."""
    argv = [helm, "template", release, str(CHART_DIR), "--namespace", namespace]
    argv += ["--kube-version", kube_version, *args]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if result.returncode != 0:
        raise AssertionError(f"helm template failed:\n{result.stderr}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def apply_identity_and_policy(
    api_client: client.ApiClient, objects: list[dict]
) -> tuple[dict, ...]:
    """Create the ServiceAccount, RBAC and admission policy objects among ``objects``, as the
    admin."""
    chosen = tuple(o for o in objects if o["kind"] in APPLIED_KINDS)
    for obj in chosen:
        utils.create_from_dict(api_client, obj)
    return chosen


def request_token(api_client: client.ApiClient, namespace: str, name: str) -> str:
    """A bound token for the ServiceAccount from the TokenRequest API, as a pod would get."""
    request = {"spec": {"expirationSeconds": TOKEN_SECONDS}}
    response = client.CoreV1Api(api_client).create_namespaced_service_account_token(
        name, namespace, request
    )
    return response.status.token


def write_token_kubeconfig(admin: Path, path: Path, token: str, namespace: str) -> Path:
    """The admin kubeconfig's server and CA, with the token as the user.

    The context namespace is the release namespace, like a pod's: kopf posts Events for
    cluster-scoped objects there.
    """
    config = yaml.safe_load(admin.read_text())
    cluster = config["clusters"][0]
    token_config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [cluster],
        "users": [{"name": "lparkube-operator", "user": {"token": token}}],
        "contexts": [
            {
                "name": "lparkube-operator",
                "context": {
                    "cluster": cluster["name"],
                    "user": "lparkube-operator",
                    "namespace": namespace,
                },
            }
        ],
        "current-context": "lparkube-operator",
    }
    path.write_text(yaml.safe_dump(token_config, sort_keys=False))
    path.chmod(0o600)
    return path


def install_identity(
    api_client: client.ApiClient,
    helm: str,
    *,
    release: str,
    namespace: str,
    admin_kubeconfig: Path,
    workdir: Path,
) -> ChartIdentity:
    """Render the chart with default values, apply its identity and admission policy, and log
    in as the identity."""
    objects = helm_template(helm, release, namespace, server_version(api_client))
    applied = apply_identity_and_policy(api_client, objects)
    account = next(o for o in applied if o["kind"] == "ServiceAccount")["metadata"]["name"]
    token = request_token(api_client, namespace, account)
    path = write_token_kubeconfig(admin_kubeconfig, workdir / "kubeconfig", token, namespace)
    return ChartIdentity(release, namespace, account, path, applied)


def remove_cluster_objects(api_client: client.ApiClient, identity: ChartIdentity) -> None:
    """Delete the release's cluster-scoped objects (its namespace takes the rest)."""
    rbac = client.RbacAuthorizationV1Api(api_client)
    admission = client.AdmissionregistrationV1Api(api_client)
    delete = {
        "ClusterRole": rbac.delete_cluster_role,
        "ClusterRoleBinding": rbac.delete_cluster_role_binding,
        "ValidatingAdmissionPolicy": admission.delete_validating_admission_policy,
        "ValidatingAdmissionPolicyBinding": admission.delete_validating_admission_policy_binding,
    }
    for obj in identity.objects:
        if obj["kind"] in delete:
            try:
                delete[obj["kind"]](obj["metadata"]["name"])
            except client.ApiException as error:
                if error.status != 404:
                    raise
