"""The chart's admission policy on the real API server: no Partition makes the operator a deputy.

The policy is the one ``helm template`` renders (applied with a fresh release's identity, as the
``operator`` fixture applies it), the users are ServiceAccounts with Roles in a tenant namespace
and tokens from the TokenRequest API, and every request is a real create or patch with their
token: the API server's CEL ``authorizer`` asks RBAC on their behalf. Refused requests leave
nothing behind; admitted ones that need no operator are server-side dry runs.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import chart_identity
import pytest
from kubernetes import client, config, utils
from partition_helpers import GROUP, PLURAL, VERSION, vm_spec

from lparkube_devenv.controlplane import LocalControlPlane, find_tool, wait_until

FORBIDDEN_SECRET = "database-credentials"
FORBIDDEN_ACCOUNT = "deployer"
ALLOWED_SECRET = "app-config"
ALLOWED_ACCOUNT = "app"
PARTITION = "web"  # the tenant may get its key Secret, web-agent-key (dry runs only)
EDITED = "edited"  # created and edited for real
RECONCILED = "reconciled"  # created for real and reconciled by the operator
NAMED_SECRETS = [f"volume-{i}" for i in range(17)]  # the tenant may get all 17 by name
POLICY_TIMEOUT = 30.0

Rule = dict[str, Any]
PARTITION_RULE = {
    "apiGroups": [GROUP],
    "resources": [PLURAL],
    "verbs": ["get", "create", "patch", "update", "delete"],
}


def secrets_rule(verbs: list[str], names: list[str] | None = None) -> Rule:
    return {"apiGroups": [""], "resources": ["secrets"], "verbs": verbs} | (
        {"resourceNames": names} if names else {}
    )


def vm_rule(verbs: list[str], names: list[str] | None = None) -> Rule:
    return {"apiGroups": ["kubevirt.io"], "resources": ["virtualmachines"], "verbs": verbs} | (
        {"resourceNames": names} if names else {}
    )


def tokens_rule(names: list[str] | None = None) -> Rule:
    rule = {"apiGroups": [""], "resources": ["serviceaccounts/token"], "verbs": ["create"]}
    return rule | ({"resourceNames": names} if names else {})


KEY_SECRETS = [f"{name}-agent-key" for name in (PARTITION, EDITED, RECONCILED)]
VM_PATCH_RULE = vm_rule(["patch"], [PARTITION, EDITED, RECONCILED, "adoptable"])
TENANT_RULES = [
    PARTITION_RULE,
    vm_rule(["create"]),
    VM_PATCH_RULE,
    secrets_rule(["create"]),
    secrets_rule(["get"], [ALLOWED_SECRET, *KEY_SECRETS, *NAMED_SECRETS]),
    tokens_rule([ALLOWED_ACCOUNT]),
]
USERS: dict[str, list[Rule]] = {
    # May create Partitions, nothing else: today's confused deputy.
    "partition-editor": [PARTITION_RULE],
    # May create VMs and read what its templates name, by name.
    "tenant": TENANT_RULES,
    "tenant-without-secret-create": [r for r in TENANT_RULES if r != secrets_rule(["create"])],
    "tenant-without-vm-patch": [r for r in TENANT_RULES if r != VM_PATCH_RULE],
    # May read every Secret and mint every token of the namespace.
    "namespace-wide": [
        PARTITION_RULE,
        vm_rule(["create", "patch"]),
        secrets_rule(["get", "create"]),
        tokens_rule(),
    ],
}


@dataclass
class Tenant:
    namespace: str
    users: dict[str, client.ApiClient]
    operator: client.ApiClient  # the chart's ServiceAccount

    def username(self, user: str) -> str:
        return f"system:serviceaccount:{self.namespace}:{user}"

    def create(self, user: str, body: dict, *, dry_run: bool = True) -> dict:
        api = client.CustomObjectsApi(self.users[user])
        return api.create_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, body, dry_run="All" if dry_run else None
        )

    def refusal(self, user: str, body: dict) -> str:
        """The API server's message refusing ``user``'s create of ``body`` (a real request)."""
        with pytest.raises(client.ApiException) as refused:
            self.create(user, body, dry_run=False)
        assert refused.value.status == 403, refused.value.body
        return json.loads(refused.value.body)["message"]


def make_user(
    api_client: client.ApiClient,
    namespace: str,
    name: str,
    rules: list[Rule],
    *,
    admin_kubeconfig: Path,
    workdir: Path,
) -> client.ApiClient:
    """A ServiceAccount bound to a Role with ``rules``, logged in with a TokenRequest token."""
    subject = {"kind": "ServiceAccount", "name": name, "namespace": namespace}
    for obj in (
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": name},
            "rules": rules,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [subject],
        },
    ):
        utils.create_from_dict(api_client, obj, namespace=namespace)
    token = chart_identity.request_token(api_client, namespace, name)
    path = chart_identity.write_token_kubeconfig(
        admin_kubeconfig, workdir / f"{name}.kubeconfig", token, namespace
    )
    return config.new_client_from_config(config_file=str(path))


def partition(name: str = PARTITION, *, volumes: list | None = None, **spec: Any) -> dict:
    """A Partition whose template has ``volumes`` (besides a root disk), or ``spec`` as given."""
    template = vm_spec("127.0.0.1")
    template["template"]["spec"]["volumes"] += volumes or []
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Partition",
        "metadata": {"name": name},
        "spec": spec or {"vmTemplate": {"spec": template}},
    }


@pytest.fixture(scope="module")
def tenant(
    control_plane: LocalControlPlane,
    kubeconfig: Path,
    api_client: client.ApiClient,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Tenant]:
    """A fresh release (identity and policy, from the chart) and a tenant namespace with USERS."""
    suffix = uuid.uuid4().hex[:6]
    core = client.CoreV1Api(api_client)
    release_namespace, namespace = f"lparkube-adm-{suffix}", f"tenant-{suffix}"
    for name in (release_namespace, namespace):
        core.create_namespace({"metadata": {"name": name}})
    workdir = tmp_path_factory.mktemp("admission")
    identity = chart_identity.install_identity(
        api_client,
        find_tool("helm", control_plane.bin_dir),
        release=f"lparkube-adm-{suffix}",
        namespace=release_namespace,
        admin_kubeconfig=kubeconfig,
        workdir=workdir,
    )
    users = {
        name: make_user(
            api_client, namespace, name, rules, admin_kubeconfig=kubeconfig, workdir=workdir
        )
        for name, rules in USERS.items()
    }
    operator = config.new_client_from_config(config_file=str(identity.kubeconfig))
    found = Tenant(namespace, users, operator)
    wait_until(lambda: _refused(found), POLICY_TIMEOUT, "the admission policy to take effect")
    yield found
    for api in (*users.values(), operator):
        api.close()
    chart_identity.remove_cluster_objects(api_client, identity)
    for name in (namespace, release_namespace):
        core.delete_namespace(name, propagation_policy="Background")


def _refused(tenant: Tenant) -> bool:
    """Whether the partition editor's dry-run create is refused yet (policies load within ~1 s)."""
    try:
        tenant.create("partition-editor", partition())
    except client.ApiException as error:
        return error.status == 403
    return False


