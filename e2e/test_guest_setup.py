"""The e2e guest's setup works before any cluster is involved (no Docker needed).

The kind test can only run where Docker is; this one runs everywhere and proves the part that
is ours: the operator's CloudInit key delivery accepts the e2e cloud-config and adds the key,
the TLS files and config.json to it, and the files it delivers work together. The delivered
agent zipapp serves with the delivered key, TLS identity and config, the delivered notes app
registers its delivered save command, and a signed save writes the file the kind test later
reads from the guest.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e_guest import APP_NAME, SAVED_DIR, SAVED_FILE, partition_manifest

from lparkube.adapters.agent_identity import OperatorCredentials
from lparkube.domain import key_delivery
from lparkube.domain.partition import agent_spec, secret_data, vm_from_template
from lparkube_agent.testing import AgentProcess, TLSMaterial, cli

NAMESPACE, NAME = "tenant-a", "notes-1"
UID = "0f1e2d3c-0000-4000-8000-000000000001"
GATEWAY = "https://gateway.invalid:8081"
CREDENTIALS = OperatorCredentials.issue(bytes(range(32)), datetime.now(UTC))
AGENT = CREDENTIALS.identity.agent_credentials(NAMESPACE, NAME, UID)
KEY = AGENT.key
GUEST_BIN = "/usr/local/bin/"
TLS_FILES = {"ca.crt": AGENT.ca_pem, "tls.crt": AGENT.cert_pem, "tls.key": AGENT.key_pem}


@pytest.fixture(scope="module")
def partition() -> dict[str, Any]:
    manifest = partition_manifest(NAME, {"tier": "frontend"})
    manifest["metadata"].update(namespace=NAMESPACE, uid=UID)
    return manifest


@pytest.fixture(scope="module")
def delivered(partition: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """What cloud-init writes in the guest, by path, as the operator's Secret holds it."""
    agent = agent_spec(NAME, partition["spec"])
    data = secret_data(partition, agent, AGENT, GATEWAY)
    user_data = base64.b64decode(data["userdata"]).decode()
    assert user_data.startswith("#cloud-config\n")
    return {f["path"]: f for f in yaml.safe_load(user_data)["write_files"]}


def _content(entry: dict[str, Any]) -> bytes:
    if entry.get("encoding") == "b64":
        return base64.b64decode(entry["content"])
    return entry["content"].encode()


def test_the_operator_adds_key_and_config_and_keeps_the_guest_files(
    partition: dict[str, Any], delivered: dict[str, dict[str, Any]]
) -> None:
    assert _content(delivered[key_delivery.KEY_PATH]) == KEY
    for name, pem in TLS_FILES.items():
        entry = delivered[f"{key_delivery.AGENT_DIRECTORY}/{name}"]
        assert (_content(entry), entry["permissions"]) == (pem, "0600")
    config = json.loads(_content(delivered[key_delivery.CONFIG_PATH]))
    assert config["partition"] == f"{NAMESPACE}/{NAME}"
    assert (config["listen"], config["operatorURL"]) == ("0.0.0.0:8443", GATEWAY)
    for path in ("lparkube-agent", "e2e-notes", "e2e-notes-save"):
        assert delivered[GUEST_BIN + path]["permissions"] == "0755"
    assert "/etc/systemd/system/lparkube-agent.service" in delivered

    vm = vm_from_template(partition, agent_spec(NAME, partition["spec"]))
    volumes = vm["spec"]["template"]["spec"]["volumes"]
    (cloud_init,) = [v["cloudInitNoCloud"] for v in volumes if "cloudInitNoCloud" in v]
    assert cloud_init == {"secretRef": {"name": f"{NAME}-agent-key"}}, "no key in the VM spec"


@pytest.fixture
def guest(
    tmp_path: Path, delivered: dict[str, dict[str, Any]]
) -> Iterator[tuple[AgentProcess, Path]]:
    """The delivered files under tmp_path (guest paths mapped there), agent and notes app up."""
    bin_dir, saved_dir = tmp_path / "bin", tmp_path / "saved"
    bin_dir.mkdir()

    def localize(text: str) -> str:
        return text.replace(GUEST_BIN, f"{bin_dir}/").replace(SAVED_DIR, str(saved_dir))

    for name in ("lparkube-agent", "e2e-notes", "e2e-notes-save"):
        entry = delivered[GUEST_BIN + name]
        data = _content(entry) if name == "lparkube-agent" else localize(entry["content"]).encode()
        (bin_dir / name).write_bytes(data)
        (bin_dir / name).chmod(0o755)
    config = json.loads(_content(delivered[key_delivery.CONFIG_PATH]))
    config.update(listen="127.0.0.1:0", operatorURL="")  # no operator here: no reports
    (tmp_path / "agent").mkdir()
    agent = AgentProcess(
        tmp_path / "agent",
        partition=config["partition"],
        key=_content(delivered[key_delivery.KEY_PATH]),
        config=config,
        command=[str(bin_dir / "lparkube-agent")],
        tls_material=TLSMaterial(
            *(_content(delivered[f"{key_delivery.AGENT_DIRECTORY}/{n}"]) for n in TLS_FILES),
            CREDENTIALS.certificate.cert_pem,
            CREDENTIALS.certificate.key_pem,
        ),
    )
    agent.start()
    app = subprocess.Popen([str(bin_dir / "e2e-notes")], env=agent.env(), start_new_session=True)
    try:
        yield agent, saved_dir
    finally:
        os.killpg(app.pid, signal.SIGKILL)
        app.wait()
        agent.stop()


def test_the_delivered_agent_saves_the_delivered_app(guest: tuple[AgentProcess, Path]) -> None:
    agent, saved_dir = guest
    deadline = time.monotonic() + 20
    while APP_NAME not in cli(agent, "list", "--json").stdout:
        assert time.monotonic() < deadline, "the notes app never registered"
        time.sleep(0.2)

    result = agent.save("save-1")
    (app,) = result["applications"]
    assert (app["name"], app["method"], app["outcome"]) == (APP_NAME, "Command", "Saved"), app
    assert "notes saved for save-1" in app["message"]
    assert (saved_dir / SAVED_FILE).read_text() == "save-1 Manual\n"
