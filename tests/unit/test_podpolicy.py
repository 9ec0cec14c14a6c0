"""The pod-template policy: each rule refuses, names the field, and can be relaxed as documented."""

from __future__ import annotations

from typing import Any

import pytest

from wanka.api.common import POD_POLICY_RULES
from wanka.api.gpupool import POOL_RELAXABLE, GPUPoolSpec
from wanka.api.tenantqueue import TenantQueueSpec
from wanka.api.trainingjob import TrainingJobSpec
from wanka.core import podpolicy

OWN = "train-wanka"


def template(**spec: Any) -> dict[str, Any]:
    container = {"name": "trainer", "image": "busybox", **spec.pop("container", {})}
    return {"spec": {"containers": [container], **spec}}


CASES = [
    # (name, template, want rule or None, want field)
    ("plain", template(), None, ""),
    ("own service account", template(serviceAccountName=OWN), None, ""),
    ("safe capability", template(container={"securityContext": {"capabilities": {"add": ["IPC_LOCK"]}}}),
     None, ""),
    ("unprivileged explicitly", template(container={"securityContext": {"privileged": False}}), None, ""),
    ("cpu and memory", template(container={"resources": {"limits": {"cpu": "2", "memory": "1Gi"}}}), None, ""),
    ("privileged", template(container={"securityContext": {"privileged": True}}), "Privileged",
     "spec.template.spec.containers[trainer].securityContext.privileged"),
    ("privileged init container",
     {"spec": {"containers": [{"name": "t", "image": "x"}],
               "initContainers": [{"name": "setup", "image": "x", "securityContext": {"privileged": True}}]}},
     "Privileged", "spec.template.spec.initContainers[setup].securityContext.privileged"),
    ("hostPath of /", template(volumes=[{"name": "root", "hostPath": {"path": "/"}}]), "HostPath",
     "spec.template.spec.volumes[root].hostPath"),
    ("hostNetwork", template(hostNetwork=True), "HostNamespaces", "spec.template.spec.hostNetwork"),
    ("hostPID", template(hostPID=True), "HostNamespaces", "spec.template.spec.hostPID"),
    ("hostIPC", template(hostIPC=True), "HostNamespaces", "spec.template.spec.hostIPC"),
    ("SYS_ADMIN", template(container={"securityContext": {"capabilities": {"add": ["SYS_ADMIN"]}}}),
     "Capabilities", "spec.template.spec.containers[trainer].securityContext.capabilities.add"),
    ("nodeName", template(nodeName="gpu-1"), "NodeName", "spec.template.spec.nodeName"),
    ("visible devices", template(container={"env": [{"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"}]}),
     "AcceleratorEnv", "spec.template.spec.containers[trainer].env[NVIDIA_VISIBLE_DEVICES]"),
    ("driver capabilities",
     template(container={"env": [{"name": "NVIDIA_DRIVER_CAPABILITIES", "value": "all"}]}),
     "AcceleratorEnv", "spec.template.spec.containers[trainer].env[NVIDIA_DRIVER_CAPABILITIES]"),
    ("MPS limit", template(container={"env": [{"name": "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", "value": "100"}]}),
     "AcceleratorEnv", "spec.template.spec.containers[trainer].env[CUDA_MPS_ACTIVE_THREAD_PERCENTAGE]"),
    ("own GPU limit", template(container={"resources": {"limits": {"nvidia.com/gpu": "8"}}}),
     "AcceleratorResources", "spec.template.spec.containers[trainer].resources[nvidia.com/gpu]"),
    ("MIG request", template(container={"resources": {"requests": {"nvidia.com/mig-1g.10gb": "1"}}}),
     "AcceleratorResources", "spec.template.spec.containers[trainer].resources[nvidia.com/mig-1g.10gb]"),
    ("the pool's own resource", template(container={"resources": {"limits": {"example.com/npu": "1"}}}),
     "AcceleratorResources", "spec.template.spec.containers[trainer].resources[example.com/npu]"),
    ("foreign service account", template(serviceAccountName="cluster-admin-sa"), "ServiceAccount",
     "spec.template.spec.serviceAccountName"),
    ("deprecated serviceAccount field", template(serviceAccount="other"), "ServiceAccount",
     "spec.template.spec.serviceAccountName"),
]


