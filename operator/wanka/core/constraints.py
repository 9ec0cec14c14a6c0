"""Node constraints of a request as plain data: taints and tolerations, node selector and
required node affinity, with Kubernetes' matching rules.

Node-side: a node's taints (key, value, effect). Request-side: tolerations, a label equality
map (the pod's `nodeSelector`) and required affinity terms (ORed; the requirements of one
term ANDed). A `PreferNoSchedule` taint never keeps work off a node.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

TaintEffect = Literal["NoSchedule", "PreferNoSchedule", "NoExecute"]
TolerationOperator = Literal["Equal", "Exists"]
SelectorOperator = Literal["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"]
FieldOperator = Literal["In", "NotIn"]

BLOCKING_EFFECTS = frozenset({"NoSchedule", "NoExecute"})


@dataclass(frozen=True, slots=True)
class Taint:
    key: str
    value: str = ""
    effect: TaintEffect = "NoSchedule"


@dataclass(frozen=True, slots=True)
class Toleration:
    """An empty `key` with `Exists` tolerates every taint; an empty `effect` every effect."""

    key: str = ""
    operator: TolerationOperator = "Equal"
    value: str = ""
    effect: TaintEffect | Literal[""] = ""

    def tolerates(self, taint: Taint) -> bool:
        if self.effect and self.effect != taint.effect:
            return False
        if self.key and self.key != taint.key:
            return False
        return self.operator == "Exists" or self.value == taint.value


@dataclass(frozen=True, slots=True)
class Requirement:
    """One `matchExpressions` entry: a label key, an operator and its values.

    Gt and Lt compare integers: `values` holds one, and a label that is not an integer fails.
    """

    key: str
    operator: SelectorOperator
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        value = labels.get(self.key)
        op = self.operator
        if op == "In":
            return value is not None and value in self.values
        if op == "NotIn":
            return value is None or value not in self.values
        if op == "Exists":
            return value is not None
        if op == "DoesNotExist":
            return value is None
        try:
            have, bound = int(value or ""), int(self.values[0])
        except (ValueError, IndexError):
            return False
        return have > bound if op == "Gt" else have < bound


@dataclass(frozen=True, slots=True)
class Term:
    """One node selector term: every expression and every field requirement must hold.

    `names_in` / `names_not_in` are `matchFields` on `metadata.name` (In / NotIn). A term
    with no requirement at all matches no node, as in Kubernetes.
    """

    expressions: tuple[Requirement, ...] = ()
    names_in: tuple[frozenset[str], ...] = ()
    names_not_in: frozenset[str] = frozenset()

    def matches(self, name: str, labels: Mapping[str, str]) -> bool:
        if not (self.expressions or self.names_in or self.names_not_in):
            return False
        if name in self.names_not_in:
            return False
        if any(name not in names for names in self.names_in):
            return False
        return all(req.matches(labels) for req in self.expressions)


def untolerated(tolerations: Sequence[Toleration], taints: Sequence[Taint]) -> Taint | None:
    """The first NoSchedule/NoExecute taint none of `tolerations` tolerates, or None."""
    for taint in taints:
        if taint.effect in BLOCKING_EFFECTS and not any(t.tolerates(taint) for t in tolerations):
            return taint
    return None


def selects(
    node_selector: Sequence[tuple[str, str]],
    affinity: Sequence[Term] | None,
    name: str,
    labels: Mapping[str, str],
) -> bool:
    """Whether a node passes the label equality map and (when given) one of the terms.

    `affinity` None: no required affinity; an empty sequence: one that matches no node.
    """
    for key, value in node_selector:
        if labels.get(key) != value:
            return False
    return affinity is None or any(term.matches(name, labels) for term in affinity)
