"""A coalescing status writer for one object with a large status list.

A SaveEvent over 1,000 partitions changes its status thousands of times in seconds; one
patch per change would queue behind itself at the API server. The writer keeps the whole
status in memory, remembers what changed, and sends at most one patch per interval: a JSON
patch that replaces only the changed list items and fields (the first write, and any write
after the stored status disagrees with ours, is a merge patch of the whole status).
``barrier()`` writes at once and returns only when everything set before it is stored, for
writes that must land before an action (an outcome Instructed before the save is sent).
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Callable
from typing import Any

from kubernetes.client.exceptions import ApiException

from lparkube.adapters.kube import Kube, ResourceRef

JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
UNPROCESSABLE = 422

logger = logging.getLogger(__name__)

Derive = Callable[[dict[str, Any]], dict[str, Any]]


class StatusWriter:
    """Holds ``status`` and writes what changed, coalesced to one patch per ``interval``."""

    def __init__(
        self,
        kube: Kube,
        ref: ResourceRef,
        namespace: str,
        name: str,
        *,
        interval: float = 0.5,
        list_field: str = "partitions",
        derive: Derive | None = None,
        on_write: Callable[[], None] | None = None,
    ) -> None:
        self.kube, self.ref, self.namespace, self.name = kube, ref, namespace, name
        self.interval = interval
        self.list_field = list_field
        self.status: dict[str, Any] = {}
        self.derive = derive  # computes fields (summary, conditions) at each write
        self._on_write = on_write
        self._dirty_fields: set[str] = set()
        self._dirty_items: set[int] = set()
        self._whole = True  # next write replaces the whole status
        self._changed = asyncio.Event()
        self._lock = asyncio.Lock()
        self._generation = 0  # bumps on every change; a write stores up to the one it saw
        self._stored = 0
        self._last_write = 0.0

    # --- changes ------------------------------------------------------------------------------

    def load(self, status: dict[str, Any], *, stored: bool) -> None:
        """Start from a status; ``stored`` says whether the API server already has it."""
        self.status = copy.deepcopy(status)
        self._whole = not stored
        self._touch()

    def set(self, field: str, value: Any) -> None:
        self.status[field] = value
        self._dirty_fields.add(field)
        self._touch()

    def item(self, index: int) -> dict[str, Any]:
        return self.status[self.list_field][index]

    def set_item(self, index: int, value: dict[str, Any]) -> None:
        self.status[self.list_field][index] = value
        self._dirty_items.add(index)
        self._touch()

    def _touch(self) -> None:
        self._generation += 1
        self._changed.set()

    # --- writing ------------------------------------------------------------------------------

    async def barrier(self) -> None:
        """Write now; return once every change made before the call is stored."""
        wanted = self._generation
        while self._stored < wanted:
            await self._write()

    async def run(self) -> None:
        """Write changes as they come, at most once per interval, until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            await self._changed.wait()
            pause = self._last_write + self.interval - loop.time()
            if pause > 0:
                await asyncio.sleep(pause)
            try:
                await self._write()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # keep going: the next write carries the changes
                logger.warning("status write of %s/%s failed: %s", self.namespace, self.name, error)
                await asyncio.sleep(self.interval)

    async def _write(self) -> None:
        async with self._lock:
            if self._stored >= self._generation:
                self._changed.clear()
                return
            seen = self._generation
            if self.derive is not None:
                derived = self.derive(self.status)
                self.status.update(derived)
                self._dirty_fields.update(derived)
            whole, fields, items = self._whole, self._dirty_fields, self._dirty_items
            self._whole, self._dirty_fields, self._dirty_items = False, set(), set()
            self._changed.clear()
            try:
                await self._send(whole, fields, items)
            except BaseException:
                self._whole = self._whole or whole
                self._dirty_fields |= fields
                self._dirty_items |= items
                self._changed.set()
                raise
            self._stored = max(self._stored, seen)
            self._last_write = asyncio.get_running_loop().time()
            if self._generation > seen:
                self._changed.set()
            if self._on_write is not None:
                self._on_write()

    async def _send(self, whole: bool, fields: set[str], items: set[int]) -> None:
        if whole:
            await self._merge({"status": copy.deepcopy(self.status)})
            return
        ops = [
            {"op": "add", "path": f"/status/{f}", "value": copy.deepcopy(self.status.get(f))}
            for f in sorted(fields)
        ]
        ops += [
            {
                "op": "replace",
                "path": f"/status/{self.list_field}/{i}",
                "value": copy.deepcopy(self.status[self.list_field][i]),
            }
            for i in sorted(items)
        ]
        if not ops:
            return
        try:
            await self._json_patch(ops)
        except ApiException as error:
            if error.status != UNPROCESSABLE:
                raise
            logger.info("stored status of %s/%s diverged; rewriting it", self.namespace, self.name)
            await self._merge({"status": copy.deepcopy(self.status)})

    async def _merge(self, body: dict[str, Any]) -> None:
        await self.kube.patch(self.ref, self.namespace, self.name, body, status=True)

    async def _json_patch(self, ops: list[dict[str, Any]]) -> None:
        custom = self.kube.custom
        await self.kube.call(
            custom.patch_namespaced_custom_object_status,
            self.ref.group,
            self.ref.version,
            self.namespace,
            self.ref.plural,
            self.name,
            ops,
            _content_type=JSON_PATCH,
        )
