"""ConditionProfile controller: watch Nodes, evaluate the rules, create SaveEvents.

Nodes are held in a kopf index (one watch for all profiles). Each profile has a daemon that
evaluates its rules whenever a Node changes, when a ``for`` or cooldown ends, and when a
Prometheus query is due; firings become SaveEvents in the system namespace. The rule states
go to the profile's status before a SaveEvent is created (so the name, derived from them, is
the same after a crash) and again after (lastFiredTime), so ``for`` and cooldown survive
restarts. Only this daemon writes the profile's status, so it trusts its own copy.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import aiohttp
import kopf
from kubernetes.client.exceptions import ApiException

from lparkube import metrics
from lparkube.adapters import prometheus
from lparkube.adapters.kube import CONDITION_PROFILE, SAVE_EVENT, Kube
from lparkube.api.resource import GROUP
from lparkube.controllers.saveevent import clients, system_namespace
from lparkube.domain import triggers
from lparkube.domain.clock import parse_duration, rfc3339, utcnow
from lparkube.domain.conditions import find, merge

VERSION = "v1alpha1"
DEBOUNCE = 0.2  # coalesce bursts of Node events into one evaluation
IDLE_RECHECK = 60.0  # re-evaluate at least this often, whatever happens
CONFLICT = 409
LOG_ONLY = {"k8s_skip": True}  # kopf posts no Event for a record with this extra


@kopf.index("v1", "nodes")
def node_index(body: kopf.Body, name: str, **_: Any) -> dict[str, dict[str, Any]]:
    """Every Node by name, trimmed to what rules read (labels, annotations, taints, cordon,
    condition statuses), so the index stays small on large clusters."""
    meta, spec, status = (
        body.get("metadata") or {},
        body.get("spec") or {},
        body.get("status") or {},
    )
    return {
        name: {
            "metadata": {
                "name": name,
                "labels": dict(meta.get("labels") or {}),
                "annotations": dict(meta.get("annotations") or {}),
            },
            "spec": {
                "taints": [dict(t) for t in spec.get("taints") or []],
                "unschedulable": bool(spec.get("unschedulable")),
            },
            "status": {
                "conditions": [
                    {"type": c.get("type"), "status": c.get("status")}
                    for c in status.get("conditions") or []
                ]
            },
        }
    }


@kopf.on.event("v1", "nodes")
def node_changed(memo: Any, **_: Any) -> None:
    """Wake every profile's evaluation; the daemons debounce bursts."""
    for waker in list(memo.profile_wakers.values()):
        waker.set()


@kopf.daemon(GROUP, VERSION, "conditionprofiles", backoff=5.0, cancellation_timeout=5.0)
async def conditionprofile_evaluate(
    body: kopf.Body,
    name: str,
    memo: Any,
    node_index: kopf.Index,
    logger: logging.Logger | kopf.ObjectLogger,
    **_: Any,
) -> None:
    """Evaluate one profile for as long as it exists."""
    kube, _agents = clients(memo)
    waker = memo.profile_wakers.setdefault(name, asyncio.Event())
    try:
        async with aiohttp.ClientSession() as session:
            evaluator = ProfileEvaluator(kube, session, body, system_namespace(memo), logger)
            while True:
                wake_at = await evaluator.round(_nodes(node_index))
                await _sleep_until(waker, wake_at)
    finally:
        memo.profile_wakers.pop(name, None)


def _nodes(index: kopf.Index) -> dict[str, Mapping[str, Any]]:
    return {key: value for key, store in index.items() for value in store}


async def _sleep_until(waker: asyncio.Event, wake_at: datetime | None) -> None:
    """Until a Node changes or ``wake_at`` (never longer than IDLE_RECHECK)."""
    delay = IDLE_RECHECK
    if wake_at is not None:
        delay = min(delay, max(0.0, (wake_at - utcnow()).total_seconds()))
    try:
        await asyncio.wait_for(waker.wait(), timeout=delay)
        await asyncio.sleep(DEBOUNCE)
    except TimeoutError:
        pass
    waker.clear()


