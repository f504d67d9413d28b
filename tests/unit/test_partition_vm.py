"""The VM a Partition creates or adopts, and the key Secret that reaches its guest."""

from __future__ import annotations

import base64
import json

import pytest
import yaml

from lparkube.domain import key_delivery as kd
from lparkube.domain import partition as part

KEY = bytes(range(32))
CREDENTIALS = part.AgentCredentials(KEY, b"CA PEM", b"CERT PEM", b"KEY PEM")
URL = "https://lparkube-agent-gateway.lparkube-system.svc:8081"


TLS_FILES = {"ca.crt": b"CA PEM", "tls.crt": b"CERT PEM", "tls.key": b"KEY PEM"}
TLS_PATHS = [f"{kd.AGENT_DIRECTORY}/{name}" for name in TLS_FILES]


def partition(spec: dict, name: str = "web-1") -> dict:
    return {
        "apiVersion": part.API_VERSION,
        "kind": "Partition",
        "metadata": {"name": name, "namespace": "tenant-a", "uid": "uid-1", "generation": 2},
        "spec": spec,
    }


def template(volumes: list | None = None, disks: list | None = None) -> dict:
    return {
        "metadata": {"labels": {"tier": "web"}, "annotations": {"note": "x"}},
        "spec": {
            "runStrategy": "Always",
            "template": {
                "metadata": {"labels": {"kubevirt.io/domain": "web-1"}},
                "spec": {
                    "domain": {"devices": {"disks": disks or [{"name": "root", "disk": {}}]}},
                    "volumes": volumes or [{"name": "root", "containerDisk": {"image": "i"}}],
                },
            },
        },
    }


def pod_spec(vm: dict) -> dict:
    return vm["spec"]["template"]["spec"]


def decode(data: dict, key: str) -> bytes:
    return base64.b64decode(data[key])


def test_defaults_of_the_agent_spec() -> None:
    agent = part.agent_spec("web-1", {})
    assert agent == part.AgentSpec(8443, "web-1-agent-key", kd.SECRET_VOLUME, 90.0)
    assert agent.report_interval == 30
    short = part.agent_spec("x", {"agent": {"heartbeatTimeout": "3s", "keySecretName": "k"}})
    assert (short.report_interval, short.key_secret_name) == (1, "k")


def test_partition_ids() -> None:
    assert part.parse_partition_id("tenant-a/web-1") == ("tenant-a", "web-1")
    assert part.parse_partition_id("tenant-a/web.example") == ("tenant-a", "web.example")
    for bad in ("web-1", "a/b/c", "A/b", "a/", "/b", "a/b\n", "../x/y"):
        assert part.parse_partition_id(bad) is None, bad