@pytest.mark.parametrize(("name", "tmpl", "want_rule", "want_field"), CASES, ids=[c[0] for c in CASES])
def test_rules(name: str, tmpl: dict[str, Any], want_rule: str | None, want_field: str) -> None:
    found = podpolicy.violations(tmpl, own_service_account=OWN, pool_resource="example.com/npu")
    if want_rule is None:
        assert found == []
        return
    assert [(v.rule, v.field) for v in found] == [(want_rule, want_field)]
    message = podpolicy.refusal(tmpl, own_service_account=OWN, pool_resource="example.com/npu")
    assert message.startswith(want_field + ": ") and message.endswith(f"(pod policy rule {want_rule})")


@pytest.mark.parametrize("rule", POOL_RELAXABLE)
def test_a_pool_relaxes_only_the_rules_it_names(rule: str) -> None:
    tmpl = next(c[1] for c in CASES if c[2] == rule)
    assert podpolicy.violations(tmpl, own_service_account=OWN, relaxed=[rule], pool_resource="example.com/npu") == []
    others = [r for r in POOL_RELAXABLE if r != rule]
    assert podpolicy.violations(tmpl, own_service_account=OWN, relaxed=others, pool_resource="example.com/npu")


def test_a_queue_allows_service_accounts_by_name() -> None:
    tmpl = template(serviceAccountName="reader")
    assert podpolicy.violations(tmpl, own_service_account=OWN, allowed_service_accounts=["reader"]) == []
    assert podpolicy.violations(tmpl, own_service_account=OWN, allowed_service_accounts=["writer"])
    assert podpolicy.violations(tmpl, own_service_account=OWN, relaxed=POD_POLICY_RULES[:-1])


def test_the_first_rule_broken_is_the_one_reported() -> None:
    tmpl = template(hostNetwork=True, container={"securityContext": {"privileged": True}})
    assert [v.rule for v in podpolicy.violations(tmpl, own_service_account=OWN)] == ["Privileged", "HostNamespaces"]
    assert "rule Privileged" in podpolicy.refusal(tmpl, own_service_account=OWN)


def test_malformed_parts_are_not_a_crash() -> None:
    odd = {"spec": {"containers": ["x", {"name": "c", "env": "bad", "securityContext": []}], "volumes": {}}}
    assert podpolicy.violations(odd, own_service_account=OWN) == []


def _spec(priority: int = 0, **template_spec: Any) -> TrainingJobSpec:
    return TrainingJobSpec.model_validate({
        "pool": "p", "queue": "q", "replicas": 1, "priority": priority, "resources": {"gpus": 1},
        "template": template(**template_spec)})


@pytest.mark.parametrize(("name", "spec", "queue", "pool", "want"), [
    ("allowed", _spec(5), {"maxPriority": 5}, {}, None),
    ("no ceiling", _spec(1_000_000), {}, {}, None),
    ("above the ceiling", _spec(6), {"maxPriority": 5}, {}, "PriorityTooHigh"),
    ("template refused", _spec(hostPID=True), {}, {}, "TemplateNotAllowed"),
    ("pool relaxes", _spec(hostPID=True), {}, {"podPolicy": {"allow": ["HostNamespaces"]}}, None),
    ("queue allows the account", _spec(serviceAccountName="reader"), {"allowedServiceAccounts": ["reader"]},
     {}, None),
])
def test_admission_refusal(name: str, spec: TrainingJobSpec, queue: dict[str, Any], pool: dict[str, Any],
                           want: str | None) -> None:
    q = TenantQueueSpec.model_validate({"namespaces": ["ns"], **queue})
    p = GPUPoolSpec.model_validate({"nodeSelector": {}, **pool})
    got = podpolicy.admission_refusal(spec, OWN, q, "q", p)
    assert (got[0] if got else None) == want
    if got:
        assert got[1].startswith("spec.")


def test_service_account_is_not_pool_relaxable() -> None:
    with pytest.raises(ValueError, match=r"podPolicy|allow"):
        GPUPoolSpec.model_validate({"nodeSelector": {}, "podPolicy": {"allow": ["ServiceAccount"]}})
