"""A closed Kube client (the operator stopping) cancels calls instead of failing them: a
daemon caught in one stops as cancelled, not retried with an error until kopf gives up."""

from __future__ import annotations

import asyncio

import pytest
from kubernetes import client

from lparkube.adapters.kube import Kube


def test_a_call_after_close_is_cancelled_and_before_it_runs() -> None:
    kube = Kube(client.ApiClient(), workers=1)
    assert asyncio.run(kube.call(lambda x: x + 1, 41)) == 42
    kube.close()
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(kube.call(lambda: None))