# --- the attacks: refused, and each refusal names the field and what to do --------------------


def test_a_user_who_may_not_create_vms_gets_no_partition(tenant: Tenant) -> None:
    message = tenant.refusal("partition-editor", partition())
    assert message.endswith(
        "spec.vmTemplate: the operator creates a VirtualMachine from it, and you "
        f"({tenant.username('partition-editor')}) may not create virtualmachines.kubevirt.io in "
        f"namespace {tenant.namespace}. Ask for that permission, or for someone who has it to "
        "create the Partition."
    )
    custom = client.CustomObjectsApi(tenant.users["tenant"])
    with pytest.raises(client.ApiException) as missing:
        custom.get_namespaced_custom_object(GROUP, VERSION, tenant.namespace, PLURAL, PARTITION)
    assert missing.value.status == 404


VOLUMES = "spec.vmTemplate.spec.template.spec.volumes"  # entries named by their name
REFERENCES: dict[str, tuple[Callable[[str], dict], str]] = {
    "secret volume": (
        lambda name: {"volumes": [{"name": "creds", "secret": {"secretName": name}}]},
        f"{VOLUMES}[creds].secret.secretName",
    ),
    "cloud-init user data": (
        lambda name: {
            "volumes": [{"name": "ci", "cloudInitNoCloud": {"secretRef": {"name": name}}}]
        },
        f"{VOLUMES}[ci].cloudInitNoCloud.secretRef.name",
    ),
    "config-drive network data": (
        lambda name: {
            "volumes": [
                {"name": "cd", "cloudInitConfigDrive": {"networkDataSecretRef": {"name": name}}}
            ]
        },
        f"{VOLUMES}[cd].cloudInitConfigDrive.networkDataSecretRef.name",
    ),
    "sysprep": (
        lambda name: {"volumes": [{"name": "sp", "sysprep": {"secret": {"name": name}}}]},
        f"{VOLUMES}[sp].sysprep.secret.name",
    ),
    "container disk pull secret": (
        lambda name: {
            "volumes": [{"name": "data", "containerDisk": {"image": "x", "imagePullSecret": name}}]
        },
        f"{VOLUMES}[data].containerDisk.imagePullSecret",
    ),
    "ssh public key": (
        lambda name: {
            "accessCredentials": [
                {
                    "sshPublicKey": {
                        "source": {"secret": {"secretName": name}},
                        "propagationMethod": {"noCloud": {}},
                    }
                }
            ]
        },
        "spec.vmTemplate.spec.template.spec.accessCredentials[].sshPublicKey.source.secret."
        "secretName",
    ),
    "kernel boot pull secret": (
        lambda name: {
            "domain": {
                "firmware": {"kernelBoot": {"container": {"image": "k", "imagePullSecret": name}}}
            }
        },
        "spec.vmTemplate.spec.template.spec.domain.firmware.kernelBoot.container.imagePullSecret",
    ),
    "DataVolume import credentials": (
        lambda name: {
            "dataVolumeTemplates": [
                {
                    "metadata": {"name": "imported"},
                    "spec": {"source": {"s3": {"url": "https://example.com/d", "secretRef": name}}},
                }
            ]
        },
        "spec.vmTemplate.spec.dataVolumeTemplates[imported].spec.source.s3.secretRef",
    ),
}


