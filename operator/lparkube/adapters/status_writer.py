"""A coalescing status writer for one object with a large status list.

A SaveEvent over 1,000 partitions changes its status thousands of times in seconds; one
patch per change would queue behind itself at the API server. The writer keeps the whole
status in memory, remembers what changed, and sends one patch per burst of changes (at most
every ``max_delay`` while they keep coming, never twice within ``interval``): a JSON patch
replacing only the changed list items and fields, or a merge patch of the whole status when
most of it changed, for the first write, and when the stored status disagrees with ours.
``barrier()`` writes at once and returns only when everything set before it is stored, for
writes that must land before an action (an outcome Instructed before the save is sent).
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
from collections.abc import Callable
from typing import Any

from kubernetes.client.exceptions import ApiException

from lparkube.adapters.kube import Kube, ResourceRef

JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
UNPROCESSABLE = 422
SPACING_FACTOR = 4

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
        quiet: float = 0.25,
        max_delay: float = 2.0,
        list_field: str = "partitions",
        derive: Derive | None = None,
        on_write: Callable[[], None] | None = None,
    ) -> None:
        self.kube, self.ref, self.namespace, self.name = kube, ref, namespace, name
        self.interval, self.quiet, self.max_delay = interval, quiet, max_delay
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
        self._last_cost = 0.0
        self._last_change = 0.0

    # --- changes ------------------------------------------------------------------------------

    def load(self, status: dict[str, Any], *, stored: bool) -> None:
        """Start from a status; ``stored`` says whether the API server already has it."""
        self.status = copy.deepcopy(status)
        self._whole = not stored
        self._touch()

    @property
    def stored(self) -> bool:
        """Whether everything set so far is on the API server."""
        return self._stored >= self._generation

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
        self._last_change = asyncio.get_running_loop().time()
        self._changed.set()

    # --- writing ------------------------------------------------------------------------------

    async def barrier(self) -> None:
        """Write now; return once every change made before the call is stored."""
        wanted = self._generation
        while self._stored < wanted:
            await self._write()

    async def run(self) -> None:
        """Write changes as they come until cancelled: once they pause for ``quiet`` seconds
        (a burst of results becomes one write), and at least every ``max_delay`` seconds
        while they keep coming; never sooner than ``interval`` after the previous write."""
        loop = asyncio.get_running_loop()
        while True:
            await self._changed.wait()
            first = loop.time()
            while True:
                now = loop.time()
                # A big status costs the API server time per write; a progress write just
                # before the last result would delay the final one by that much.
                latest = first + max(self.max_delay, SPACING_FACTOR * self._last_cost)
                due = max(
                    min(self._last_change + self.quiet, latest), self._last_write + self.interval
                )
                if now >= due:
                    break
                await asyncio.sleep(due - now)
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
            began = asyncio.get_running_loop().time()
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
            self._last_cost = self._last_write - began
            if self._generation > seen:
                self._changed.set()
            if self._on_write is not None:
                self._on_write()

    async def _send(self, whole: bool, fields: set[str], items: set[int]) -> None:
        """One patch; its body is encoded here, a snapshot later changes cannot touch."""
        if whole or 2 * len(items) > len(self.status.get(self.list_field) or []):
            # Most items changed: one merge patch is cheaper for the API server than a JSON
            # patch with an operation per item.
            await self._patch({"status": self.status}, MERGE_PATCH)
            return
        ops = [
            {"op": "add", "path": f"/status/{f}", "value": self.status.get(f)}
            for f in sorted(fields)
        ]
        ops += [
            {
                "op": "replace",
                "path": f"/status/{self.list_field}/{i}",
                "value": self.status[self.list_field][i],
            }
            for i in sorted(items)
        ]
        if not ops:
            return
        try:
            await self._patch(ops, JSON_PATCH)
        except ApiException as error:
            if error.status != UNPROCESSABLE:
                raise
            logger.info("stored status of %s/%s diverged; rewriting it", self.namespace, self.name)
            await self._patch({"status": self.status}, MERGE_PATCH)

    async def _patch(self, body: Any, content_type: str) -> None:
        payload = json.dumps(body, separators=(",", ":")).encode()
        await self.kube.patch_status_encoded(
            self.ref, self.namespace, self.name, payload, content_type=content_type
        )
