"""The kopf settings lparkube changes: a diff base that never copies status."""

from __future__ import annotations

import kopf
import pytest

from lparkube.controllers import StatuslessDiffBaseStorage

RAW = {
    "apiVersion": "lparkube.io/v1alpha1",
    "kind": "SaveEvent",
    "metadata": {"name": "se", "namespace": "t", "labels": {"a": "b"}, "annotations": {"x": "y"}},
    "spec": {"reason": "Power", "targets": {"all": True}},
    "status": {"partitions": [{"name": f"p{i}", "outcome": "Instructed"} for i in range(50)]},
}


def storages() -> tuple[kopf.AnnotationsDiffBaseStorage, StatuslessDiffBaseStorage]:
    options = {"prefix": "lparkube.io", "key": "last-handled-configuration"}
    return kopf.AnnotationsDiffBaseStorage(**options), StatuslessDiffBaseStorage(**options)


def test_the_essence_is_kopfs_own() -> None:
    kopfs, ours = storages()
    assert ours.build(body=kopf.Body(RAW)) == kopfs.build(body=kopf.Body(RAW))
    assert "status" not in ours.build(body=kopf.Body(RAW))


@pytest.mark.parametrize("field", ["status.partitions", ("status", "partitions")])
def test_a_handler_on_a_status_field_still_sees_it(field: object) -> None:
    kopfs, ours = storages()
    built = ours.build(body=kopf.Body(RAW), extra_fields=[field])
    assert built == kopfs.build(body=kopf.Body(RAW), extra_fields=[field])
    assert built["status"]["partitions"] == RAW["status"]["partitions"]