def test_vm_from_template_is_owned_labelled_and_gets_the_key_disk() -> None:
    p = partition({"vmTemplate": template()})
    vm = part.vm_from_template(p, part.agent_spec("web-1", p["spec"]))

    assert vm["metadata"]["name"] == "web-1"
    assert vm["metadata"]["namespace"] == "tenant-a"
    assert vm["metadata"]["labels"] == {"tier": "web", part.PARTITION_LABEL: "web-1"}
    annotations = vm["metadata"]["annotations"]
    assert annotations.pop(part.LAST_APPLIED) and annotations == {"note": "x"}
    assert vm["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "lparkube.io/v1alpha1",
            "kind": "Partition",
            "name": "web-1",
            "uid": "uid-1",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    assert vm["spec"]["template"]["metadata"]["labels"][part.PARTITION_LABEL] == "web-1"
    assert {"name": kd.KEY_VOLUME, "secret": {"secretName": "web-1-agent-key"}} in pod_spec(vm)[
        "volumes"
    ]
    disk = {"name": kd.KEY_VOLUME, "serial": "lparkube", "disk": {"bus": "virtio"}}
    assert disk in pod_spec(vm)["domain"]["devices"]["disks"]
    assert p["spec"]["vmTemplate"] == template(), "the Partition's template is not mutated"


def test_injection_is_idempotent() -> None:
    spec = template()["spec"]
    once = kd.with_key_delivery(spec, kd.SECRET_VOLUME, "k")
    assert kd.with_key_delivery(once, kd.SECRET_VOLUME, "k") == once
    assert kd.without_key_delivery(once) == spec


def test_no_cluster_credentials_reach_the_guest() -> None:
    for delivery in (kd.SECRET_VOLUME, kd.CLOUD_INIT):
        p = partition({"vmTemplate": template(), "agent": {"keyDelivery": delivery}})
        agent = part.agent_spec("web-1", p["spec"])
        vm = part.vm_from_template(p, agent)
        text = json.dumps(vm)
        assert "serviceAccount" not in text and "token" not in text.lower()
        assert base64.b64encode(KEY).decode() not in text, "the key stays in the Secret"
        assert pod_spec(vm).get("accessCredentials") is None


def test_cloud_init_without_a_template_volume_adds_one_pointing_at_the_secret() -> None:
    p = partition({"vmTemplate": template(), "agent": {"keyDelivery": "CloudInit"}})
    agent = part.agent_spec("web-1", p["spec"])
    vm = part.vm_from_template(p, agent)
    volume = {
        "name": kd.CLOUD_INIT_VOLUME,
        "cloudInitNoCloud": {"secretRef": {"name": "web-1-agent-key"}},
    }
    assert volume in pod_spec(vm)["volumes"]
    assert {"name": kd.CLOUD_INIT_VOLUME, "disk": {"bus": "virtio"}} in pod_spec(vm)["domain"][
        "devices"
    ]["disks"]

    data = part.secret_data(p, agent, CREDENTIALS, URL)
    user_data = decode(data, part.SECRET_USERDATA).decode()
    assert user_data.startswith("#cloud-config\n")
    files = {f["path"]: f for f in yaml.safe_load(user_data)["write_files"]}
    assert base64.b64decode(files[kd.KEY_PATH]["content"]) == KEY
    assert files[kd.KEY_PATH]["encoding"] == "b64"
    assert files[kd.KEY_PATH]["permissions"] == "0600"
    config = json.loads(base64.b64decode(files[kd.CONFIG_PATH]["content"]))
    assert config["partition"] == "tenant-a/web-1"
    tls_files = {f"{kd.AGENT_DIRECTORY}/{name}": pem for name, pem in TLS_FILES.items()}
    for path, pem in tls_files.items():
        assert base64.b64decode(files[path]["content"]) == pem
        assert files[path]["permissions"] == "0600"


def test_cloud_init_extends_the_templates_own_cloud_config() -> None:
    own = "#cloud-config\npackages: [python3]\nwrite_files:\n- path: /etc/motd\n  content: hi\n"
    volumes = [
        {"name": "root", "containerDisk": {"image": "i"}},
        {"name": "cloudinit", "cloudInitNoCloud": {"userData": own, "networkData": "n"}},
    ]
    p = partition({"vmTemplate": template(volumes), "agent": {"keyDelivery": "CloudInit"}})
    agent = part.agent_spec("web-1", p["spec"])
    vm = part.vm_from_template(p, agent)
    cloud = next(v for v in pod_spec(vm)["volumes"] if v["name"] == "cloudinit")
    assert cloud["cloudInitNoCloud"] == {
        "networkData": "n",
        "secretRef": {"name": "web-1-agent-key"},
    }
    assert all(v["name"] != kd.CLOUD_INIT_VOLUME for v in pod_spec(vm)["volumes"])

    doc = yaml.safe_load(decode(part.secret_data(p, agent, CREDENTIALS, URL), "userdata"))
    assert doc["packages"] == ["python3"]
    paths = [f["path"] for f in doc["write_files"]]
    assert paths == ["/etc/motd", kd.KEY_PATH, *TLS_PATHS, kd.CONFIG_PATH]


def test_cloud_init_base64_user_data_is_read_too() -> None:
    own = base64.b64encode(b"#cloud-config\nhostname: h\n").decode()
    spec = template([{"name": "ci", "cloudInitConfigDrive": {"userDataBase64": own}}])["spec"]
    assert kd.template_user_data(spec) == "#cloud-config\nhostname: h\n"
    out = kd.with_key_delivery(spec, kd.CLOUD_INIT, "s")
    assert out["template"]["spec"]["volumes"][0]["cloudInitConfigDrive"] == {
        "secretRef": {"name": "s"}
    }


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ({"userData": "#!/bin/sh\necho hi\n"}, "#cloud-config"),
        ({"secretRef": {"name": "mine"}}, "secretRef"),
        ({"userData": "#cloud-config\n[1, 2]\n"}, "mapping"),
        ({"userData": "#cloud-config\nwrite_files: 3\n"}, "list"),
        ({"userData": "#cloud-config\n: : :\n  - ]"}, "YAML"),
    ],
)
def test_cloud_init_user_data_that_cannot_be_extended(source: dict, message: str) -> None:
    p = partition(
        {
            "vmTemplate": template([{"name": "ci", "cloudInitNoCloud": source}]),
            "agent": {"keyDelivery": "CloudInit"},
        }
    )
    with pytest.raises(kd.DeliveryError, match=message):
        part.secret_data(p, part.agent_spec("web-1", p["spec"]), CREDENTIALS, URL)


def test_secret_holds_key_tls_files_and_config_and_is_owned() -> None:
    p = partition({"vmTemplate": template(), "agent": {"port": 9000, "heartbeatTimeout": "3s"}})
    agent = part.agent_spec("web-1", p["spec"])
    data = part.secret_data(p, agent, CREDENTIALS, URL)
    assert set(data) == {"key", "config.json", *TLS_FILES}
    assert decode(data, "key") == KEY
    assert {name: decode(data, name) for name in TLS_FILES} == TLS_FILES
    assert json.loads(decode(data, "config.json")) == {
        "partition": "tenant-a/web-1",
        "listen": "0.0.0.0:9000",
        "operatorURL": URL,
        "reportIntervalSeconds": 1,
    }
    secret = part.key_secret(p, agent, data)
    assert secret["metadata"]["name"] == "web-1-agent-key"
    assert secret["metadata"]["ownerReferences"][0]["controller"] is True


