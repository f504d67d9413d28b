"""helm template with default and non-default values renders the objects users rely on."""

from __future__ import annotations

import json

import pytest
from chart_helpers import Render, by_kind, container, one

import lparkube.controllers.agent_gateway  # registers lparkube_agent_reports
from lparkube import cli, metrics

DIGEST = "sha256:" + "ab" * 32
NON_DEFAULT = (
    "--set", "replicaCount=3",
    "--set", "serviceMonitor.enabled=true,prometheusRule.enabled=true",
    "--set", "podDisruptionBudget.enabled=true",
    "--set", f"image.digest={DIGEST}",
    "--set", "resources.requests.cpu=250m,resources.limits.memory=1Gi",
    "--set", "podAntiAffinityPreset=hard",
    "--set", "serviceMonitor.labels.release=kube-prometheus",
    "--set", "operator.logLevel=debug",
)  # fmt: skip


@pytest.fixture(scope="module")
def default(render: Render) -> list[dict]:
    return render()


@pytest.fixture(scope="module")
def custom(render: Render) -> list[dict]:
    return render(*NON_DEFAULT, release="ops", namespace="ops-system")


def test_defaults_render_the_expected_objects(default: list[dict]) -> None:
    kinds = {kind: len(items) for kind, items in by_kind(default).items()}
    assert kinds == {
        "ServiceAccount": 1,
        "ClusterRole": 1,
        "ClusterRoleBinding": 1,
        "Role": 1,
        "RoleBinding": 1,
        "Service": 2,
        "Deployment": 1,
        "ConfigMap": 1,
        "NetworkPolicy": 1,
        "ValidatingAdmissionPolicy": 1,
        "ValidatingAdmissionPolicyBinding": 1,
    }
    assert all(o["metadata"].get("namespace") in (None, "lparkube-system") for o in default)


