"""The built-in drain trigger: a VMI with ``evictionStrategy: External`` that KubeVirt marks
with ``status.evacuationNodeName`` gets one Migration SaveEvent for its Partition.

KubeVirt leaves an External evacuation to someone else, and the VM's applications should
save before anything moves it. The SaveEvent's name is derived from the evacuation (VMI uid,
node, last migration), so the many VMI events of one evacuation create it once, even across
operator restarts, while a later evacuation gets its own.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from lparkube import metrics
from lparkube.adapters.kube import PARTITION, SAVE_EVENT
from lparkube.controllers.saveevent import clients
from lparkube.domain import triggers

CONFLICT = 409


@kopf.on.event("kubevirt.io", "v1", "virtualmachineinstances")
async def virtualmachineinstance_evacuate(
    body: kopf.Body, memo: Any, logger: logging.Logger | kopf.ObjectLogger, **_: Any
) -> None:
    """Create the Migration SaveEvent of an External evacuation, once."""
    node = triggers.evacuation_node(body)
    if node is None:
        return
    kube, _agents = clients(memo)
    namespace = (body.get("metadata") or {}).get("namespace", "")
    partition = triggers.partition_for_vmi(body, await kube.list(PARTITION, namespace))
    if partition is None:
        return
    event = triggers.evacuation_save_event(body, partition, node)
    if event is None:
        return
    key = (namespace, event["metadata"]["name"])
    if key in memo.evacuation_saves:
        return
    try:
        await kube.create(SAVE_EVENT, namespace, event)
    except ApiException as error:
        if error.status != CONFLICT:
            raise
    else:
        metrics.TRIGGER_FIRINGS.labels(trigger="Evacuation", reason="Migration").inc()
        message = f"evacuation from {node}: SaveEvent {namespace}/{key[1]}"
        kopf.event(partition, type="Normal", reason="EvacuationSave", message=message)
        logger.info("%s", message)
    memo.evacuation_saves.add(key)