class ProfileEvaluator:
    """One profile's evaluation rounds and the status it last wrote."""

    def __init__(
        self,
        kube: Kube,
        session: aiohttp.ClientSession,
        body: kopf.Body,
        system_ns: str,
        logger: logging.Logger | kopf.ObjectLogger,
    ) -> None:
        self.kube, self.session, self.body = kube, session, body
        self.system_ns = system_ns
        self.logger = logger
        self.name = (body.get("metadata") or {}).get("name", "")
        self.status: dict[str, Any] = dict(body.get("status") or {})
        self.queries: dict[str, tuple[set[str] | None, datetime]] = {}
        self.query_errors: dict[str, str] = {}

    def profile(self) -> dict[str, Any]:
        """The live spec (kopf keeps ``body`` fresh) with the status we wrote last."""
        return {
            "metadata": dict(self.body["metadata"]),
            "spec": dict(self.body["spec"]),
            "status": self.status,
        }

    async def round(self, nodes: Mapping[str, Mapping[str, Any]]) -> datetime | None:
        """Evaluate once, persist, create due SaveEvents; returns when to look again."""
        profile = self.profile()
        query_wake = await self._refresh_queries(profile)
        now = utcnow()
        result = triggers.evaluate(profile, nodes, self._results(), self.system_ns, now)
        rules = result.rules
        await self._write(rules)  # pendingSince is stored before any SaveEvent is named by it
        for firing in result.firings:
            if await self._create(firing):
                rules = triggers.after_firing(rules, firing, self.system_ns)
                self.status["lastFiredTime"] = rfc3339(firing.at)
                self.status["lastSaveEvent"] = f"{self.system_ns}/{firing.name}"
        if result.firings:
            await self._write(rules)
        wakes = [t for t in (result.wake_at, query_wake) if t is not None]
        return min(wakes, default=None)

    async def _create(self, firing: triggers.Firing) -> bool:
        """Create the firing's SaveEvent; an existing one (a retry) counts as created."""
        try:
            await self.kube.create(SAVE_EVENT, self.system_ns, firing.body)
        except ApiException as error:
            if error.status != CONFLICT:
                self.logger.error("Cannot create SaveEvent %s: %s", firing.name, error.reason)
                return False
            return True
        metrics.TRIGGER_FIRINGS.labels(
            trigger="ConditionProfile", reason=firing.body["spec"]["reason"]
        ).inc()
        message = (
            f"rule {firing.rule} fired for {firing.node}: SaveEvent {self.system_ns}/{firing.name}"
        )
        kopf.event(self.body, type="Normal", reason="Fired", message=message)
        self.logger.info("%s", message)
        return True

    async def _write(self, rules: dict[str, dict[str, triggers.NodeState]]) -> None:
        """Patch status when the rule states or Ready changed."""
        wanted = dict(self.status)
        wanted["rules"] = triggers.dump_states(rules)
        generation = (self.body.get("metadata") or {}).get("generation", 1)
        ready = triggers.ready_condition(self.query_errors)
        stored = self.status.get("conditions")
        wanted["conditions"] = merge(stored, [ready], generation, utcnow())
        wanted["observedGeneration"] = generation
        if wanted == self.status:
            return
        await self.kube.patch(CONDITION_PROFILE, None, self.name, {"status": wanted}, status=True)
        self.status = wanted
        if notice := triggers.ready_notice(find(stored, triggers.READY), ready):
            self._tell(notice)

    def _tell(self, notice: triggers.Notice) -> None:
        """Post the notice as an Event and log it (as a log line only: kopf would post a
        logged warning as a second Event)."""
        kopf.event(self.body, type=notice.type, reason=notice.reason, message=notice.message)
        level = logging.WARNING if notice.type == "Warning" else logging.INFO
        self.logger.log(level, "%s", notice.message, extra=LOG_ONLY)

    # --- prometheus -------------------------------------------------------------------------

    def _results(self) -> dict[str, set[str] | None]:
        return {rule: nodes for rule, (nodes, _) in self.queries.items()}

    async def _refresh_queries(self, profile: Mapping[str, Any]) -> datetime | None:
        """Run the prometheus queries that are due; returns when the next one is."""
        spec = profile.get("spec") or {}
        config = spec.get("prometheus") or {}
        rules = [r for r in spec.get("rules") or [] if "prometheus" in r]
        self.queries = {r: q for r, q in self.queries.items() if r in {x["name"] for x in rules}}
        if not rules or not config.get("url"):
            self.query_errors = {}
            return None
        interval = parse_duration(config.get("interval"), "30s")
        timeout = parse_duration(config.get("timeout"), "10s").total_seconds()
        now = utcnow()
        due = [
            r
            for r in rules
            if r["name"] not in self.queries or self.queries[r["name"]][1] + interval <= now
        ]
        await asyncio.gather(*(self._query(config["url"], r, timeout, now) for r in due))
        return min(at for _, at in self.queries.values()) + interval

    async def _query(
        self, url: str, rule: Mapping[str, Any], timeout: float, now: datetime
    ) -> None:
        trigger = rule["prometheus"]
        try:
            series = await prometheus.query(self.session, url, trigger["query"], timeout)
        except prometheus.PrometheusError as error:
            self.queries[rule["name"]] = (None, now)
            self.query_errors[rule["name"]] = str(error)
            return
        nodes = triggers.prometheus_nodes(series, trigger.get("nodeLabel") or "node")
        self.queries[rule["name"]] = (nodes, now)
        self.query_errors.pop(rule["name"], None)
