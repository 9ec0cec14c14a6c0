"""Reads the node constraints of a TrainingJob's pod template into the core's plain data.

Templates come from tenants and are not validated as pods until the pods are created, so
the parser accepts anything: it returns what is valid and lists what is not. The API server
would refuse such a pod, so a job with problems should wait with them as its reason; what
is returned matters for a gang already placed. An invalid affinity term is dropped whole (it
never matches, as in Kubernetes); an invalid toleration is dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast, get_args

from wanka.core.constraints import (
    FieldOperator,
    Requirement,
    SelectorOperator,
    TaintEffect,
    Term,
    Toleration,
    TolerationOperator,
)

SELECTOR_OPERATORS: frozenset[str] = frozenset(get_args(SelectorOperator))
FIELD_OPERATORS: frozenset[str] = frozenset(get_args(FieldOperator))
EFFECTS: frozenset[str] = frozenset(get_args(TaintEffect))
TOLERATION_OPERATORS: frozenset[str] = frozenset(get_args(TolerationOperator))
NAME_FIELD = "metadata.name"  # the one node field Kubernetes lets matchFields select


@dataclass
class NodeConstraints:
    """A template's tolerations, nodeSelector and required node affinity (None: none)."""

    tolerations: tuple[Toleration, ...] = ()
    node_selector: tuple[tuple[str, str], ...] = ()
    affinity: tuple[Term, ...] | None = None
    problems: list[str] = field(default_factory=list)


def _one_of(value: Any, allowed: frozenset[str]) -> bool:
    return isinstance(value, str) and value in allowed  # a list or a map is never hashed


def _is_int(value: str) -> bool:
    try:
        int(value)
    except ValueError:
        return False
    return True


def _strings(raw: Any) -> tuple[str, ...] | None:
    if raw is None:
        return ()
    if isinstance(raw, list) and all(isinstance(v, str) for v in raw):
        return tuple(raw)
    return None


def _requirement(raw: Any, where: str, problems: list[str]) -> Requirement | None:
    if not isinstance(raw, Mapping):
        problems.append(f"{where}: not an object")
        return None
    key, op, values = raw.get("key"), raw.get("operator"), _strings(raw.get("values"))
    if not isinstance(key, str) or not key:
        problems.append(f"{where}.key: a label key is required")
    elif not _one_of(op, SELECTOR_OPERATORS):
        problems.append(f"{where}.operator: {op!r} is not one of {', '.join(sorted(SELECTOR_OPERATORS))}")
    elif values is None:
        problems.append(f"{where}.values: a list of strings is required")
    elif op in ("In", "NotIn") and not values:
        problems.append(f"{where}.values: {op} needs at least one value")
    elif op in ("Exists", "DoesNotExist") and values:
        problems.append(f"{where}.values: {op} takes no values")
    elif op in ("Gt", "Lt") and (len(values) != 1 or not _is_int(values[0])):
        problems.append(f"{where}.values: {op} needs exactly one integer")
    else:
        return Requirement(key, cast(SelectorOperator, op), values)
    return None


def _term(raw: Any, where: str, problems: list[str]) -> Term | None:
    if not isinstance(raw, Mapping):
        problems.append(f"{where}: not an object")
        return None
    exprs, fields = raw.get("matchExpressions") or [], raw.get("matchFields") or []
    if not isinstance(exprs, list) or not isinstance(fields, list):
        problems.append(f"{where}: matchExpressions and matchFields must be lists")
        return None
    before = len(problems)
    reqs = [_requirement(e, f"{where}.matchExpressions[{i}]", problems) for i, e in enumerate(exprs)]
    names_in: list[frozenset[str]] = []
    names_not_in: set[str] = set()
    for i, f in enumerate(fields):
        at = f"{where}.matchFields[{i}]"
        values = _strings(f.get("values")) if isinstance(f, Mapping) else None
        if not isinstance(f, Mapping) or f.get("key") != NAME_FIELD:
            problems.append(f"{at}.key: only {NAME_FIELD} can be matched")
        elif not _one_of(f.get("operator"), FIELD_OPERATORS):
            problems.append(f"{at}.operator: {f.get('operator')!r} is not In or NotIn")
        elif values is None or len(values) != 1:
            problems.append(f"{at}.values: exactly one node name is required")
        elif f["operator"] == "In":
            names_in.append(frozenset(values))
        else:
            names_not_in.update(values)
    if len(problems) > before:
        return None  # a term with an invalid requirement never matches
    return Term(tuple(r for r in reqs if r is not None), tuple(names_in), frozenset(names_not_in))


def _affinity(raw: Any, problems: list[str]) -> tuple[Term, ...] | None:
    """Required node affinity: None when not asked for, () when asked for but unreadable."""
    where = "affinity"
    for key in ("nodeAffinity", "requiredDuringSchedulingIgnoredDuringExecution", "nodeSelectorTerms"):
        if raw is None:
            return None
        if not isinstance(raw, Mapping):
            problems.append(f"{where}: not an object")
            return ()
        raw, where = raw.get(key), f"{where}.{key}"
    terms = raw
    if not isinstance(terms, list) or not terms:
        problems.append(f"{where}: at least one term is required")
        return ()
    parsed = [_term(t, f"{where}[{i}]", problems) for i, t in enumerate(terms)]
    return tuple(t for t in parsed if t is not None)


def _toleration(raw: Any, where: str, problems: list[str]) -> Toleration | None:
    if not isinstance(raw, Mapping):
        problems.append(f"{where}: not an object")
        return None
    key, op = raw.get("key") or "", raw.get("operator") or "Equal"
    value, effect = raw.get("value") or "", raw.get("effect") or ""
    if not isinstance(key, str) or not isinstance(value, str):
        problems.append(f"{where}: key and value must be strings")
    elif not _one_of(op, TOLERATION_OPERATORS):
        problems.append(f"{where}.operator: {op!r} is not Equal or Exists")
    elif effect and not _one_of(effect, EFFECTS):
        problems.append(f"{where}.effect: {effect!r} is not one of {', '.join(sorted(EFFECTS))}")
    elif op == "Exists" and value:
        problems.append(f"{where}.value: Exists takes no value")
    elif not key and op != "Exists":
        problems.append(f"{where}.operator: an empty key needs Exists")
    else:
        return Toleration(key, "Exists" if op == "Exists" else "Equal", value, cast(TaintEffect, effect))
    return None


def template_constraints(template: Any) -> NodeConstraints:
    """The node constraints of a pod template (a PodTemplateSpec as a dict); never raises."""
    out = NodeConstraints()
    spec = template.get("spec") if isinstance(template, Mapping) else None
    if not isinstance(spec, Mapping):
        return out
    problems = out.problems
    selector = spec.get("nodeSelector")
    if isinstance(selector, Mapping):
        pairs = []
        for k, v in selector.items():
            if isinstance(k, str) and isinstance(v, str):
                pairs.append((k, v))
            else:
                problems.append(f"nodeSelector[{k!r}]: key and value must be strings")
        out.node_selector = tuple(sorted(pairs))
    elif selector is not None:
        problems.append("nodeSelector: not a map of labels")
    out.affinity = _affinity(spec.get("affinity"), problems)
    tolerations = spec.get("tolerations")
    if isinstance(tolerations, list):
        parsed = [_toleration(t, f"tolerations[{i}]", problems) for i, t in enumerate(tolerations)]
        out.tolerations = tuple(t for t in parsed if t is not None)
    elif tolerations is not None:
        problems.append("tolerations: not a list")
    return out
