"""Building blocks shared by every Wanka resource: base model, conditions, label selectors."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

from pydantic import AliasGenerator, BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

M = TypeVar("M", bound=BaseModel)

GROUP = "wanka.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
CATEGORY = "wanka"

# Bounds keep CEL rule costs and object sizes predictable for the API server.
MAX_NAME = 253
MAX_LABEL_KEY = 317  # prefix (253) + "/" + name (63)
MAX_MESSAGE = 32768
LABEL_KEY_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"  # optional DNS prefix
    r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"  # name
)
# Pod-template rules (wanka.core.podpolicy), in the order they are checked.
POD_POLICY_RULES = (
    "Privileged", "HostPath", "HostNamespaces", "Capabilities", "NodeName",
    "AcceleratorEnv", "AcceleratorResources", "ServiceAccount",
)
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


def cel(rule: str, message: str, **extra: str) -> dict[str, Any]:
    """One `x-kubernetes-validations` entry."""
    return {"rule": rule, "message": message, **extra}


class WankaModel(BaseModel):
    """Base of every API model: camelCase on the wire, unknown fields refused."""

    model_config = ConfigDict(
        alias_generator=AliasGenerator(alias=to_camel),
        populate_by_name=True,
        extra="forbid",
        frozen=False,
    )

    def wire(self) -> dict[str, Any]:
        """The object as the API server stores it (camelCase, unset optionals left out)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(WankaModel):
    """An observed fact about the object, in the shape of metav1.Condition."""

    type: str = Field(
        description="PascalCase name of the fact, e.g. Admitted or Degraded.",
        max_length=316,
        pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$",
    )
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(
        description="PascalCase machine-readable cause of the last transition.",
        min_length=1,
        max_length=1024,
        pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
    )
    message: str = Field(default="", description="What happened, for a person.", max_length=MAX_MESSAGE)
    last_transition_time: datetime = Field(
        description="When the status last changed (not when it was last checked)."
    )
    observed_generation: int | None = Field(
        default=None, ge=0, description="The .metadata.generation the condition was computed from."
    )


class LabelSelectorRequirement(WankaModel):
    """One set-based requirement of a label selector."""

    key: str = Field(description="The label key.", max_length=MAX_LABEL_KEY)
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"] = Field(
        description="In, NotIn, Exists or DoesNotExist."
    )
    values: list[str] = Field(
        default_factory=list,
        max_length=64,
        description="Values for In and NotIn; must be empty for Exists and DoesNotExist.",
        json_schema_extra={"items": {"type": "string", "maxLength": 63}},
    )


class LabelSelector(WankaModel):
    """A Kubernetes label selector: all conditions must hold."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "!has(self.matchExpressions) || self.matchExpressions.all(e, "
                    "e.operator in ['In', 'NotIn'] ? (has(e.values) && e.values.size() > 0) "
                    ": (!has(e.values) || e.values.size() == 0))",
                    "matchExpressions: In and NotIn need values; Exists and DoesNotExist take none",
                )
            ]
        }
    )

    match_labels: dict[str, str] = Field(
        default_factory=dict, description="Labels that must be present with these exact values."
    )
    match_expressions: list[LabelSelectorRequirement] = Field(
        default_factory=list, max_length=32, description="Set-based requirements."
    )

    def matches(self, labels: dict[str, str]) -> bool:
        for key, value in self.match_labels.items():
            if labels.get(key) != value:
                return False
        for expr in self.match_expressions:
            present = expr.key in labels
            if expr.operator == "Exists" and not present:
                return False
            if expr.operator == "DoesNotExist" and present:
                return False
            if expr.operator == "In" and labels.get(expr.key) not in expr.values:
                return False
            if expr.operator == "NotIn" and present and labels[expr.key] in expr.values:
                return False
        return True


def now_utc() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def set_condition(
    conditions: list[Condition],
    type_: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    generation: int | None,
    now: datetime,
) -> bool:
    """Upsert a condition; `lastTransitionTime` moves only when the status changes.

    Returns True when anything about the condition changed.
    """
    for i, cond in enumerate(conditions):
        if cond.type != type_:
            continue
        if (cond.status, cond.reason, cond.message, cond.observed_generation) == (
            status,
            reason,
            message,
            generation,
        ):
            return False
        transition = now if cond.status != status else cond.last_transition_time
        conditions[i] = Condition(
            type=type_,
            status=status,
            reason=reason,
            message=message,
            last_transition_time=transition,
            observed_generation=generation,
        )
        return True
    conditions.append(
        Condition(
            type=type_,
            status=status,
            reason=reason,
            message=message,
            last_transition_time=now,
            observed_generation=generation,
        )
    )
    return True


def find_condition(conditions: list[Condition], type_: str) -> Condition | None:
    return next((c for c in conditions if c.type == type_), None)


def lenient(model: type[M], raw: object) -> M:
    """Parse `raw` into `model`, keeping every field that is valid and dropping the rest.

    For status written by another operator version: an unknown or malformed field must cost
    only itself (never, say, the placement beside it). Lists keep their valid items.
    """
    data = raw if isinstance(raw, dict) else {}
    try:
        return model.model_validate(data)
    except ValidationError:
        pass
    kept: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        key = info.alias or name
        if key not in data:
            continue
        value = data[key]
        try:
            model.model_validate({key: value})
        except ValidationError as exc:
            # Required fields of `model` missing from the probe are not this field's fault.
            if any(err["loc"] and err["loc"][0] == key for err in exc.errors()):
                if isinstance(value, list):
                    good = [item for item in value if _item_ok(model, key, item)]
                    if _item_ok_list(model, key, good):
                        kept[key] = good
                continue
        kept[key] = value
    try:
        return model.model_validate(kept)
    except ValidationError:
        return model.model_construct()


def _item_ok(model: type[BaseModel], key: str, item: object) -> bool:
    return _item_ok_list(model, key, [item])


def _item_ok_list(model: type[BaseModel], key: str, items: list[Any]) -> bool:
    try:
        model.model_validate({key: items})
    except ValidationError as exc:
        return not any(err["loc"] and err["loc"][0] == key for err in exc.errors())
    return True
