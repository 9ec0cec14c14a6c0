"""TrainingJob gangs on the real control plane: admission, binding, recovery, deletion."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.integration.conftest import Cluster, OperatorProcess, wait_for
from tests.integration.jobkit import (
    condition,
    device_load,
    env_of,
    job,
    live_pods,
    make_fleet,
    make_job,
    phase,
    pods,
    wait_running,
)
from wanka.core.advice import advise
from wanka.sdk import Reporter, Settings

pytestmark = pytest.mark.integration


def test_gang_of_four_is_bound_together_with_torchrun_env(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    fleet = make_fleet(cluster, namespace)
    make_job(cluster, namespace, fleet, "llama", replicas=4, gpus=8,
             topology={"level": "wanka.io/rack", "mode": "Required"})
    tj = wait_running(cluster, namespace, "llama")
    members = live_pods(cluster, namespace, "llama")
    assert len(members) == 4
    assert all(p.spec.node_name for p in members)
    placement = tj["status"]["placement"]
    assert sorted(p["replica"] for p in placement) == [0, 1, 2, 3]
    assert {p.spec.node_name for p in members} == {p["node"] for p in placement}
    racks = {cluster.core.read_node(p.spec.node_name).metadata.labels["wanka.io/rack"] for p in members}
    assert len(racks) == 1, "Required rack topology: one rack"
    for pod in members:
        env = env_of(pod)
        rank = int(pod.metadata.labels["wanka.io/replica"])
        assert env["RANK"] == env["NODE_RANK"] == str(rank)
        assert env["WORLD_SIZE"] == "4" and env["LOCAL_WORLD_SIZE"] == "8"
        assert env["MASTER_ADDR"] == f"llama-0.llama.{namespace}.svc"
        assert env["MASTER_PORT"] == "29500"
        assert env["WANKA_JOB"] == f"{namespace}/llama"
        assert env["WANKA_RESTART_COUNT"] == "0" and env["WANKA_RESUME"] == "0"
        assert env["WANKA_CHECKPOINT_DIR"] == "/ckpt"
        assert pod.spec.scheduler_name == "wanka"
        assert pod.spec.hostname == f"llama-{rank}" and pod.spec.subdomain == "llama"
        assert pod.spec.containers[0].resources.limits["nvidia.com/gpu"] == "8"
        assert pod.metadata.owner_references[0].kind == "TrainingJob"
    svc = cluster.core.read_namespaced_service("llama", namespace)
    assert svc.spec.cluster_ip == "None"
    assert tj["status"]["replicasReady"] == 4 and tj["status"]["startTime"]
    assert max(device_load(cluster, fleet.nodes).values()) == 1
    reasons = [e.reason for e in cluster.events_for("llama", namespace)]
    assert "Admitted" in reasons and "Running" in reasons


def test_two_jobs_compete_for_the_last_capacity(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    fleet = make_fleet(cluster, namespace, nodes=4, racks=1)
    make_job(cluster, namespace, fleet, "first", replicas=3, gpus=8,
             labels={"wanka.io/sim": "succeed"}, annotations={"wanka.io/sim-delay": "6s"})
    wait_running(cluster, namespace, "first")
    make_job(cluster, namespace, fleet, "second", replicas=2, gpus=8)
    wait_for(lambda: (c := condition(cluster, namespace, "second", "Admitted")) and c["status"] == "False"
             and c["reason"] != "Queued", 10, what="second waits with a reason")
    assert phase(cluster, namespace, "second") == "Queued"
    cond = condition(cluster, namespace, "second", "Admitted")
    assert cond is not None and "2" in cond["message"], cond
    assert not live_pods(cluster, namespace, "second")
    # The first finishes: its devices return, and the second runs.
    wait_for(lambda: phase(cluster, namespace, "first") == "Succeeded", 20, what="first Succeeded")
    wait_running(cluster, namespace, "second", 20)


def test_failed_member_restarts_the_whole_gang_elsewhere_from_the_checkpoint(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    fleet = make_fleet(cluster, namespace, nodes=8, racks=2)
    make_job(cluster, namespace, fleet, "resume", replicas=4, gpus=8,
             restartPolicy={"maxRestarts": 3, "backoffSeconds": 0, "maxBackoffSeconds": 0})
    wait_running(cluster, namespace, "resume")
    first = {p.metadata.name: p.spec.node_name for p in live_pods(cluster, namespace, "resume")}
    victim = sorted(first)[1]
    bad_node = first[victim]
    cluster.core.patch_namespaced_pod(victim, namespace, {"metadata": {"labels": {"wanka.io/sim": "fail"}}})

    wait_for(lambda: (job(cluster, namespace, "resume").get("status") or {}).get("restarts") == 1, 15,
             what="one restart")
    tj = wait_running(cluster, namespace, "resume", 30)
    new = live_pods(cluster, namespace, "resume")
    assert len(new) == 4 and not set(first) & {p.metadata.name for p in new}
    assert bad_node not in {p.spec.node_name for p in new}
    assert bad_node in tj["status"]["excludedNodes"]
    for pod in new:
        env = env_of(pod)
        assert env["WANKA_RESTART_COUNT"] == "1" and env["WANKA_RESUME"] == "1"
        assert env["WANKA_CHECKPOINT_DIR"] == "/ckpt"
    assert any(e.reason == "MemberFailed" for e in cluster.events_for("resume", namespace))


def test_member_node_not_ready_restarts_the_gang(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    fleet = make_fleet(cluster, namespace, nodes=8, racks=2)
    make_job(cluster, namespace, fleet, "nodefail", replicas=2, gpus=8,
             restartPolicy={"backoffSeconds": 0, "maxBackoffSeconds": 0})
    wait_running(cluster, namespace, "nodefail")
    node = live_pods(cluster, namespace, "nodefail")[0].spec.node_name
    cluster.core.patch_node(node, {"metadata": {"labels": {"wanka.io/sim-fail": "not-ready"}}})
    wait_for(lambda: (job(cluster, namespace, "nodefail").get("status") or {}).get("restarts") == 1, 15,
             what="restart after NotReady")
    wait_running(cluster, namespace, "nodefail", 30)
    assert node not in {p.spec.node_name for p in live_pods(cluster, namespace, "nodefail")}
    cluster.core.patch_node(node, {"metadata": {"labels": {"wanka.io/sim-fail": None}}})


def test_restart_limit_fails_the_job_with_the_reason(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    fleet = make_fleet(cluster, namespace, nodes=6, racks=1)
    make_job(cluster, namespace, fleet, "doomed", replicas=2, gpus=8,
             labels={"wanka.io/sim": "fail"}, annotations={"wanka.io/sim-delay": "300ms"},
             restartPolicy={"maxRestarts": 2, "backoffSeconds": 0, "maxBackoffSeconds": 0})
    wait_for(lambda: phase(cluster, namespace, "doomed") == "Failed", 45, what="Failed")
    tj = job(cluster, namespace, "doomed")
    assert tj["status"]["restarts"] == 2
    failed = condition(cluster, namespace, "doomed", "Failed")
    assert failed and failed["reason"] == "RestartLimitExceeded", failed
    wait_for(lambda: not [p for p in pods(cluster, namespace, "doomed")
                          if p.status.phase not in ("Failed", "Succeeded")], 10, what="no live pods")


def test_no_retry_exit_code_fails_at_once(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    fleet = make_fleet(cluster, namespace, nodes=2, racks=1)
    make_job(cluster, namespace, fleet, "badconfig", replicas=1, gpus=8,
             labels={"wanka.io/sim": "fail"},
             annotations={"wanka.io/sim-delay": "200ms", "wanka.io/sim-exit-code": "2"},
             restartPolicy={"noRetryExitCodes": [2]})
    wait_for(lambda: phase(cluster, namespace, "badconfig") == "Failed", 20, what="Failed")
    failed = condition(cluster, namespace, "badconfig", "Failed")
    assert failed and failed["reason"] == "NoRetryExitCode"
    assert job(cluster, namespace, "badconfig")["status"]["restarts"] == 0


def test_deleting_a_running_job_leaves_nothing_behind(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    fleet = make_fleet(cluster, namespace, nodes=4, racks=1)
    make_job(cluster, namespace, fleet, "gone", replicas=2, gpus=8)
    wait_running(cluster, namespace, "gone")
    assert job(cluster, namespace, "gone")["metadata"]["finalizers"] == ["wanka.io/finalizer"]
    cluster.delete("trainingjobs", "gone", namespace)

    def nothing_left() -> bool:
        from kubernetes.client.exceptions import ApiException

        if pods(cluster, namespace, "gone"):
            return False
        for read in (lambda: cluster.core.read_namespaced_service("gone", namespace),
                     lambda: cluster.get("trainingjobprogresses", "gone", namespace)):
            try:
                read()
                return False
            except ApiException:
                pass
        try:
            job(cluster, namespace, "gone")
            return False
        except ApiException:
            return True

    wait_for(nothing_left, 20, what="no pod, Service, progress report or job left")
    wait_for(lambda: ((cluster.get("gpupools", fleet.pool).get("status") or {}).get("gpus") or {})
             .get("free") == 32, 10, what="all 32 GPUs free again")


def test_suspend_releases_and_resume_requeues(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    fleet = make_fleet(cluster, namespace, nodes=2, racks=1)
    make_job(cluster, namespace, fleet, "pausable", replicas=2, gpus=8)
    wait_running(cluster, namespace, "pausable")
    cluster.custom.patch_namespaced_custom_object(
        "wanka.io", "v1alpha1", namespace, "trainingjobs", "pausable", {"spec": {"suspend": True}})
    wait_for(lambda: phase(cluster, namespace, "pausable") == "Suspended", 10, what="Suspended")
    wait_for(lambda: not live_pods(cluster, namespace, "pausable"), 10, what="pods released")
    cluster.custom.patch_namespaced_custom_object(
        "wanka.io", "v1alpha1", namespace, "trainingjobs", "pausable", {"spec": {"suspend": False}})
    wait_running(cluster, namespace, "pausable")


def test_queue_and_pool_problems_are_explained(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    fleet = make_fleet(cluster, namespace, nodes=2, racks=1)
    make_job(cluster, namespace, fleet, "badlevel", replicas=1, gpus=8,
             topology={"level": "wanka.io/spine", "mode": "Required"})
    cond = wait_for(lambda: (c := condition(cluster, namespace, "badlevel", "Admitted"))
                    and c["reason"] == "InvalidTopology" and c, 10, what="InvalidTopology")
    assert "wanka.io/spine" in cond["message"] and "wanka.io/rack" in cond["message"]
    fleet.queue = "no-such-queue"
    make_job(cluster, namespace, fleet, "noqueue", replicas=1, gpus=8)
    cond = wait_for(lambda: (c := condition(cluster, namespace, "noqueue", "Admitted"))
                    and c["reason"] == "NoQueue" and c, 10, what="NoQueue")
    assert "no-such-queue" in cond["message"]


def test_checkpoint_reports_only_through_the_jobs_own_progress(
    cluster: Cluster, operator: OperatorProcess, namespace: str, tmp_path: Path
) -> None:
    fleet = make_fleet(cluster, namespace, nodes=4, racks=1)
    for name in ("ckpt", "other"):
        make_job(cluster, namespace, fleet, name, replicas=1, gpus=8)
    wait_running(cluster, namespace, "ckpt")
    wait_running(cluster, namespace, "other")
    token = cluster.core.create_namespaced_service_account_token(
        "ckpt-wanka", namespace, {"spec": {"expirationSeconds": 600}}).status.token
    sa_dir = tmp_path / "sa"
    sa_dir.mkdir()
    (sa_dir / "token").write_text(token)
    (sa_dir / "ca.crt").write_bytes((cluster.local.state_dir / "pki" / "ca.crt").read_bytes())
    (sa_dir / "namespace").write_text(namespace)
    server = cluster.api.configuration.host

    mine = Reporter(Settings(namespace=namespace, progress="ckpt"), sa_dir, server)
    assert mine.report(1200, "/ckpt/step-00001200", time.time(), save_seconds=30.0)
    ckpt = wait_for(lambda: (job(cluster, namespace, "ckpt").get("status") or {}).get("lastCheckpoint"),
                    10, what="lastCheckpoint mirrored")
    assert ckpt["step"] == 1200 and ckpt["path"] == "/ckpt/step-00001200" and ckpt["saveSeconds"] == 30
    # The measured save time and the pool's interruption rate give the Young/Daly advice.
    advice = wait_for(lambda: job(cluster, namespace, "ckpt")["status"].get("checkpointAdvice"), 10,
                      what="checkpoint advice in status")
    assert advice["saveSeconds"] == 30 and advice["interruptionsPerNodeDay"] > 0
    want = advise(30.0, 1, advice["interruptionsPerNodeDay"] / 86400)
    assert abs(advice["intervalSeconds"] - want.interval_seconds) <= 1
    # The same token cannot touch another job's report (Role with resourceNames).
    theirs = Reporter(Settings(namespace=namespace, progress="other"), sa_dir, server)
    assert not theirs.report(5, "/x", time.time())
    assert cluster.get("trainingjobprogresses", "other", namespace).get("spec") in (None, {})


def test_a_sick_device_sends_full_node_jobs_elsewhere_but_smaller_ones_may_stay(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    import json

    fleet = make_fleet(cluster, namespace, nodes=2, racks=1)
    sick_node, other = fleet.nodes
    cluster.core.patch_node(sick_node, {"metadata": {"annotations": {
        "wanka.io/gpu-health": json.dumps({"3": {"healthy": False, "reason": "XID94"}})}}})
    wait_for(lambda: ((cluster.get("gpupools", fleet.pool).get("status") or {}).get("gpus") or {})
             .get("allocatable") == 15, 10, what="device 3 excluded")
    make_job(cluster, namespace, fleet, "eight", replicas=1, gpus=8)
    wait_running(cluster, namespace, "eight")
    assert live_pods(cluster, namespace, "eight")[0].spec.node_name == other
    make_job(cluster, namespace, fleet, "four", replicas=1, gpus=4)
    wait_running(cluster, namespace, "four")
    pod = live_pods(cluster, namespace, "four")[0]
    assert pod.spec.node_name == sick_node
    devices = {int(d) for d in pod.metadata.annotations["wanka.io/devices"].split(",")}
    assert len(devices) == 4 and 3 not in devices


def test_metrics_cover_gangs_and_health(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    fleet = make_fleet(cluster, namespace, nodes=2, racks=1)
    make_job(cluster, namespace, fleet, "metered", replicas=2, gpus=8)
    wait_running(cluster, namespace, "metered")
    expected = ("wanka_build_info", "wanka_binds_total", "wanka_gang_wait_seconds_bucket",
                "wanka_gang_placement_duration_seconds_bucket", "wanka_reconcile_duration_seconds_bucket",
                f'wanka_pool_gpus{{pool="{fleet.pool}",state="allocated"}} 16.0',
                f'wanka_pool_devices{{pool="{fleet.pool}",use="full"}} 16.0',
                f'wanka_pool_nodes{{health="healthy",pool="{fleet.pool}"}} 2.0')
    # The job's phase is written in the jobs pass; the pool gauges follow in the pool pass of the
    # same or the next tick, so the scrape waits for them rather than racing that pass.
    wait_for(lambda: all(name in operator.metrics() for name in expected), 10,
             what="pool gauges reflecting the running gang")
    text = operator.metrics()
    for name in expected:
        assert name in text, name
    binds = [line for line in text.splitlines() if line.startswith('wanka_binds_total{result="bound"}')]
    assert binds and float(binds[0].split()[-1]) >= 2
    # No unbounded labels: job names never appear in metrics.
    assert "metered" not in text


def test_gang_not_running_within_its_timeout_is_released_and_requeued(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    fleet = make_fleet(cluster, namespace, nodes=2, racks=1)
    make_job(cluster, namespace, fleet, "stuck", replicas=2, gpus=8,
             labels={"wanka.io/sim": "pending"}, gang={"scheduleTimeoutSeconds": 2})
    wait_for(lambda: any(e.reason == "GangTimeout" for e in cluster.events_for("stuck", namespace)), 20,
             what="a GangTimeout event")
    event = next(e for e in cluster.events_for("stuck", namespace) if e.reason == "GangTimeout")
    assert "0/2 replicas running after 2s" in event.message
    status = job(cluster, namespace, "stuck").get("status") or {}
    assert status.get("restarts") == 0
    # Not re-admitted at once: the job's backoff (30 s by default) holds it.
    assert status.get("failedAdmissions", 0) >= 1 and status.get("retryAfter"), status


def test_higher_priority_gang_preempts_and_the_victim_resumes_later(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    fleet = make_fleet(cluster, namespace, nodes=2, racks=1)
    make_job(cluster, namespace, fleet, "low", replicas=2, gpus=8, priority=10,
             restartPolicy={"maxRestarts": 0, "backoffSeconds": 0, "maxBackoffSeconds": 0})
    wait_running(cluster, namespace, "low")
    make_job(cluster, namespace, fleet, "high", replicas=2, gpus=8, priority=100,
             labels={"wanka.io/sim": "succeed"}, annotations={"wanka.io/sim-delay": "4s"})
    preempted = wait_for(lambda: (c := condition(cluster, namespace, "low", "Preempted"))
                         and c["status"] == "True" and c, 20, what="low preempted")
    assert "high" in preempted["message"]
    wait_running(cluster, namespace, "high", 30)
    assert phase(cluster, namespace, "low") in ("Restarting", "Queued")
    # Preemption is not the job's fault: maxRestarts=0 does not fail it, and it resumes
    # from its checkpoint once the preemptor is done.
    wait_for(lambda: phase(cluster, namespace, "high") == "Succeeded", 30, what="high done")
    tj = wait_running(cluster, namespace, "low", 30)
    assert tj["status"]["restarts"] == 1 and tj["status"]["preemptions"] == 1
    assert all(env_of(p)["WANKA_RESUME"] == "1" for p in live_pods(cluster, namespace, "low"))


def test_elastic_gang_starts_with_min_available_and_runs_at_that_size(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    fleet = make_fleet(cluster, namespace, nodes=2, racks=1)
    make_job(cluster, namespace, fleet, "elastic", replicas=3, gpus=8, gang={"minAvailable": 2},
             labels={"wanka.io/sim": "succeed"}, annotations={"wanka.io/sim-delay": "600s"})
    wait_running(cluster, namespace, "elastic")
    members = live_pods(cluster, namespace, "elastic")
    assert len(members) == 2, "two of three replicas fit, and two is the gang's minimum"
    assert {env_of(p)["RANK"] for p in members} == {"0", "1"}
    assert {env_of(p)["WORLD_SIZE"] for p in members} == {"2"}, "the attempt's size, not spec.replicas"
    status = job(cluster, namespace, "elastic")["status"]
    assert len(status["placement"]) == 2 and status["replicasReady"] == 2
    admitted = condition(cluster, namespace, "elastic", "Admitted")
    assert admitted is not None and "elastic start: 2 of 3" in admitted["message"]
    assert any("elastic start with 2 of 3 replicas" in e.message
               for e in cluster.events_for("elastic", namespace) if e.reason == "Admitted")
    # Quota and fair share charge what runs: 2 x 8 GPUs.
    usage = wait_for(lambda: (cluster.get("tenantqueues", fleet.queue).get("status") or {}).get("usage"), 10,
                     what="queue usage")
    assert usage == [{"pool": fleet.pool, "gpus": 16}]
    # A rigid gang of the same size (no minAvailable) does not start smaller: it waits whole.
    make_job(cluster, namespace, fleet, "rigid", replicas=3, gpus=8)
    wait_for(lambda: (c := condition(cluster, namespace, "rigid", "Admitted")) and c["reason"] != "Queued", 10,
             what="rigid waits with a reason")
    assert phase(cluster, namespace, "rigid") == "Queued" and not live_pods(cluster, namespace, "rigid")


def test_a_gang_of_one_is_created_bound_and_gets_only_what_it_needs(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    from kubernetes.client import RbacAuthorizationV1Api
    from kubernetes.client.exceptions import ApiException

    fleet = make_fleet(cluster, namespace, nodes=1, racks=1)
    make_job(cluster, namespace, fleet, "trial", replicas=1, gpus=1, checkpoint={"resume": "Never"})
    make_job(cluster, namespace, fleet, "resumer", replicas=1, gpus=1)
    wait_running(cluster, namespace, "trial")
    wait_running(cluster, namespace, "resumer")
    trial, = live_pods(cluster, namespace, "trial")
    resumer, = live_pods(cluster, namespace, "resumer")
    # Bound as created: a gang of one is whole the moment it exists (no pods/binding call).
    managed = [f for f in trial.metadata.managed_fields or [] if f.subresource == "binding"]
    assert trial.spec.node_name and not managed
    assert env_of(trial)["MASTER_ADDR"] == "localhost" and env_of(trial)["WORLD_SIZE"] == "1"
    # No rendezvous Service for one replica; no report objects for a job that never resumes.
    assert not env_of(trial).get("WANKA_PROGRESS")
    assert trial.spec.service_account_name == "default"
    rbac = RbacAuthorizationV1Api(cluster.api)
    for read in (lambda: cluster.core.read_namespaced_service("trial", namespace),
                 lambda: cluster.core.read_namespaced_service_account("trial-wanka", namespace),
                 lambda: cluster.get("trainingjobprogresses", "trial", namespace),
                 lambda: rbac.read_namespaced_role("trial-checkpoint-writer", namespace)):
        with pytest.raises(ApiException) as missing:
            read()
        assert missing.value.status == 404
    # A job that resumes keeps its own report object and the account allowed to write it.
    assert resumer.spec.service_account_name == "resumer-wanka"
    assert env_of(resumer)["WANKA_PROGRESS"] == "resumer"
    assert cluster.get("trainingjobprogresses", "resumer", namespace)
    rbac.read_namespaced_role_binding("resumer-checkpoint-writer", namespace)
