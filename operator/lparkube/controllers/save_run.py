"""One SaveEvent's run: targets, the fan-out to the agents, results, deadline, completion.

The run starts from the SaveEvent's status, so the same code serves a first run and a resume
after a restart: a resumed run re-sends the same instruction (same id) only to partitions
without a final outcome, and the agent, idempotent by id and journaled across its own restarts,
attaches instead of saving again. A crash before the first status write leaves no list, so the
next run is a first run again, with the same id.

Instructions go first (``instructions_first``): until every target's agent has answered its
instruction, or ``HOLD_SECONDS`` passed, results are held and no status is written.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any

import aiohttp
import kopf
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from lparkube import metrics
from lparkube.adapters import net_errors
from lparkube.adapters.guest_agent import AgentClient, AgentError, AgentTarget
from lparkube.adapters.kube import PARTITION, SAVE_EVENT, Kube
from lparkube.adapters.status_writer import StatusWriter
from lparkube.controllers.instructions_first import InstructionsFirst
from lparkube.controllers.save_extras import PodHooks, Snapshots, deadline_request
from lparkube.domain import saving
from lparkube.domain.clock import rfc3339, utcnow
from lparkube.domain.conditions import merge

MAX_CONCURRENT_INSTRUCTIONS = 128  # first requests in flight; more contend for no gain
FIRST_WAIT_SECONDS = 0.25  # a save done by then is answered at once; else a 202 frees the slot
MAX_PER_PARTITION_EVENTS = 20  # above this many targets, Events are summaries only
AGENT_WAIT_SECONDS = 3  # an agent answers at least this often, with the apps saved so far
RETRY_PAUSES = (0.5, 1.0, 2.0, 5.0)
HOLD_SECONDS = 2.0  # results and status wait at most this long for the instructions to go out


class SaveRun:
    """One SaveEvent's run: targets, fan-out, per-partition loops, deadline, completion."""

    def __init__(
        self,
        kube: Kube,
        agents: AgentClient,
        body: dict[str, Any],
        system_ns: str,
        logger: logging.Logger | kopf.ObjectLogger,
    ) -> None:
        self.kube, self.agents, self.body, self.system_ns = kube, agents, body, system_ns
        self.logger = logger
        self.meta = body.get("metadata") or {}
        self.spec = body.get("spec") or {}
        self.stored = dict(body.get("status") or {})
        self.namespace = self.meta.get("namespace", "")
        self.name = self.meta.get("name", "")
        self.uid = self.meta.get("uid", "")
        self.reason = self.spec.get("reason", "Other")
        self.created = saving.parse_time(self.meta.get("creationTimestamp")) or utcnow()
        self.deadline = saving.deadline_of(self.meta, self.spec)
        self.writer = StatusWriter(
            kube,
            SAVE_EVENT,
            self.namespace,
            self.name,
            derive=self._derive,
            on_write=metrics.SAVE_STATUS_WRITES.inc,
        )
        self.index: dict[tuple[str, str], int] = {}
        # why a partition's last attempt failed while it is retried, for its deadline message
        self.last_error: dict[tuple[str, str], str] = {}
        self.few = True
        # labelled once: a thousand results must not each look their series up
        self.fanout_latency = metrics.SAVE_FANOUT_LATENCY.labels(reason=self.reason)
        self.save_duration = metrics.SAVE_DURATION.labels(reason=self.reason)
        self.instructing = InstructionsFirst(MAX_CONCURRENT_INSTRUCTIONS)
        self.budget = saving.entry_budget(1)
        # Partitions from a cache (the controller's index), by namespace or all (None);
        # without one, the run lists them.
        self.cached: Callable[[str | None], list[dict[str, Any]]] | None = None
        self.pods = PodHooks(kube, self.writer, body, system_ns)
        self.snapshots = Snapshots(kube, self.writer, body)

    # --- top level --------------------------------------------------------------------------

    async def execute(self) -> None:
        refused = saving.refusal(self.namespace, self.system_ns, self.spec.get("targets") or {})
        if refused is not None:
            await self._refuse(refused)
            return
        targets = await self._start()
        if targets is None:
            return
        self.instructing.start(targets)  # before the writer, which waits for it
        writing = asyncio.create_task(self._write_status(), name=f"status of {self.name}")
        try:
            await self._save_all(targets)
            await self._complete()
        finally:
            writing.cancel()

    async def _write_status(self) -> None:
        """Write status as it changes, once the instructions are out."""
        await self.instructing.release(HOLD_SECONDS)
        await self.writer.run()

    async def _refuse(self, message: str) -> None:
        now, generation = utcnow(), self.meta.get("generation", 1)
        status = {
            "conditions": merge(
                self.stored.get("conditions"), saving.refused_conditions(message), generation, now
            ),
            "completionTime": rfc3339(now),
            "observedGeneration": generation,
        }
        write = self.kube.patch(
            SAVE_EVENT, self.namespace, self.name, {"status": status}, status=True
        )

        def announce() -> None:
            kopf.event(self.body, type="Warning", reason=saving.REFUSED, message=message)
            metrics.SAVE_EVENTS.labels(reason=self.reason, result=saving.REFUSED).inc()

        await _finally_then(write, announce)

    async def _start(self) -> dict[tuple[str, str], saving.Target] | None:
        """Write the target list (first run) or load it (resume); return whom to send to,
        or None when the event was refused."""
        now = utcnow()
        found = await self._targets()
        by_key = {t.key: t for t in found}
        if "partitions" not in self.stored:
            missing = saving.missing_names(self.spec["targets"], found, self.namespace)
            if too_many := saving.too_many_targets(len(found) + len(missing)):
                await self._refuse(too_many)
                return None
            items = saving.initial_entries(found, missing, self.namespace, now)
            status = {
                "startTime": rfc3339(now),
                "deadlineTime": rfc3339(self.deadline),
                "partitions": items,
            }
            self.writer.load(status, stored=False)  # written as the instructions go out
            self._index(items)
            self._announce(items)
        else:
            self.writer.load(self.stored, stored=True)
            items = self.writer.status["partitions"]
            self._index(items)
            plan = saving.resume_plan(items)
            for key in plan.pending:
                self._set(key, saving.mark_instructed(self._item(key), now))
            await self.writer.barrier()
            self.logger.info(
                "Resuming: %d partitions to re-attach, %d finished",
                len(plan.attach) + len(plan.pending),
                len(plan.finished),
            )
        unfinished = {saving.entry_key(i) for i in items if not saving.is_final(i)}
        for key in unfinished - set(by_key):
            self._finish(key, saving.FAILED, "the Partition no longer exists", now)
        return {key: by_key[key] for key in sorted(unfinished & set(by_key))}

    async def _targets(self) -> list[saving.Target]:
        """The targeted partitions, from the cache when there is one. A partition named in
        the targets but not cached yet (created a moment ago) is read before it is missing."""
        scope = saving.list_scope(self.namespace, self.system_ns, self.spec["targets"])
        if self.cached is None:
            return saving.select(self.spec["targets"], await self.kube.list(PARTITION, scope))
        found = saving.select(self.spec["targets"], self.cached(scope))
        for name in saving.missing_names(self.spec["targets"], found, self.namespace):
            if partition := await self.kube.get(PARTITION, self.namespace, name):
                found.append(saving.target_of(partition))
        return sorted(found, key=lambda t: t.key)

    def _targets_text(self) -> str:
        targets = self.spec["targets"]
        scope = saving.list_scope(self.namespace, self.system_ns, targets)
        return saving.describe_targets(targets, scope)

    def _index(self, items: list[dict[str, Any]]) -> None:
        self.index = {saving.entry_key(item): i for i, item in enumerate(items)}
        self.few = len(items) <= MAX_PER_PARTITION_EVENTS
        self.budget = saving.entry_budget(len(items))

    def _announce(self, items: list[dict[str, Any]]) -> None:
        if not items:
            message = saving.no_match_message(self._targets_text())
            kopf.event(self.body, type="Warning", reason=saving.NO_TARGETS, message=message)
            return
        counts = saving.summary(items)
        message = (
            f"{self.reason}: instructing {counts['pending']} of {counts['partitions']} partitions"
        )
        if counts["failed"]:
            message += f"; {counts['failed']} unreachable or missing"
        kopf.event(self.body, type="Normal", reason="Instructed", message=message)
        for item in items:
            if saving.is_final(item):
                self._record_final(item)

    # --- fan-out ------------------------------------------------------------------------------

    async def _save_all(self, targets: dict[tuple[str, str], saving.Target]) -> None:
        instructing = self.instructing.launch(
            targets, lambda key: self._save_partition(targets[key])
        )
        work = [asyncio.create_task(instructing, name="instructing")]
        saved_before = [
            key
            for key in self.index
            if key not in targets and self._item(key).get("outcome") == saving.SUCCEEDED
        ]
        work += self.snapshots.on_resume(saved_before, self._current)
        if self.spec.get("podSaveHooks", True):
            request = deadline_request(self.uid, self.reason, self.deadline)
            work.append(asyncio.create_task(self.pods.call_all(request), name="pod save hooks"))
        remaining = (self.deadline - utcnow()).total_seconds()
        _, late = await asyncio.wait(work, timeout=max(0.0, remaining))
        for task in [*late, *self.instructing.tasks]:
            task.cancel()
        await asyncio.gather(*work, *self.instructing.tasks, return_exceptions=True)
        self.instructing.flush()
        await self._deadline_passed(targets)

    async def _deadline_passed(self, targets: dict[tuple[str, str], saving.Target]) -> None:
        """Unfinished partitions at the deadline: TimedOut if their agent is still connected,
        Unreachable if not."""
        late = [k for k, i in self.index.items() if not saving.is_final(self._item(k))]
        if not late:
            return
        now = utcnow()
        for key in late:
            target = targets.get(key)
            current = await self._current(target) if target else None
            reached = current is not None and saving.unreachable_reason(current) is None
            last_error = self.last_error.get(key, "")
            item = self._set(key, saving.at_deadline(self._item(key), reached, now, last_error))
            self._record_final(item)

    async def _save_partition(self, target: saving.Target) -> None:
        """Save one partition. API server and network hiccups are retried until the deadline
        cancels the task, rather than failing a partition that may still save; any other
        error is a defect, and fails the partition at once with what it was."""
        while True:
            try:
                await self._save_partition_once(target)
                return
            except (ApiException, HTTPError, OSError, aiohttp.ClientError) as error:
                self.logger.exception("Saving %s failed; retrying", target.ref)
                self.last_error[target.key] = _retry_cause(error)
            except Exception as error:
                self.logger.exception("Saving %s failed", target.ref)
                message = f"internal error: {type(error).__name__}: {error}"
                self._finish(target.key, saving.FAILED, message, utcnow())
                return
            finally:  # however it went, its slot and the held status are free for the others
                self.instructing.answered(target.key)
            await asyncio.sleep(RETRY_PAUSES[-1])

    async def _save_partition_once(self, target: saving.Target) -> None:
        key = target.key
        if saving.is_final(self._item(key)):
            return
        if not target.endpoint and self.cached is not None:
            target = await self._current(target) or target  # the cache may lag its status
        if not target.endpoint:  # AgentConnected is not consulted here: a resumed partition
            # was instructed already, and its heartbeat may have lapsed while we were down.
            reason = saving.unreachable_reason(target) or "no agent endpoint"
            self._finish(key, saving.UNREACHABLE, reason, utcnow())
            return
        agent = AgentTarget(target.namespace, target.name, target.uid, target.endpoint)
        sent = time.monotonic()
        self.fanout_latency.observe(max(0.0, (utcnow() - self.created).total_seconds()))
        result = await self._call_until_answered(target, agent)
        if result is None:
            return
        self.save_duration.observe(time.monotonic() - sent)
        self.instructing.after(functools.partial(self._record_result, key, result, utcnow()))
        self.instructing.answered(key)
        if self.snapshots.wanted:
            await self.instructing.out.wait()
            if self._item(key).get("outcome") == saving.SUCCEEDED:
                await self.snapshots.take(target)

    def _record_result(self, key: tuple[str, str], result: dict[str, Any], now: datetime) -> None:
        self._record_final(self._set(key, saving.with_agent_result(self._item(key), result, now)))

    async def _call_until_answered(
        self, target: saving.Target, agent: AgentTarget
    ) -> dict[str, Any] | None:
        """The agent's final result; None when the partition was finished as a failure.
        Connection failures are retried while the Partition still says its agent is
        connected; the deadline cancels the loop."""
        attempt = 0
        while True:
            now = utcnow()
            body = saving.instruction(self.uid, self.spec, self.deadline, now, AGENT_WAIT_SECONDS)
            timeout = (self.deadline - now).total_seconds() + 5
            try:
                return await self.agents.save(
                    agent,
                    body,
                    timeout=timeout,
                    on_progress=lambda r: self._progress(target, r),
                    first_wait=FIRST_WAIT_SECONDS,
                )
            except AgentError as error:
                self.instructing.answered(target.key)
                if error.reason not in ("unreachable", "timeout"):
                    self._finish(target.key, saving.FAILED, f"agent {error.reason}: {error}", now)
                    return None
                current = await self._current(target)
                reason = "the Partition was deleted" if current is None else None
                reason = reason or (current and saving.unreachable_reason(current))
                if reason:
                    self._finish(target.key, saving.UNREACHABLE, f"{reason} ({error})", utcnow())
                    return None
                if current is not None and current.endpoint != agent.endpoint:
                    agent = replace(agent, endpoint=current.endpoint)
                self.last_error[target.key] = str(error)
                await asyncio.sleep(RETRY_PAUSES[min(attempt, len(RETRY_PAUSES) - 1)])
                attempt += 1

    def _progress(self, target: saving.Target, partial: dict[str, Any]) -> None:
        """A running save's applications so far, so status shows progress, not just the end."""
        self.instructing.answered(target.key)
        self.last_error.pop(target.key, None)  # it answers: an earlier failure is not the cause
        item = self._item(target.key)
        updated = saving.with_agent_result(item, {**partial, "state": "Running"}, utcnow())
        if not saving.is_final(item) and updated != item:
            self._set(target.key, updated)

    async def _current(self, target: saving.Target) -> saving.Target | None:
        partition = await self.kube.get(PARTITION, target.namespace, target.name)
        return None if partition is None else saving.target_of(partition)

    def _item(self, key: tuple[str, str]) -> dict[str, Any]:
        return self.writer.item(self.index[key])

    def _finish(self, key: tuple[str, str], outcome: str, message: str, now: datetime) -> None:
        item = self._set(key, saving.with_failure(self._item(key), outcome, message, now))
        self._record_final(item)

    def _set(self, key: tuple[str, str], item: dict[str, Any]) -> dict[str, Any]:
        """Store a partition's result, cut to its share of the object's size budget."""
        fitted = saving.fit_entry(item, self.budget)
        self.writer.set_item(self.index[key], fitted)
        return fitted

    def _record_final(self, item: Mapping[str, Any]) -> None:
        """Metrics and, for small events, one Kubernetes Event per finished partition."""
        outcome = item.get("outcome", "")
        metrics.SAVES.labels(reason=self.reason, outcome=outcome).inc()
        if not self.few:
            return
        where = f"{item.get('namespace')}/{item.get('name')}"
        if outcome == saving.SUCCEEDED:
            kopf.event(
                self.body,
                type="Normal",
                reason="Saved",
                message=f"{where}: {item.get('message', '')}",
            )
        else:
            kopf.event(
                self.body,
                type="Warning",
                reason="SaveFailed",
                message=f"{where}: {outcome}: {item.get('message', '')}"[:1024],
            )

    # --- completion ---------------------------------------------------------------------------

    def _derive(self, status: dict[str, Any]) -> dict[str, Any]:
        """Summary and running conditions, computed once per write rather than per result."""
        counts = saving.summary(status.get("partitions") or [])
        conditions = merge(
            status.get("conditions"),
            saving.running_conditions(counts),
            self.meta.get("generation", 1),
            utcnow(),
        )
        return {"summary": counts, "conditions": conditions}

    async def _complete(self) -> None:
        now = utcnow()
        items = self.writer.status["partitions"]
        counts = saving.summary(items)
        pods_bad = saving.pods_failed(self.writer.status.get("pods") or [])
        reason = saving.completion_reason(counts, items, pods_bad)
        final = saving.final_conditions(reason, counts, pods_bad, self._targets_text())
        if self.snapshots.wanted:
            final = [replace(c, message=c.message + self.snapshots.note()) for c in final]
        self.writer.derive = None  # the final conditions must not be overwritten
        self.writer.set("summary", counts)
        self.writer.set(
            "conditions",
            merge(self.writer.status.get("conditions"), final, self.meta.get("generation", 1), now),
        )
        self.writer.set("completionTime", rfc3339(now))
        self.writer.set("observedGeneration", self.meta.get("generation", 1))

        def announce() -> None:
            kopf.event(
                self.body,
                type="Normal" if reason in saving.SUCCESSES else "Warning",
                reason="Completed",
                message=f"{reason}: {final[0].message}",
            )
            metrics.SAVE_EVENTS.labels(reason=self.reason, result=reason).inc()
            self.logger.info("SaveEvent complete: %s (%s)", reason, final[0].message)

        await _finally_then(self.writer.barrier(), announce)


def _retry_cause(error: Exception) -> str:
    """A retried error, in a line (an ApiException's text carries every header)."""
    if isinstance(error, ApiException):
        return f"the API server answered {error.status} {error.reason}"
    return net_errors.reason(error)


async def _finally_then(write: Awaitable[Any], announce: Callable[[], None]) -> None:
    """Await the final status write, then announce it (Event, metric, log).

    kopf stops this daemon as soon as its watch shows the finished status, which may be
    before our own PATCH call has returned; the write is shielded from that cancellation and
    the announcement follows it either way, so it is never lost.
    """
    task = asyncio.ensure_future(write)

    def after(done: asyncio.Future) -> None:
        if not done.cancelled() and done.exception() is None:
            announce()

    task.add_done_callback(after)
    await asyncio.shield(task)
