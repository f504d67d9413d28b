"""Partition keys in bulk: one labelled LIST instead of one GET per partition.

A SaveEvent over 1,000 partitions would otherwise read 1,000 Secrets one by one before it
could instruct the last agent. The operator labels every key Secret it generates with
``lparkube.io/partition``, so one LIST (namespaced, or cluster-wide when the targets span
namespaces) finds them; keys it misses (a user-provided Secret without the label) are read
one by one by the caller with ``load_agent_key``.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable

from lparkube.adapters.kube import Kube
from lparkube.domain.partition import PARTITION_LABEL
from lparkube_agent.protocol import MIN_KEY_BYTES

BULK_FROM = 8  # below this many keys, single reads are as cheap as a list


async def load_keys(kube: Kube, wanted: Iterable[tuple[str, str]]) -> dict[tuple[str, str], bytes]:
    """Usable keys by (namespace, Secret name), for the labelled Secrets among ``wanted``."""
    wanted = set(wanted)
    if len(wanted) < BULK_FROM:
        return {}
    namespaces = {namespace for namespace, _ in wanted}
    if len(namespaces) == 1:
        response = await kube.call(
            kube.core.list_namespaced_secret,
            next(iter(namespaces)),
            label_selector=PARTITION_LABEL,
            _preload_content=False,
        )
    else:
        response = await kube.call(
            kube.core.list_secret_for_all_namespaces,
            label_selector=PARTITION_LABEL,
            _preload_content=False,
        )
    found: dict[tuple[str, str], bytes] = {}
    for item in json.loads(response.data).get("items") or []:
        meta = item.get("metadata") or {}
        where = (meta.get("namespace", ""), meta.get("name", ""))
        if where in wanted and (key := _key(item)) is not None:
            found[where] = key
    return found


def _key(secret: dict) -> bytes | None:
    try:
        key = base64.b64decode((secret.get("data") or {}).get("key") or "", validate=True)
    except (binascii.Error, ValueError):
        return None
    return key if len(key) >= MIN_KEY_BYTES else None
