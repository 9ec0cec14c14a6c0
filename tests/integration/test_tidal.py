"""The tidal cycle on a real control plane: inference reclaims GPUs from training by
checkpoint-aware preemption, and training resumes from its checkpoints when they come back."""

from __future__ import annotations

from kubernetes import client

from tests.integration.conftest import Cluster, OperatorProcess
from tests.integration.jobkit import make_fleet
from wanka.cluster.tidal import Tidal


def test_inference_reclaims_gpus_from_training_and_training_resumes(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    fleet = make_fleet(cluster, namespace, nodes=2, racks=1, quota=16,
                       queue_spec={"preemption": {"withinQueue": "LowerPriority"}})
    tidal = Tidal(cluster.api, namespace, fleet.pool, fleet.queue, gangs=3, replicas=2, gpus=2,
                  low=2, high=12, pool_gpus=16, timeout=60)
    report = tidal.run()
    print(report.wire())

    # Night: three 4-GPU gangs and two inference pods (14 of 16 GPUs).
    assert report.phases["night"] == {"training": 12, "inference": 2, "allocated_percent": 87.5}
    # Morning: twelve inference pods Running; 10 more GPUs needed, 2 free: two gangs (8 GPUs)
    # give theirs back, never more than needed; one gang keeps running.
    assert report.phases["morning"]["inference"] == 12
    assert report.phases["morning"]["training"] == 4
    assert report.preempted_gangs == 2
    # Each reclaim loses only the work since the gang's last checkpoint (about a second here).
    assert report.lost_seconds_per_reclaim and all(0 < s < 30 for s in report.lost_seconds_per_reclaim)
    # Evening: inference back to two, every gang Running again, resumed from its checkpoint.
    assert report.phases["evening"] == {"training": 12, "inference": 2, "allocated_percent": 87.5}
    assert report.restarts == 2 and report.resumed_from_checkpoint
    assert report.inference_start_p99_seconds < 30
    # The preempted gangs said why.
    events = [e for e in client.CoreV1Api(cluster.api).list_namespaced_event(namespace).items
              if e.reason == "Preempted" and e.involved_object.kind == "TrainingJob"]
    assert events and all("pod:" in (e.message or "") for e in events)
