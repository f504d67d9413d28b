"""/healthz always answers; /readyz only for a ready leader."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request

from lparkube.config import Address
from lparkube.health import Readiness, health_app, serve


def get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_ready_only_as_leader_with_kopf_started_and_not_stopping() -> None:
    async def check() -> None:
        readiness = Readiness()
        assert not readiness.ready
        readiness.leader = True
        assert not readiness.ready
        readiness.kopf_ready.set()
        assert readiness.ready
        readiness.stopping.set()
        assert not readiness.ready

    asyncio.run(check())


def test_probe_endpoints() -> None:
    async def probe() -> list[tuple[int, dict]]:
        readiness = Readiness(holder="other")
        runner = await serve(health_app(readiness), Address("127.0.0.1", 0), "probes")
        host, port = runner.addresses[0][:2]
        base = f"http://{host}:{port}"
        try:
            results = [
                await asyncio.to_thread(get, f"{base}/healthz"),
                await asyncio.to_thread(get, f"{base}/readyz"),
            ]
            readiness.leader, readiness.holder = True, "me"
            readiness.kopf_ready.set()
            results.append(await asyncio.to_thread(get, f"{base}/readyz"))
            return results
        finally:
            await runner.cleanup()

    alive, standby, ready = asyncio.run(probe())
    assert alive == (200, {"alive": True})
    assert standby[0] == 503
    assert standby[1]["holder"] == "other" and not standby[1]["leader"]
    assert ready[0] == 200 and ready[1]["ready"]