def with_reference(add: Callable[[str], dict], name: str) -> dict:
    """The default Partition with ``add(name)`` merged into its VM (or VMI) spec."""
    body = partition()
    vm = body["spec"]["vmTemplate"]["spec"]
    for key, value in add(name).items():
        target = vm if key == "dataVolumeTemplates" else vm["template"]["spec"]
        target[key] = target[key] | value if key == "domain" else target.get(key, []) + value
    return body


@pytest.mark.parametrize(("add", "field"), REFERENCES.values(), ids=REFERENCES.keys())
def test_a_secret_the_user_may_not_get_is_refused(
    tenant: Tenant, add: Callable[[str], dict], field: str
) -> None:
    message = tenant.refusal("tenant", with_reference(add, FORBIDDEN_SECRET))
    assert message.endswith(
        f"{field}: the operator would hand Secret {FORBIDDEN_SECRET} to the guest, and you "
        f"({tenant.username('tenant')}) may not get it in namespace {tenant.namespace}. Ask for "
        "get on that Secret, or remove it from spec.vmTemplate."
    )
    tenant.create("tenant", with_reference(add, ALLOWED_SECRET))  # admitted (dry run)


def test_a_service_account_the_user_may_not_mint_tokens_for_is_refused(tenant: Tenant) -> None:
    def volume(name: str) -> dict:
        return partition(volumes=[{"name": "sa", "serviceAccount": {"serviceAccountName": name}}])

    message = tenant.refusal("tenant", volume(FORBIDDEN_ACCOUNT))
    assert message.endswith(
        f"{VOLUMES}[sa].serviceAccount.serviceAccountName: the operator would hand a token of "
        f"ServiceAccount {FORBIDDEN_ACCOUNT} to the guest, and you ({tenant.username('tenant')}) "
        f"may not create its tokens in namespace {tenant.namespace}. Ask for create on "
        "serviceaccounts/token for it, or remove it from spec.vmTemplate."
    )
    tenant.create("tenant", volume(ALLOWED_ACCOUNT))


