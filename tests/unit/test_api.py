"""API models: the CRDs are generated from them, and they read and write the wire format."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from wanka.api.common import Condition, LabelSelector, set_condition
from wanka.api.crdgen import RESOURCES, crd, stale
from wanka.api.trainingjob import Resources, TrainingJobSpec

REPO = Path(__file__).resolve().parents[2]


def test_crds_in_repo_are_generated_from_the_models() -> None:
    assert stale(REPO / "crds") == [], "crds/ is stale: run `make crds`"


def _walk(schema: dict, path: str = "") -> list[str]:
    """Paths of schema nodes that break the structural-schema rules."""
    bad = []
    if "type" not in schema:
        bad.append(path or "<root>")
    for key in ("anyOf", "oneOf", "allOf", "$ref", "title"):
        if key in schema:
            bad.append(f"{path}:{key}")
    for name, sub in (schema.get("properties") or {}).items():
        bad += _walk(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        bad += _walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        bad += _walk(schema["additionalProperties"], f"{path}{{}}")
    return bad


@pytest.mark.parametrize("resource", RESOURCES, ids=[r.kind for r in RESOURCES])
def test_generated_crd_is_structural_and_complete(resource) -> None:  # type: ignore[no-untyped-def]
    doc = crd(resource)
    version = doc["spec"]["versions"][0]
    schema = version["schema"]["openAPIV3Schema"]
    assert _walk(schema) == []
    # A status-less kind (the workload's own progress report) has no status subresource: its
    # writer's Role grants update on the object itself.
    assert version.get("subresources") == ({"status": {}} if resource.status else None)
    assert ("status" in schema["properties"]) == bool(resource.status)
    assert doc["spec"]["names"]["categories"] == ["wanka"]
    assert doc["spec"]["names"]["shortNames"]
    assert any(c["name"] == "Age" for c in version["additionalPrinterColumns"])
    spec = schema["properties"]["spec"]

    def described(node: dict, path: str) -> list[str]:
        missing = []
        for name, sub in (node.get("properties") or {}).items():
            if "description" not in sub:
                missing.append(f"{path}.{name}")
            missing += described(sub, f"{path}.{name}")
        return missing

    assert described(spec, "spec") == []


def test_fraction_resources() -> None:
    assert Resources(gpu_fraction=0.25).gpu_milli == 250
    assert Resources(gpus=8).gpu_milli == 8000
    with pytest.raises(ValidationError):
        Resources(gpu_fraction=1.0)


def test_spec_refuses_unknown_fields_and_reads_camel_case() -> None:
    raw = {
        "pool": "p", "queue": "q", "replicas": 2, "resources": {"gpus": 8},
        "template": {"spec": {"containers": [{"name": "c", "image": "i", "env": []}]}},
        "restartPolicy": {"maxRestarts": 3},
    }
    spec = TrainingJobSpec.model_validate(raw)
    assert spec.restart_policy.max_restarts == 3
    assert spec.wire()["template"]["spec"]["containers"][0]["env"] == []
    with pytest.raises(ValidationError, match="replicaz"):
        TrainingJobSpec.model_validate({**raw, "replicaz": 1})


@pytest.mark.parametrize(
    "selector,labels,want",
    [
        ({"matchLabels": {"a": "1"}}, {"a": "1", "b": "2"}, True),
        ({"matchLabels": {"a": "1"}}, {"a": "2"}, False),
        ({"matchExpressions": [{"key": "a", "operator": "In", "values": ["1", "2"]}]}, {"a": "2"}, True),
        ({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]}, {"a": "1"}, False),
        ({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]}, {}, True),
        ({"matchExpressions": [{"key": "a", "operator": "Exists"}]}, {}, False),
        ({"matchExpressions": [{"key": "a", "operator": "DoesNotExist"}]}, {"a": ""}, False),
        ({}, {"anything": "x"}, True),
    ],
)
def test_label_selector(selector: dict, labels: dict, want: bool) -> None:
    assert LabelSelector.model_validate(selector).matches(labels) is want


def test_condition_transition_time_moves_only_on_status_change() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    conds: list[Condition] = []
    assert set_condition(conds, "Ready", "True", "A", "m", 1, t0)
    assert not set_condition(conds, "Ready", "True", "A", "m", 1, t0 + timedelta(seconds=5))
    assert set_condition(conds, "Ready", "True", "B", "other", 2, t0 + timedelta(seconds=10))
    assert conds[0].last_transition_time == t0 and conds[0].reason == "B"
    assert set_condition(conds, "Ready", "False", "C", "down", 2, t0 + timedelta(seconds=20))
    assert conds[0].last_transition_time == t0 + timedelta(seconds=20)
    assert len(conds) == 1
