"""Liveness and readiness endpoints, served by this process even while it is a standby.

kopf's own liveness endpoint only runs while kopf runs, but a standby replica must still
answer probes (alive, not ready), so lparkube serves ``/healthz`` and ``/readyz`` itself.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from aiohttp import web

from lparkube.config import Address

logger = logging.getLogger(__name__)


@dataclass
class Readiness:
    """What /readyz reports: ready only as the leader with kopf started and not stopping."""

    leader: bool = False
    holder: str | None = None
    kopf_ready: asyncio.Event = field(default_factory=asyncio.Event)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def ready(self) -> bool:
        return self.leader and self.kopf_ready.is_set() and not self.stopping.is_set()

    def report(self) -> dict[str, object]:
        return {
            "ready": self.ready,
            "leader": self.leader,
            "holder": self.holder,
            "kopfReady": self.kopf_ready.is_set(),
            "stopping": self.stopping.is_set(),
        }


def health_app(readiness: Readiness) -> web.Application:
    """/healthz answers from the event loop, which is the liveness signal; /readyz gates traffic."""

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"alive": True})

    async def readyz(_: web.Request) -> web.Response:
        status = 200 if readiness.ready else 503
        return web.json_response(readiness.report(), status=status)

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


async def serve(app: web.Application, address: Address, name: str) -> web.AppRunner:
    """Start ``app`` on ``address`` in the running loop; the caller owns ``cleanup()``."""
    # Short keep-alive: idle probe connections must not delay shutdown.
    runner = web.AppRunner(
        app, handle_signals=False, shutdown_timeout=1.0, access_log=None, keepalive_timeout=1.0
    )
    await runner.setup()
    site = web.TCPSite(runner, address.host or None, address.port)
    await site.start()
    logger.info("Serving %s on %s", name, address)
    return runner
