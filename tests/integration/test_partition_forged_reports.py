"""The operator's agent gateway, attacked over HTTP: nothing that is not validly signed and
fresh changes a Partition; a valid report does."""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from kubernetes import client
from partition_helpers import Partitions, partition_manifest, wait_for

from lparkube_agent import protocol, tls
from lparkube_devenv.controlplane import free_port
from lparkube_devenv.kubevirt import StandIn

if TYPE_CHECKING:
    from conftest import OperatorProcess

REPORT = {"agentVersion": "9.9.9", "kernelRelease": "forged", "applications": [{"name": "x"}]}


@pytest.fixture
def parts(api_client: client.ApiClient, kubevirt: StandIn, namespace: str) -> Partitions:
    return Partitions(api_client, kubevirt, namespace)


class Gateway:
    """Sends reports to the operator's gateway the way an agent does, or not."""

    def __init__(self, url: str, partition: str, key: bytes, context: ssl.SSLContext) -> None:
        self.url = f"{url}/v1/reports"
        self.partition = partition
        self.key = key
        self.context = context  # TLS as the partition's agent (its delivered certificate)

    def headers(self, body: bytes, **overrides: object) -> tuple[protocol.Signed, dict]:
        key = overrides.pop("key", self.key)
        partition = str(overrides.pop("partition", self.partition))
        message = protocol.Message(protocol.TO_OPERATOR, "POST", "/v1/reports", partition, body)
        signed = protocol.sign(key, message, **overrides)  # type: ignore[arg-type]
        return signed, signed.headers()

    def post(self, body: bytes, headers: dict) -> tuple[int, bytes, dict]:
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=10, context=self.context) as response:
                return response.status, response.read(), dict(response.headers)
        except urllib.error.HTTPError as error:
            return error.code, error.read(), dict(error.headers)

    def refused(self, body: bytes, headers: dict) -> tuple[int, str]:
        status, data, _ = self.post(body, headers)
        return status, json.loads(data)["error"]


def heartbeat_fields(parts: Partitions, name: str) -> dict:
    agent = parts.status(name).get("agent") or {}
    return {k: v for k, v in agent.items() if k not in ("endpoint", "keySecretName")}


def agent_context(parts: Partitions, directory: Path) -> ssl.SSLContext:
    """The TLS client side of the Partition's agent, from the files its Secret delivers."""
    for name in ("ca.crt", "tls.crt", "tls.key"):
        (directory / name).write_bytes(parts.secret_file("target-agent-key", name))
    return tls.client_context(
        tls.TLSFiles(directory / "ca.crt", directory / "tls.crt", directory / "tls.key")
    )


def test_forged_reports_change_nothing(
    parts: Partitions, operator: OperatorProcess, tmp_path: Path
) -> None:
    parts.create(partition_manifest("target", "127.0.0.41", free_port()))
    parts.wait_condition("target", "VMReady", "True")
    key = parts.secret_file("target-agent-key", "key")
    gateway = Gateway(
        operator.gateway_url, f"{parts.namespace}/target", key, agent_context(parts, tmp_path)
    )
    body = json.dumps(REPORT).encode()

    _, good = gateway.headers(body)
    unsigned = {k: v for k, v in good.items() if k != protocol.HEADER_SIGNATURE}
    big = b"{" + b" " * protocol.MAX_BODY_BYTES + b"}"
    attempts = [
        ((body, {}), (401, "unsigned")),
        ((body, unsigned), (401, "unsigned")),
        ((body, gateway.headers(body, key=b"w" * 32)[1]), (401, "bad-signature")),
        ((body.replace(b"forged", b"FORGED"), good), (401, "bad-signature")),
        ((body, gateway.headers(body, now=time.time() - 600)[1]), (401, "stale")),
        ((big, gateway.headers(big)[1]), (413, "oversized")),
        (
            (body, gateway.headers(body, partition=f"{parts.namespace}/ghost")[1]),
            (401, "wrong-partition"),
        ),
        ((body, {**good, protocol.HEADER_NONCE: "nope"}), (400, "malformed")),
        ((b"[1, 2]", gateway.headers(b"[1, 2]")[1]), (400, "malformed")),
        ((b"{oops", gateway.headers(b"{oops")[1]), (400, "malformed")),
    ]
    for (data, headers), expected in attempts:
        assert gateway.refused(data, headers) == expected
    assert heartbeat_fields(parts, "target") == {}
    assert parts.condition("target", "AgentConnected")["reason"] == "NoHeartbeat"

    # The same report, validly signed, is accepted, answered signed, and shows in status.
    signed, headers = gateway.headers(body)
    status, data, response_headers = gateway.post(body, headers)
    assert status == 204
    protocol.verify_response(key, signed, 204, response_headers, data)
    connected = parts.wait_condition("target", "AgentConnected", "True")
    assert connected["agent"]["kernelRelease"] == "forged"
    assert connected["agent"]["applications"] == 1

    # Replaying it, even with a newer body under the old signature, is refused.
    before = heartbeat_fields(parts, "target")
    assert gateway.refused(body, headers) == (401, "replayed")
    newer = json.dumps({**REPORT, "kernelRelease": "replayed"}).encode()
    assert gateway.refused(newer, headers) == (401, "bad-signature")
    assert heartbeat_fields(parts, "target") == before

    with urllib.request.urlopen(operator.metrics_url, timeout=5) as response:
        scraped = response.read().decode()
    for result in ("accepted", "unsigned", "bad-signature", "stale", "replayed", "oversized"):
        assert f'lparkube_agent_reports_total{{result="{result}"}}' in scraped

    # With no further heartbeat the agent counts as lost after the 3s timeout.
    parts.wait_condition("target", "AgentConnected", "False", timeout=15)
    wait_for(lambda: "AgentLost" in parts.reasons("target"), "the AgentLost event")