def test_an_existing_secret_is_rewritten_only_if_the_partition_controls_it() -> None:
    patch = part.owned_secret_patch("uid-1", {"key": "a2V5"})
    assert patch[:2] == [
        {"op": "test", "path": "/metadata/ownerReferences/0/uid", "value": "uid-1"},
        {"op": "test", "path": "/metadata/ownerReferences/0/controller", "value": True},
    ]
    assert patch[2] == {"op": "replace", "path": "/data", "value": {"key": "a2V5"}}
    assert part.data_digest({"a": "1", "b": "2"}) == part.data_digest({"b": "2", "a": "1"})
    assert part.data_digest({"a": "1"}) != part.data_digest({"a": "2"})


# --- vmTemplate edits ---------------------------------------------------------------------------


def created_vm(p: dict) -> dict:
    """The VM as the API server holds it: KubeVirt's defaults filled in, a resourceVersion."""
    vm = part.vm_from_template(p, part.agent_spec("web-1", p["spec"]))
    vm["metadata"]["resourceVersion"] = "7"
    pod_spec(vm)["domain"]["firmware"] = {"uuid": "5d3f-kubevirt-default"}
    vm["spec"]["runStrategy"] = "Halted"  # stopped with virtctl after creation
    return vm


def test_an_unchanged_template_needs_no_patch() -> None:
    p = partition({"vmTemplate": template()})
    assert part.template_patch(created_vm(p), p, part.agent_spec("web-1", p["spec"])) is None


def test_an_edited_template_changes_only_what_it_changed() -> None:
    p = partition({"vmTemplate": template()})
    vm = created_vm(p)
    edited = template()
    edited["metadata"]["labels"]["tier"] = "db"
    edited["spec"]["runStrategy"] = "Always"
    pod = edited["spec"]["template"]["spec"]
    pod["domain"]["memory"] = {"guest": "1Gi"}
    del edited["spec"]["template"]["metadata"]
    p["spec"]["vmTemplate"] = edited

    patch = part.template_patch(vm, p, part.agent_spec("web-1", p["spec"]))

    assert patch is not None
    assert patch["metadata"]["resourceVersion"] == "7"
    assert patch["metadata"]["labels"]["tier"] == "db"
    assert "runStrategy" not in patch["spec"], "start/stop own the run strategy"
    assert patch["spec"]["template"]["spec"] == {"domain": {"memory": {"guest": "1Gi"}}}
    # the template's own pod labels went; the partition label the operator adds stays
    assert patch["spec"]["template"]["metadata"] == {"labels": {"kubevirt.io/domain": None}}
    assert "firmware" not in json.dumps(patch), "KubeVirt's defaults are left alone"
    recorded = json.loads(patch["metadata"]["annotations"][part.LAST_APPLIED])
    assert recorded["template"]["spec"]["domain"]["memory"] == {"guest": "1Gi"}


def test_a_vm_without_a_readable_record_gets_the_whole_template() -> None:
    p = partition({"vmTemplate": template()})
    vm = created_vm(p)
    vm["metadata"]["annotations"][part.LAST_APPLIED] = "{torn"
    patch = part.template_patch(vm, p, part.agent_spec("web-1", p["spec"]))
    assert patch is not None
    assert (
        patch["spec"]["template"]
        == part.vm_from_template(p, part.agent_spec("web-1", p["spec"]))["spec"]["template"]
    )


@pytest.mark.parametrize(
    ("old", "new", "diff"),
    [
        ({"a": 1}, {"a": 1}, {}),
        ({"a": 1, "b": 2}, {"a": 1}, {"b": None}),
        ({"a": {"x": 1, "y": 2}}, {"a": {"x": 1}}, {"a": {"y": None}}),
        ({"a": [1, 2]}, {"a": [2]}, {"a": [2]}),
        ({"a": 1}, {"a": {"x": 1}}, {"a": {"x": 1}}),
        ({}, {"a": None}, {"a": None}),
    ],
)
def test_merge_diff(old: dict, new: dict, diff: dict) -> None:
    assert part.merge_diff(old, new) == diff


def test_failover_with_self_fence_gives_the_vm_its_watchdog() -> None:
    on = {"enabled": True, "bootImage": {"pvcName": "clean"}}
    p = partition({"vmTemplate": template(), "failover": on})
    vm = part.vm_from_template(p, part.agent_spec("web-1", p["spec"]))
    watchdog = pod_spec(vm)["domain"]["devices"]["watchdog"]
    assert watchdog == {"name": "lparkube-watchdog", "i6300esb": {"action": "poweroff"}}
    for spec in ({**on, "selfFence": {"enabled": False}}, {**on, "enabled": False}):
        p = partition({"vmTemplate": template(), "failover": spec})
        vm = part.vm_from_template(p, part.agent_spec("web-1", p["spec"]))
        assert "watchdog" not in pod_spec(vm)["domain"]["devices"]