def test_every_field_naming_the_refused_secret_is_listed(tenant: Tenant) -> None:
    forbidden = {"name": FORBIDDEN_SECRET}
    cloud_init = {"secretRef": forbidden, "networkDataSecretRef": forbidden}
    message = tenant.refusal(
        "tenant", partition(volumes=[{"name": "ci", "cloudInitNoCloud": cloud_init}])
    )
    assert (
        f"{VOLUMES}[ci].cloudInitNoCloud.networkDataSecretRef.name, "
        f"{VOLUMES}[ci].cloudInitNoCloud.secretRef.name: the operator would hand "
        f"Secret {FORBIDDEN_SECRET}"
    ) in message
    five = [{"name": f"s{i}", "secret": {"secretName": FORBIDDEN_SECRET}} for i in range(5)]
    message = tenant.refusal("tenant", partition(volumes=five))
    assert (
        f"{VOLUMES}[s0].secret.secretName, {VOLUMES}[s1].secret.secretName, "
        f"{VOLUMES}[s2].secret.secretName and 2 more fields: the operator would hand Secret"
    ) in message


def test_secret_extra_headers_need_the_right_on_every_secret(tenant: Tenant) -> None:
    """A list of names in a list of DataVolumes cannot be checked name by name in CEL that
    Kubernetes 1.30 runs (no flatten()), so the namespace-wide right is asked for."""

    def headers(name: str) -> dict:
        http = {"url": "https://example.com/d", "secretExtraHeaders": [name]}
        template = {"metadata": {"name": "imported"}, "spec": {"source": {"http": http}}}
        return {"dataVolumeTemplates": [template]}

    body = with_reference(headers, ALLOWED_SECRET)
    assert tenant.refusal("tenant", body).endswith(
        "spec.vmTemplate.spec.dataVolumeTemplates[imported].spec.source.http.secretExtraHeaders: "
        f"the importer would send these Secrets to the URL, and you ({tenant.username('tenant')})"
        f" may not get every Secret in namespace {tenant.namespace} (these are not checked by "
        "name). Ask for get on secrets there, or remove them."
    )
    tenant.create("namespace-wide", body)


def test_a_key_secret_the_user_may_not_get_is_refused(tenant: Tenant) -> None:
    named = partition()
    named["spec"]["agent"] = {"keySecretName": FORBIDDEN_SECRET}
    assert tenant.refusal("tenant", named).endswith(
        f"spec.agent.keySecretName: the operator writes the partition key into Secret "
        f"{FORBIDDEN_SECRET} and hands it to the guest, and you ({tenant.username('tenant')}) "
        f"may not get it in namespace {tenant.namespace}. Ask for get on that Secret there."
    )
    default = partition("db")  # the tenant may not get db-agent-key
    assert (
        "the key Secret (spec.agent.keySecretName, unset: db-agent-key): the operator writes "
        "the partition key into Secret db-agent-key"
    ) in tenant.refusal("tenant", default)