def test_default_deployment(default: list[dict]) -> None:
    deployment = one(default, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    main = container(default)
    assert main["image"] == "ghcr.io/lparkube/lparkube:0.1.0"  # the chart's appVersion
    assert main["imagePullPolicy"] == "Always"
    assert main["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert main["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    assert {p["name"]: p["containerPort"] for p in main["ports"]} == {
        "health": 8080,
        "metrics": 9090,
        "agent-gateway": 8081,
    }


def test_args_are_accepted_by_the_operator_cli(default: list[dict]) -> None:
    """Every flag the chart passes parses into valid settings (env vars as the kubelet would)."""
    args = [
        a.replace("$(POD_NAMESPACE)", "lparkube-system").replace("$(POD_NAME)", "pod-x")
        for a in container(default)["args"]
    ]
    parsed = cli.build_parser().parse_args(args)
    settings = cli.settings_from(parsed)
    assert settings.lease.namespace == "lparkube-system"
    assert settings.identity == "pod-x"
    assert settings.clusterwide
    assert settings.agent_gateway_url == (
        "https://lparkube-agent-gateway.lparkube-system.svc.cluster.local:8081"
    )
    assert settings.identity_secret == "lparkube-identity"
    assert settings.agent_network_policy


def test_agent_policies_admit_exactly_the_operators_pods(render: Render) -> None:
    """On by default, naming the labels every operator pod has (the Deployment's selector);
    off, the operator gets no flag, and keeps the rule that lets it delete what it made."""
    default = render()
    main = container(default)
    parsed = cli.settings_from(cli.build_parser().parse_args(main["args"]))
    selector = one(default, "Deployment")["spec"]["selector"]["matchLabels"]
    assert dict(parsed.operator_pod_labels) == selector
    off = render("--set", "agentNetworkPolicy.enabled=false")
    assert not [a for a in container(off)["args"] if "network-policy" in a or "pod-labels" in a]
    rules = [r for o in by_kind(off)["ClusterRole"] for r in o["rules"]]
    assert {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"],
            "verbs": ["list", "watch", "create", "patch", "delete"]} in rules  # fmt: skip


def test_identity_and_namespace_come_from_the_downward_api(default: list[dict]) -> None:
    main = container(default)
    env = {
        e["name"]: e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") for e in main["env"]
    }
    assert env["POD_NAME"] == "metadata.name"
    assert env["POD_NAMESPACE"] == "metadata.namespace"
    assert "--identity=$(POD_NAME)" in main["args"]
    assert "--lease-namespace=$(POD_NAMESPACE)" in main["args"]


def test_restricted_security_context(default: list[dict]) -> None:
    pod = one(default, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container(default)["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    tmp = next(v for v in pod["volumes"] if v["name"] == "tmp")
    assert "emptyDir" in tmp
    assert {"name": "tmp", "mountPath": "/tmp"} in container(default)["volumeMounts"]
    assert not any(k in pod for k in ("hostNetwork", "hostPID", "hostIPC"))


def test_only_the_pod_mounts_a_token(default: list[dict]) -> None:
    assert one(default, "ServiceAccount")["automountServiceAccountToken"] is False
    pod = one(default, "Deployment")["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is True
    assert pod["serviceAccountName"] == one(default, "ServiceAccount")["metadata"]["name"]


def test_services_select_the_operator_pods(default: list[dict]) -> None:
    pod_labels = one(default, "Deployment")["spec"]["template"]["metadata"]["labels"]
    services = {s["metadata"]["name"]: s["spec"] for s in by_kind(default)["Service"]}
    gateway = services["lparkube-agent-gateway"]
    assert gateway["ports"] == [
        {
            "name": "http-agent-gateway",
            "port": 8081,
            "targetPort": "agent-gateway",
            "protocol": "TCP",
        }
    ]
    metrics = services["lparkube-metrics"]
    assert metrics["ports"][0]["targetPort"] == "metrics"
    for spec in (gateway, metrics):
        assert spec["selector"].items() <= pod_labels.items()


def test_network_policy_admits_only_the_served_ports(default: list[dict]) -> None:
    policy = one(default, "NetworkPolicy")["spec"]
    pod_labels = one(default, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    ports = {p["port"] for rule in policy["ingress"] for p in rule["ports"]}
    assert ports == {p["name"] for p in container(default)["ports"]}


MONITORING = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}


def test_network_policy_peers_from_values(render: Render) -> None:
    objects = render("--set-json", f"networkPolicy.metricsFrom=[{json.dumps(MONITORING)}]")
    ingress = one(objects, "NetworkPolicy")["spec"]["ingress"]
    metrics = next(r for r in ingress if r["ports"][0]["port"] == "metrics")
    assert metrics["from"] == [MONITORING]
    gateway = next(r for r in ingress if r["ports"][0]["port"] == "agent-gateway")
    assert "from" not in gateway  # guests in any namespace


def test_release_role_is_namespaced_and_names_the_lease_and_root_secret(
    default: list[dict],
) -> None:
    role = one(default, "Role")
    assert role["metadata"]["namespace"] == "lparkube-system"
    named = [r for r in role["rules"] if r.get("resourceNames")]
    assert named == [
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": ["lparkube-operator"],
            "verbs": ["get", "update"],
        },
        {
            "apiGroups": [""],
            "resources": ["secrets"],
            "resourceNames": ["lparkube-identity"],
            "verbs": ["get"],
        },
    ]
    binding = one(default, "RoleBinding")
    assert binding["subjects"][0]["namespace"] == "lparkube-system"


def test_dashboard_configmap(default: list[dict]) -> None:
    dashboard = one(default, "ConfigMap")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    board = json.loads(dashboard["data"]["lparkube.json"])
    exprs = " ".join(t["expr"] for p in board["panels"] for t in p["targets"])
    for metric in ("lparkube_leader", "lparkube_agents_connected", "lparkube_saves_total"):
        assert metric in exprs


def test_no_pdb_monitor_or_rules_by_default(default: list[dict]) -> None:
    kinds = by_kind(default)
    assert not {"PodDisruptionBudget", "ServiceMonitor", "PrometheusRule"} & kinds.keys()


# --- non-default values ------------------------------------------------------------------------


def test_custom_values_render_the_optional_objects(custom: list[dict]) -> None:
    kinds = by_kind(custom)
    assert {"PodDisruptionBudget", "ServiceMonitor", "PrometheusRule"} <= kinds.keys()
    assert all(o["metadata"].get("namespace") in (None, "ops-system") for o in custom)
    assert one(custom, "Deployment")["metadata"]["name"] == "ops-lparkube"


def test_custom_deployment(custom: list[dict]) -> None:
    deployment = one(custom, "Deployment")
    assert deployment["spec"]["replicas"] == 3
    main = container(custom)
    assert main["image"] == f"ghcr.io/lparkube/lparkube@{DIGEST}"
    assert main["resources"]["requests"]["cpu"] == "250m"
    assert main["resources"]["limits"]["memory"] == "1Gi"
    assert "--log-level=debug" in main["args"]
    assert "--lease-namespace=$(POD_NAMESPACE)" in main["args"]
    anti = deployment["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    assert anti["requiredDuringSchedulingIgnoredDuringExecution"][0]["topologyKey"] == (
        "kubernetes.io/hostname"
    )


def test_pdb_lets_standbys_go(custom: list[dict]) -> None:
    pdb = one(custom, "PodDisruptionBudget")["spec"]
    assert pdb["minAvailable"] == 1
    assert pdb["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    pod_labels = one(custom, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert pdb["selector"]["matchLabels"].items() <= pod_labels.items()


def test_pdb_needs_more_than_one_replica(render: Render) -> None:
    single = render("--set", "podDisruptionBudget.enabled=true")
    assert "PodDisruptionBudget" not in by_kind(single)


def test_service_monitor_scrapes_the_metrics_service(custom: list[dict]) -> None:
    monitor = one(custom, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus"
    metrics = next(
        s for s in by_kind(custom)["Service"] if s["metadata"]["name"] == "ops-lparkube-metrics"
    )
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= metrics["metadata"]["labels"].items()
    )
    assert monitor["spec"]["endpoints"][0]["port"] == metrics["spec"]["ports"][0]["name"]
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["ops-system"]}


def test_alerts_use_exported_metrics(custom: list[dict]) -> None:
    """Each alert's expression names a metric the operator really exports."""
    rules = one(custom, "PrometheusRule")["spec"]["groups"][0]["rules"]
    alerts = {r["alert"]: r["expr"] for r in rules}
    assert {"LparkubeAgentDisconnected", "LparkubeSaveFailures", "LparkubeHandlerStuck"} <= set(
        alerts
    )
    exported = exported_metric_names()
    for name, expr in alerts.items():
        used = {word for word in _words(expr) if word.startswith("lparkube_")}
        assert used, name
        assert used <= exported, f"{name} uses {used - exported}"


def _words(expr: str) -> set[str]:
    return set("".join(c if c.isalnum() or c == "_" else " " for c in expr).split())


def exported_metric_names() -> set[str]:
    """Sample names in the operator's registry, as a scrape would show them."""
    assert lparkube.controllers.agent_gateway.REPORTS is not None
    names: set[str] = set()
    for family in metrics.REGISTRY.collect():
        names.add(family.name)
        names.add(f"{family.name}_total")
    return names


def test_grafana_dashboard_can_go_to_another_namespace(render: Render) -> None:
    objects = render("--set", "grafanaDashboard.namespace=monitoring")
    assert one(objects, "ConfigMap")["metadata"]["namespace"] == "monitoring"
