"""Pods that declare a save hook (the seed's "hypervisor processes") and the calls to them.

A pod on an affected node annotated ``lparkube.io/save-hook: http://:PORT/PATH`` gets a POST to
``http://<pod IP>:PORT/PATH`` with the save id, reason and deadline as JSON. The id also travels
in the ``X-Lparkube-Save-Id`` header, so a hook called twice for one SaveEvent (after an
operator restart) can tell.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import aiohttp

from lparkube.adapters.kube import Kube
from lparkube.domain.saving import SAVE_HOOK_ANNOTATION

SAVE_ID_HEADER = "X-Lparkube-Save-Id"


async def hook_pods(kube: Kube, nodes: Iterable[str], namespace: str | None) -> list[dict]:
    """Pods with the save-hook annotation on the nodes, in one namespace or all of them.

    One LIST per node (the API server filters by node), all at once, read as plain JSON: the
    typed client's models would cost the fan-out's event loop more than the calls."""

    async def on(node: str) -> list[dict]:
        selector = f"spec.nodeName={node}"
        if namespace is None:
            call = (kube.core.list_pod_for_all_namespaces,)
        else:
            call = (kube.core.list_namespaced_pod, namespace)
        response = await kube.call(*call, field_selector=selector, _preload_content=False)
        return json.loads(response.data).get("items") or []

    found: dict[tuple[str, str], dict] = {}
    for pods in await asyncio.gather(*(on(node) for node in sorted(set(nodes)))):
        for pod in pods:
            meta = pod.get("metadata") or {}
            if SAVE_HOOK_ANNOTATION in (meta.get("annotations") or {}):
                found[(meta.get("namespace", ""), meta.get("name", ""))] = pod
    return [found[key] for key in sorted(found)]


@dataclass(frozen=True)
class HookResult:
    outcome: str  # Saved, Failed, TimedOut
    millis: int
    message: str = ""


async def call_hook(
    session: aiohttp.ClientSession,
    url: str,
    body: dict[str, Any],
    timeout: float,
) -> HookResult:
    """POST the save request to one hook; 2xx is Saved."""
    started = time.monotonic()

    def took() -> int:
        return int((time.monotonic() - started) * 1000)

    try:
        async with asyncio.timeout(timeout):
            async with session.post(url, json=body, headers={SAVE_ID_HEADER: body["id"]}) as reply:
                text = (await reply.text())[:200]
                if 200 <= reply.status < 300:
                    return HookResult("Saved", took(), text.strip())
                return HookResult("Failed", took(), f"HTTP {reply.status}: {text.strip()}")
    except TimeoutError:
        return HookResult("TimedOut", took(), f"no answer within {timeout:g}s")
    except aiohttp.ClientError as error:
        return HookResult("Failed", took(), f"{type(error).__name__}: {error}")