def test_a_user_who_may_not_create_secrets_is_refused(tenant: Tenant) -> None:
    message = tenant.refusal("tenant-without-secret-create", partition())
    assert message.endswith(
        "the key Secret (spec.agent.keySecretName, unset: web-agent-key): the operator creates "
        "Secret web-agent-key for the partition key, and you "
        f"({tenant.username('tenant-without-secret-create')}) may not create secrets in "
        f"namespace {tenant.namespace}. Ask for create on secrets there."
    )


def test_adopting_a_vm_the_user_may_not_patch_is_refused(tenant: Tenant) -> None:
    message = tenant.refusal("tenant", partition(vmName="not-yours"))
    assert message.endswith(
        "spec.vmName: the operator would adopt VirtualMachine not-yours (annotate it, add the "
        f"key disk), and you ({tenant.username('tenant')}) may not patch or update it in "
        f"namespace {tenant.namespace}. Ask for patch on that VirtualMachine, or name one you "
        "may change."
    )
    tenant.create("tenant", partition(vmName="adoptable"))


# --- legitimate callers ------------------------------------------------------------------------


def test_a_user_with_every_right_is_admitted(tenant: Tenant) -> None:
    every_kind = partition(
        volumes=[
            {"name": "creds", "secret": {"secretName": ALLOWED_SECRET}},
            {"name": "ci", "cloudInitNoCloud": {"secretRef": {"name": ALLOWED_SECRET}}},
            {"name": "sa", "serviceAccount": {"serviceAccountName": ALLOWED_ACCOUNT}},
        ]
    )
    created = tenant.create("tenant", every_kind)
    assert created["metadata"]["name"] == PARTITION


def test_the_admin_is_admitted(tenant: Tenant, api_client: client.ApiClient) -> None:
    body = with_reference(REFERENCES["secret volume"][0], FORBIDDEN_SECRET)
    body["spec"]["agent"] = {"keySecretName": FORBIDDEN_SECRET}
    created = client.CustomObjectsApi(api_client).create_namespaced_custom_object(
        GROUP, VERSION, tenant.namespace, PLURAL, body, dry_run="All"
    )
    assert created["spec"]["agent"]["keySecretName"] == FORBIDDEN_SECRET


def test_updates_are_checked_only_when_they_change_the_template(tenant: Tenant) -> None:
    """The operator's finalizer, annotation and status writes, and edits of other fields, pass;
    a template edit by a user who may not create, or may not patch, the VM is refused."""
    tenant.create("tenant", partition(EDITED), dry_run=False)
    path = (GROUP, VERSION, tenant.namespace, PLURAL, EDITED)
    as_operator = client.CustomObjectsApi(tenant.operator)
    as_operator.patch_namespaced_custom_object(
        *path, {"metadata": {"finalizers": ["lparkube.io/finalizer"],
                             "annotations": {"lparkube.io/progress": "1"}}},
    )  # fmt: skip
    as_operator.patch_namespaced_custom_object_status(*path, {"status": {"vmName": EDITED}})
    editor = client.CustomObjectsApi(tenant.users["partition-editor"])
    editor.patch_namespaced_custom_object(*path, {"spec": {"saveOnEvacuation": False}})
    edit = {"spec": {"vmTemplate": {"metadata": {"labels": {"tier": "db"}}}}}
    with pytest.raises(client.ApiException) as refused:
        editor.patch_namespaced_custom_object(*path, edit)
    assert refused.value.status == 403
    assert "spec.vmTemplate: the operator creates a VirtualMachine" in refused.value.body
    creator = client.CustomObjectsApi(tenant.users["tenant-without-vm-patch"])
    with pytest.raises(client.ApiException) as refused:
        creator.patch_namespaced_custom_object(*path, edit)
    assert json.loads(refused.value.body)["message"].endswith(
        f"spec.vmTemplate: the operator would apply the change to VirtualMachine {EDITED}, and you"
        f" ({tenant.username('tenant-without-vm-patch')}) may not patch or update it in namespace "
        f"{tenant.namespace}. Ask for patch on virtualmachines.kubevirt.io there, or leave the "
        "template as it is."
    )
    client.CustomObjectsApi(tenant.users["tenant"]).patch_namespaced_custom_object(*path, edit)
    as_operator.patch_namespaced_custom_object(*path, {"metadata": {"finalizers": None}})
    editor.delete_namespaced_custom_object(*path)


