"""The e2e guest: a Partition whose cloud-init installs the guest agent and a demo app.

Cloud-init (which is Python, so every cloud image has python3) writes the agent zipapp and its
systemd unit, a "notes" app that registers a save command with the agent, and a small HTTP
server that lets the test read the saved file from outside the guest. With
``keyDelivery: CloudInit`` the operator adds the key and config.json to this same cloud-config
and moves it into the key Secret.
"""

from __future__ import annotations

import base64
import tempfile
from pathlib import Path
from typing import Any

import yaml

from lparkube_agent.build import build
from lparkube_devenv.controlplane import REPO_ROOT

GUEST_IMAGE = "quay.io/containerdisks/fedora:42"  # Fedora Cloud: cloud-init, systemd, python3
AGENT_UNIT = REPO_ROOT / "guest-agent" / "lparkube-agent.service"
APP_NAME = "notes"
SAVED_DIR = "/var/lib/e2e-notes"
SAVED_FILE = "saved.txt"
HTTP_PORT = 8000
AGENT_PORT = 8443

# A long-running app with unsaved work: it registers its save command, then waits.
NOTES_APP = f"""#!/bin/sh
# Retries until the agent's socket is up (the units start in parallel).
until /usr/local/bin/lparkube-agent register --name {APP_NAME} --priority 10 \\
    --method Command --command /usr/local/bin/e2e-notes-save --pid $$; do
  sleep 2
done
exec sleep infinity
"""

# The save command: appends the save id and reason, and says so (the agent reports the output).
NOTES_SAVE = f"""#!/bin/sh
set -eu
mkdir -p {SAVED_DIR}
printf '%s %s\\n' "$LPARKUBE_SAVE_ID" "$LPARKUBE_SAVE_REASON" >> {SAVED_DIR}/{SAVED_FILE}
echo "notes saved for $LPARKUBE_SAVE_ID"
"""

NOTES_UNIT = """[Unit]
Description=e2e notes app (registers a save command with the lparkube agent)
After=lparkube-agent.service
Wants=lparkube-agent.service

[Service]
ExecStart=/usr/local/bin/e2e-notes
Restart=on-failure

[Install]
WantedBy=multi-user.target
"""

HTTP_UNIT = f"""[Unit]
Description=e2e: serve {SAVED_DIR} read-only so the test can read what the app saved

[Service]
ExecStartPre=/usr/bin/mkdir -p {SAVED_DIR}
ExecStart=/usr/bin/python3 -m http.server {HTTP_PORT} --directory {SAVED_DIR}

[Install]
WantedBy=multi-user.target
"""


def agent_zipapp() -> bytes:
    """The guest agent as one executable file, built from this checkout."""
    with tempfile.TemporaryDirectory() as tmp:
        return build(Path(tmp) / "lparkube-agent").read_bytes()


def cloud_config() -> str:
    """The template's #cloud-config: files, then systemd starts the three units."""
    files = [
        {
            "path": "/usr/local/bin/lparkube-agent",
            "encoding": "b64",
            "content": base64.b64encode(agent_zipapp()).decode(),
            "permissions": "0755",
        },
        {"path": "/etc/systemd/system/lparkube-agent.service", "content": AGENT_UNIT.read_text()},
        {"path": "/usr/local/bin/e2e-notes", "content": NOTES_APP, "permissions": "0755"},
        {"path": "/usr/local/bin/e2e-notes-save", "content": NOTES_SAVE, "permissions": "0755"},
        {"path": "/etc/systemd/system/e2e-notes.service", "content": NOTES_UNIT},
        {"path": "/etc/systemd/system/e2e-notes-http.service", "content": HTTP_UNIT},
    ]
    units = ["lparkube-agent.service", "e2e-notes.service", "e2e-notes-http.service"]
    document = {
        "write_files": files,
        "runcmd": [
            ["systemctl", "daemon-reload"],
            ["systemctl", "enable", "--now", "--no-block", *units],
        ],
    }
    return "#cloud-config\n" + yaml.safe_dump(document, sort_keys=False)


def partition_manifest(name: str, labels: dict[str, str]) -> dict[str, Any]:
    """A Partition that creates its VM from the Fedora containerdisk, key via cloud-init."""
    return {
        "apiVersion": "lparkube.io/v1alpha1",
        "kind": "Partition",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "vmTemplate": {
                "metadata": {"labels": labels},
                "spec": {
                    "runStrategy": "Always",
                    "template": {
                        "spec": {
                            "domain": {
                                "cpu": {"cores": 1},
                                "memory": {"guest": "1Gi"},
                                "devices": {
                                    "disks": [
                                        {"name": "rootdisk", "disk": {"bus": "virtio"}},
                                        {"name": "cloudinit", "disk": {"bus": "virtio"}},
                                    ],
                                    "interfaces": [{"name": "default", "masquerade": {}}],
                                },
                            },
                            "networks": [{"name": "default", "pod": {}}],
                            "volumes": [
                                {"name": "rootdisk", "containerDisk": {"image": GUEST_IMAGE}},
                                {
                                    "name": "cloudinit",
                                    "cloudInitNoCloud": {"userData": cloud_config()},
                                },
                            ],
                        }
                    },
                },
            },
            "agent": {"port": AGENT_PORT, "keyDelivery": "CloudInit", "heartbeatTimeout": "90s"},
        },
    }
