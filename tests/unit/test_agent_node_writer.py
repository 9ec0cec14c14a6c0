"""The Kubernetes node writer's patches, against a fake CoreV1Api that records them."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from wanka.agent.agent import Report
from wanka.agent.node_writer import KubeNodeWriter
from wanka.core.health import GPU_HEALTH_ANNOTATION, DeviceHealth, format_time

T0 = 1_800_000_000.0


class FakeCoreV1:
    """Records patches; `read_node` returns what the Node held when the writer started."""

    def __init__(self, status: str | None = None, annotation: str | None = None) -> None:
        conditions = [SimpleNamespace(type="Ready", status="True")]
        if status is not None:
            conditions.append(SimpleNamespace(type="GPUHealthy", status=status))
        annotations = {GPU_HEALTH_ANNOTATION: annotation} if annotation else None
        self.node = SimpleNamespace(
            metadata=SimpleNamespace(annotations=annotations),
            status=SimpleNamespace(conditions=conditions),
        )
        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        self.reads = 0
        self.fail_status_patch = 0

    def read_node(self, name: str) -> Any:
        self.reads += 1
        return self.node

    def patch_node(self, name: str, body: dict[str, Any]) -> None:
        self.calls.append(("patch_node", name, body))

    def patch_node_status(self, name: str, body: dict[str, Any]) -> None:
        if self.fail_status_patch:
            self.fail_status_patch -= 1
            raise ConnectionError("apiserver away")
        self.calls.append(("patch_node_status", name, body))

    def conditions(self) -> list[dict[str, Any]]:
        return [
            c
            for kind, _, body in self.calls
            if kind == "patch_node_status"
            for c in body["status"]["conditions"]
        ]


HEALTHY = Report(
    "True", "GPUsHealthy", "2 devices healthy", {0: DeviceHealth(True), 1: DeviceHealth(True)}
)
SICK = Report(
    "False",
    "GPULost",
    "unhealthy devices: 1 (GPULost)",
    {0: DeviceHealth(True), 1: DeviceHealth(False, "GPULost", "fell off the bus")},
)


def test_first_write_sets_annotation_then_condition_with_transition_time() -> None:
    api = FakeCoreV1()
    KubeNodeWriter(api, "gpu-1").write(HEALTHY, T0)
    assert [(k, n) for k, n, _ in api.calls] == [
        ("patch_node", "gpu-1"),
        ("patch_node_status", "gpu-1"),
    ]
    assert api.calls[0][2] == {
        "metadata": {"annotations": {GPU_HEALTH_ANNOTATION: HEALTHY.annotation}}
    }
    assert api.calls[1][2] == {
        "status": {
            "conditions": [
                {
                    "type": "GPUHealthy",
                    "status": "True",
                    "reason": "GPUsHealthy",
                    "message": "2 devices healthy",
                    "lastHeartbeatTime": format_time(T0),
                    "lastTransitionTime": format_time(T0),
                }
            ]
        }
    }


def test_heartbeats_leave_transition_time_and_annotation_alone() -> None:
    api = FakeCoreV1()
    writer = KubeNodeWriter(api, "gpu-1")
    writer.write(HEALTHY, T0)
    writer.write(HEALTHY, T0 + 30)
    assert [k for k, _, _ in api.calls] == ["patch_node", "patch_node_status", "patch_node_status"]
    beat = api.conditions()[-1]
    assert beat["lastHeartbeatTime"] == format_time(T0 + 30)
    assert "lastTransitionTime" not in beat
    assert api.reads == 1


def test_a_status_change_moves_the_transition_time() -> None:
    api = FakeCoreV1()
    writer = KubeNodeWriter(api, "gpu-1")
    writer.write(HEALTHY, T0)
    writer.write(SICK, T0 + 30)
    assert api.calls[-2][0] == "patch_node"  # the device data changed too
    assert api.conditions()[-1]["lastTransitionTime"] == format_time(T0 + 30)
    assert api.conditions()[-1]["status"] == "False"


def test_an_agent_restart_keeps_the_existing_transition_time() -> None:
    api = FakeCoreV1(status="True", annotation=HEALTHY.annotation)
    KubeNodeWriter(api, "gpu-1").write(HEALTHY, T0)
    assert [k for k, _, _ in api.calls] == ["patch_node_status"]
    assert "lastTransitionTime" not in api.conditions()[0]


def test_a_failed_patch_rereads_the_node_and_is_retried() -> None:
    api = FakeCoreV1()
    writer = KubeNodeWriter(api, "gpu-1")
    api.fail_status_patch = 1
    with pytest.raises(ConnectionError):
        writer.write(SICK, T0)
    writer.write(SICK, T0 + 30)
    assert api.reads == 2
    assert api.conditions()[-1]["lastTransitionTime"] == format_time(T0 + 30)
