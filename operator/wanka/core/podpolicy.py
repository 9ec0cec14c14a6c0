"""What a tenant's pod template may ask for: the rules, as pure functions over the template dict.

Wanka creates every replica pod under its own ServiceAccount, so a template must not be a way
around what the tenant could do alone: no privileged containers, no host filesystem or host
namespaces, no capabilities beyond a small safe list, no foreign ServiceAccount, no `nodeName`,
and nothing that picks or claims accelerators behind Wanka's accounting (the device environment
variables and accelerator resources are Wanka's to set).

The chart ships the same rules as ValidatingAdmissionPolicies (templates/podpolicy.yaml) with
the same messages, in the same order; this check is the backstop when they are not installed.
A pool may relax named rules (`GPUPool.spec.podPolicy.allow`), a TenantQueue may allow named
ServiceAccounts (`TenantQueue.spec.allowedServiceAccounts`).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from wanka.api.gpupool import GPUPoolSpec
from wanka.api.tenantqueue import TenantQueueSpec
from wanka.api.trainingjob import TrainingJobSpec

Rule = str  # one of RULES (wanka.api.common.POD_POLICY_RULES), checked in that order

# Pod Security "baseline" capabilities, plus IPC_LOCK: RDMA (NCCL over InfiniBand) pins
# memory, and locking a container's own memory reaches nothing outside it.
SAFE_CAPABILITIES = frozenset({
    "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "IPC_LOCK", "KILL", "MKNOD",
    "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
})
# Environment that picks devices or MPS limits: the container runtime and MPS trust it.
ACCELERATOR_ENV = frozenset({"NVIDIA_VISIBLE_DEVICES", "NVIDIA_DRIVER_CAPABILITIES"})
ACCELERATOR_ENV_PREFIXES = ("CUDA_MPS_",)
# Extended-resource domains of accelerator device plugins.
ACCELERATOR_DOMAINS = frozenset({"nvidia.com", "amd.com", "gpu.intel.com", "habana.ai"})
HOST_NAMESPACES = ("hostNetwork", "hostPID", "hostIPC")


@dataclass(frozen=True, slots=True)
class Violation:
    rule: Rule
    field: str  # the offending field, as a path from the TrainingJob's spec
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message} (pod policy rule {self.rule})"


def _dict(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _containers(spec: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    for kind in ("initContainers", "containers"):
        for c in _list(spec.get(kind)):
            c = _dict(c)
            yield f"spec.template.spec.{kind}[{c.get('name', '')}]", c


def accelerator_resource(name: str, pool_resource: str = "") -> bool:
    """True for a resource a device plugin serves: Wanka asks for those itself."""
    return name == pool_resource or (name.split("/", 1)[0] in ACCELERATOR_DOMAINS and "/" in name)


def violations(
    template: Mapping[str, Any], *, own_service_account: str,
    allowed_service_accounts: Collection[str] = (), relaxed: Collection[str] = (),
    pool_resource: str = "",
) -> list[Violation]:
    """Every rule the pod template (a PodTemplateSpec dict) breaks, in `RULES` order."""
    spec = _dict(template.get("spec"))
    found: list[Violation] = []

    def add(rule: Rule, field: str, message: str) -> None:
        if rule not in relaxed:
            found.append(Violation(rule, field, message))

    containers = list(_containers(spec))
    for where, c in containers:
        if _dict(c.get("securityContext")).get("privileged") is True:
            add("Privileged", f"{where}.securityContext.privileged", "privileged containers are not allowed")
    for v in _list(spec.get("volumes")):
        v = _dict(v)
        if "hostPath" in v:
            add("HostPath", f"spec.template.spec.volumes[{v.get('name', '')}].hostPath",
                "hostPath volumes are not allowed")
    for key in HOST_NAMESPACES:
        if spec.get(key) is True:
            add("HostNamespaces", f"spec.template.spec.{key}", "the host's namespaces are not allowed")
    for where, c in containers:
        added = _list(_dict(_dict(c.get("securityContext")).get("capabilities")).get("add"))
        extra = [str(x) for x in added if str(x) not in SAFE_CAPABILITIES]
        if extra:
            add("Capabilities", f"{where}.securityContext.capabilities.add",
                f"{extra[0]} is not in the safe list ({', '.join(sorted(SAFE_CAPABILITIES))})")
    if spec.get("nodeName"):
        add("NodeName", "spec.template.spec.nodeName", "Wanka places the replicas; nodeName is not allowed")
    for where, c in containers:
        for e in _list(c.get("env")):
            name = str(_dict(e).get("name", ""))
            if name in ACCELERATOR_ENV or name.startswith(ACCELERATOR_ENV_PREFIXES):
                add("AcceleratorEnv", f"{where}.env[{name}]",
                    "Wanka sets the accelerator environment; ask for devices in spec.resources")
    for where, c in containers:
        res = _dict(c.get("resources"))
        for name in [str(k) for part in ("limits", "requests") for k in _dict(res.get(part))]:
            if accelerator_resource(name, pool_resource):
                add("AcceleratorResources", f"{where}.resources[{name}]",
                    "Wanka asks for accelerators itself; ask for them in spec.resources")
    account = spec.get("serviceAccountName") or spec.get("serviceAccount")
    if account and account != own_service_account and account not in allowed_service_accounts:
        add("ServiceAccount", "spec.template.spec.serviceAccountName",
            f"{account} is not the job's own ServiceAccount ({own_service_account}) and its "
            "TenantQueue does not list it in allowedServiceAccounts")
    return found


def refusal(
    template: Mapping[str, Any], *, own_service_account: str,
    allowed_service_accounts: Collection[str] = (), relaxed: Collection[str] = (),
    pool_resource: str = "",
) -> str:
    """The message refusing the template ("" when it is allowed): the first rule it breaks,
    worded as the admission policy words it."""
    found = violations(template, own_service_account=own_service_account,
                       allowed_service_accounts=allowed_service_accounts, relaxed=relaxed,
                       pool_resource=pool_resource)
    return str(found[0]) if found else ""


def admission_refusal(
    spec: TrainingJobSpec, own_service_account: str, queue: TenantQueueSpec, queue_name: str,
    pool: GPUPoolSpec,
) -> tuple[str, str] | None:
    """(cause, message) when the job's queue or pool does not let it ask for what it asks for."""
    if queue.max_priority is not None and spec.priority > queue.max_priority:
        return ("PriorityTooHigh", f"spec.priority: {spec.priority} is above TenantQueue {queue_name}'s "
                f"maxPriority {queue.max_priority}")
    message = refusal(spec.template.wire(), own_service_account=own_service_account,
                      allowed_service_accounts=queue.allowed_service_accounts,
                      relaxed=pool.pod_policy.allow, pool_resource=pool.accelerator.resource_name)
    return ("TemplateNotAllowed", message) if message else None