# --- CEL cost: templates at KubeVirt's limit (256 volumes) ------------------------------------


def many_volumes(names: list[str], count: int = 256) -> dict:
    """A Partition with ``count`` volumes (root disk included) naming ``names`` in turn."""
    volumes = [
        {"name": f"v{i}", "cloudInitNoCloud": {"secretRef": {"name": names[i % len(names)]},
                                               "networkDataSecretRef": {"name": names[0]}}}
        for i in range(count - 1)
    ]  # fmt: skip
    return partition(volumes=volumes)


def test_a_template_at_kubevirts_limit_passes(tenant: Tenant) -> None:
    """510 references to 16 Secrets, each allowed by name; 255 distinct ones, allowed
    namespace-wide, with a Secret volume and a ServiceAccount besides."""
    started = time.monotonic()
    tenant.create("tenant", many_volumes(NAMED_SECRETS[:16]))
    by_name = time.monotonic() - started
    wide = many_volumes([f"s{i}" for i in range(255)])
    wide["spec"]["vmTemplate"]["spec"]["template"]["spec"]["accessCredentials"] = [
        {"userPassword": {"source": {"secret": {"secretName": f"p{i}"}},
                          "propagationMethod": {"qemuGuestAgent": {}}}}
        for i in range(256)
    ]  # fmt: skip
    tenant.create("namespace-wide", wide)
    assert by_name < 5, f"{by_name:.2f} s to admit 510 references"


TOO_MANY = (
    "spec.vmTemplate: it names more than 16 different Secrets and ServiceAccounts (or more than "
    "1024 times), and at most 16 are checked one by one; you ({user}) may not get every Secret "
    "(create every token) in namespace {namespace}. Ask for get on secrets (create on "
    "serviceaccounts/token) there, or name at most 16."
)


@pytest.mark.parametrize(
    "body",
    [
        many_volumes(NAMED_SECRETS, count=18),  # 17 Secrets, each allowed by name
        many_volumes(NAMED_SECRETS[:16], count=514),  # 16 Secrets, 1,026 references
    ],
    ids=["17 Secrets", "1026 references"],
)
def test_more_than_is_checked_one_by_one_needs_the_namespace_wide_right(
    tenant: Tenant, body: dict
) -> None:
    user = tenant.username("tenant")
    message = tenant.refusal("tenant", body)
    assert message.endswith(TOO_MANY.format(user=user, namespace=tenant.namespace))
    tenant.create("namespace-wide", body)


# --- with the operator: a tenant's Partition is reconciled and deleted under the policy --------


@pytest.mark.usefixtures("operator")
def test_the_operator_reconciles_and_releases_a_tenants_partition(tenant: Tenant) -> None:
    tenant.create("tenant", partition(RECONCILED), dry_run=False)
    custom = client.CustomObjectsApi(tenant.users["tenant"])
    path = (GROUP, VERSION, tenant.namespace, PLURAL, RECONCILED)
    reconciled = wait_until(
        lambda: (
            (p := custom.get_namespaced_custom_object(*path)).get("status", {}).get("vmName") and p
        ),
        POLICY_TIMEOUT,
        "the operator's status write",
    )
    assert "lparkube.io/finalizer" in reconciled["metadata"]["finalizers"]
    custom.delete_namespaced_custom_object(*path)

    def gone() -> bool:
        try:
            custom.get_namespaced_custom_object(*path)
        except client.ApiException as error:
            return error.status == 404
        return False

    wait_until(gone, POLICY_TIMEOUT, "the operator to remove its finalizer")
