"""The operator's side of the gang preflight: the init container it adds, and what a failed
preflight does to the gang (exclude the blamed members' nodes, place again at once)."""

from __future__ import annotations

from typing import Any

from tests.objects import make_node, make_pod, make_training_job
from tests.unit.test_lifecycle import NOW, plan_for
from wanka.api.gpupool import GPUPoolSpec
from wanka.api.trainingjob import TrainingJobSpec
from wanka.cluster.manifests import PREFLIGHT_CONTAINER, pod_manifest, preflight_env
from wanka.core.preflight import PreflightReport, encode_report

RUN3 = (("n1", [0, 1, 2, 3, 4, 5, 6, 7]), ("n2", [0, 1, 2, 3, 4, 5, 6, 7]),
        ("n3", [0, 1, 2, 3, 4, 5, 6, 7]))
NODES = [make_node(n).obj() for n in ("n1", "n2", "n3")]


def gang() -> dict[str, Any]:
    return (make_training_job("j").replicas(3).spec_field("preflight", True)
            .admitted(*RUN3, at=NOW - 30).obj())


def report(rank: int, ok: bool, reason: str, blamed: dict[int, str] | None = None) -> str:
    return encode_report(PreflightReport(rank=rank, world_size=3, ok=ok, reason=reason,
                                         culprits=blamed or {}, message=f"{reason} here"))


def test_a_member_the_others_blame_has_its_node_excluded_and_the_gang_is_placed_again_at_once() -> None:
    missing = {2: "did not reach the rendezvous within 60s"}
    pods = [make_pod("j", 0).on("n1").preflight(1, report(0, False, "PeersMissing", missing)).obj(),
            make_pod("j", 1).on("n2").preflight(1, report(1, False, "PeersMissing", missing)).obj(),
            make_pod("j", 2).on("n3").preflight(1, report(2, False, "MasterUnreachable")).obj()]
    plan = plan_for(gang(), pods, NODES)
    assert plan.status is not None
    assert plan.status.phase == "Restarting"
    assert plan.status.excluded_nodes == ["n3"]
    assert plan.status.preflight_failures == 1 and plan.status.retry_after is None
    assert plan.restart is not None and plan.restart.reason == "PreflightFailed"
    assert "replica 2 on n3: did not reach the rendezvous" in plan.events[0].message
    assert sorted(d.name for d in plan.delete) == ["j-0-a0", "j-1-a0", "j-2-a0"]


def test_the_verdict_waits_until_every_member_has_ended_its_preflight() -> None:
    # The unreachable member gave up first; rank 0 is still waiting for it: no judgement yet
    # (with only rank 2's report, rank 0 would look like the one nobody could reach).
    early = [make_pod("j", 0).on("n1").obj(), make_pod("j", 1).on("n2").obj(),
             make_pod("j", 2).on("n3").preflight(1, report(2, False, "MasterUnreachable")).obj()]
    plan = plan_for(gang(), early, NODES)
    assert plan.restart is None and (plan.status is None or plan.status.phase == "Admitted")
    missing = {2: "did not reach the rendezvous within 60s"}
    late = [make_pod("j", 0).on("n1").preflight(1, report(0, False, "PeersMissing", missing)).obj(),
            make_pod("j", 1).on("n2").preflight(1, report(1, False, "PeersMissing", missing)).obj(),
            early[2]]
    plan = plan_for(gang(), late, NODES)
    assert plan.status is not None and plan.status.excluded_nodes == ["n3"]


def test_a_preflight_nobody_can_be_blamed_for_counts_as_a_failure_and_backs_off() -> None:
    pods = [make_pod("j", r).on(f"n{r + 1}").preflight(1, report(r, False, "LowBusBandwidth")).obj()
            for r in range(3)]
    plan = plan_for(gang(), pods, NODES)
    assert plan.status is not None and plan.status.phase == "Restarting"
    assert plan.status.excluded_nodes == [] and plan.status.preflight_failures == 0
    assert plan.status.retry_after is not None  # the restart policy's backoff
    assert "no member to blame (LowBusBandwidth" in plan.events[0].message


def test_preflight_failures_do_not_use_up_max_restarts() -> None:
    job = (make_training_job("j").replicas(3).spec_field("preflight", True)
           .restart_policy(maxRestarts=1).restarts(3).status_field("preflightFailures", 3)
           .admitted(*RUN3, at=NOW - 30).obj())
    pods = [make_pod("j", r, 3).on(f"n{r + 1}").preflight(1, report(r, False, "SlowMembers", {0: "slow"})).obj()
            for r in range(3)]
    plan = plan_for(job, pods, NODES)
    assert plan.status is not None and plan.status.phase == "Restarting"
    assert plan.status.excluded_nodes == ["n1"]


def test_a_member_still_in_its_preflight_is_waited_for() -> None:
    pods = [make_pod("j", r).on(f"n{r + 1}").obj() for r in range(3)]
    plan = plan_for(gang(), pods, NODES)
    assert plan.status is None or plan.status.phase == "Admitted"
    assert plan.restart is None


def test_the_pod_runs_the_preflight_last_with_the_training_container_s_image_env_and_devices() -> None:
    job = gang()
    job["metadata"]["uid"] = "u"
    job["spec"]["template"]["spec"]["initContainers"] = [{"name": "fetch", "image": "busybox"}]
    spec = TrainingJobSpec.model_validate(job["spec"])
    pool = GPUPoolSpec.model_validate({"nodeSelector": {}, "preflight": {"minBusBandwidthGBps": 40,
                                                                         "timeoutSeconds": 90}})
    pod = pod_manifest(job, spec, 1, 0, [(d, 1000) for d in range(8)], "nvidia.com/gpu",
                       world_size=3, preflight=preflight_env(pool))
    inits = pod["spec"]["initContainers"]
    assert [c["name"] for c in inits] == ["fetch", PREFLIGHT_CONTAINER]
    check = inits[-1]
    train = pod["spec"]["containers"][0]
    assert check["image"] == train["image"] and check["command"] == ["python", "-m", "wanka.sdk.preflight"]
    assert check["resources"]["limits"]["nvidia.com/gpu"] == "8"
    env = {e["name"]: e["value"] for e in check["env"]}
    assert env["RANK"] == "1" and env["WORLD_SIZE"] == "3"
    assert env["WANKA_PREFLIGHT_MIN_BUSBW_GBPS"] == "40" and env["WANKA_PREFLIGHT_TIMEOUT_SECONDS"] == "90"
    assert env["WANKA_PREFLIGHT_SLOW_FACTOR"] == "0.5"
    plain = pod_manifest(job, spec, 1, 0, [(0, 1000)], "nvidia.com/gpu", world_size=3)
    assert [c["name"] for c in plain["spec"].get("initContainers", [])] == ["fetch"]
