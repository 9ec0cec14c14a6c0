"""Generates the CustomResourceDefinitions in crds/ from the pydantic models (the source of truth)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel, TypeAdapter

from wanka.api.common import CATEGORY, GROUP, VERSION, cel
from wanka.api.gpupool import GPUPoolSpec, GPUPoolStatus
from wanka.api.progress import TrainingJobProgressSpec
from wanka.api.tenantqueue import TenantQueueSpec, TenantQueueStatus
from wanka.api.trainingjob import MAX_JOB_NAME, TrainingJobSpec, TrainingJobStatus

# JSON-schema keywords that carry over into a structural OpenAPI v3 schema unchanged.
_KEEP = {
    "type", "description", "default", "enum", "format", "pattern",
    "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
    "minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties",
    "nullable",
}


@dataclass(frozen=True)
class Resource:
    kind: str
    plural: str
    short_names: tuple[str, ...]
    scope: str
    spec: type[BaseModel]
    status: type[BaseModel] | None  # None: no status, no status subresource
    description: str
    columns: tuple[dict[str, Any], ...]
    root_rules: tuple[dict[str, str], ...] = field(default=())

    @property
    def name(self) -> str:
        return f"{self.plural}.{GROUP}"


def _col(name: str, path: str, type_: str = "string", priority: int = 0, desc: str = "") -> dict[str, Any]:
    col: dict[str, Any] = {"name": name, "type": type_, "jsonPath": path}
    if priority:
        col["priority"] = priority
    if desc:
        col["description"] = desc
    return col


AGE = _col("Age", ".metadata.creationTimestamp", "date")

RESOURCES: tuple[Resource, ...] = (
    Resource(
        kind="GPUPool",
        plural="gpupools",
        short_names=("gp",),
        scope="Cluster",
        spec=GPUPoolSpec,
        status=GPUPoolStatus,
        description="A pool of GPU nodes that Wanka schedules as one computer.",
        columns=(
            _col("Mode", ".spec.sharing.mode"),
            _col("Nodes", ".status.nodes.total", "integer"),
            _col("Healthy", ".status.nodes.healthy", "integer"),
            _col("GPUs", ".status.gpus.total", "integer"),
            _col("Allocated", ".status.gpus.allocated", "number"),
            _col("Free", ".status.gpus.free", "number"),
            _col("Stranded", ".status.gpus.stranded", "number", priority=1),
            _col("Ready", ".status.conditions[?(@.type==\"Ready\")].status"),
            AGE,
        ),
    ),
    Resource(
        kind="TrainingJob",
        plural="trainingjobs",
        short_names=("tj",),
        scope="Namespaced",
        spec=TrainingJobSpec,
        status=TrainingJobStatus,
        description="A multi-node training job placed all-or-nothing and resumed from checkpoints.",
        columns=(
            _col("Phase", ".status.phase"),
            _col("Pool", ".spec.pool"),
            _col("Queue", ".spec.queue", priority=1),
            _col("Replicas", ".spec.replicas", "integer"),
            _col("Ready", ".status.replicasReady", "integer"),
            _col("GPUs", ".status.gpus", "number"),
            _col("Restarts", ".status.restarts", "integer"),
            AGE,
        ),
        root_rules=(
            cel(
                f"self.metadata.name.size() <= {MAX_JOB_NAME}",
                f"metadata.name must be at most {MAX_JOB_NAME} characters: pod hostnames "
                "<name>-<replica> and the headless Service <name> are limited to 63",
            ),
            cel(
                "self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')",
                "metadata.name must start with a letter and hold only lowercase letters, digits "
                "and '-': it names the job's headless Service",
            ),
        ),
    ),
    Resource(
        kind="TenantQueue",
        plural="tenantqueues",
        short_names=("tq",),
        scope="Cluster",
        spec=TenantQueueSpec,
        status=TenantQueueStatus,
        description="A tenant's queue: quotas per pool, fair-share weight and preemption policy.",
        columns=(
            _col("Weight", ".spec.weight", "number"),
            _col("Running", ".status.running", "integer"),
            _col("Pending", ".status.pending", "integer"),
            AGE,
        ),
    ),
    Resource(
        kind="TrainingJobProgress",
        plural="trainingjobprogresses",
        short_names=("tjp",),
        scope="Namespaced",
        spec=TrainingJobProgressSpec,
        status=None,
        description="A TrainingJob's progress report, written by its workload: one per job, named and "
        "owned by the job; only the job's ServiceAccount may update it.",
        columns=(
            _col("Step", ".spec.step", "integer"),
            _col("Reported", ".spec.time", "date"),
            _col("Path", ".spec.path", priority=1),
            AGE,
        ),
    ),
)


def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    """Inline $refs and turn a pydantic JSON schema into a structural OpenAPI v3 schema."""
    if isinstance(node, list):
        return [_resolve(x, defs) for x in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = _resolve(defs[node["$ref"].rsplit("/", 1)[-1]], defs)
        # A field's own description and default win over the referenced model's.
        extra = {k: v for k, v in node.items() if k != "$ref"}
        return {**target, **_resolve(extra, defs)}
    if "anyOf" in node:
        # Optional[X] is anyOf [X, null]: absence already means null in Kubernetes.
        options = [o for o in node["anyOf"] if o.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"cannot express a union in a structural schema: {node}")
        merged = {**_resolve(options[0], defs)}
        for k, v in node.items():
            if k != "anyOf":
                merged[k] = _resolve(v, defs)
        node = merged
    out: dict[str, Any] = {}
    if "const" in node:
        out["enum"] = [node["const"]]
    for key, value in node.items():
        if key == "default" and value is None:
            continue  # absent already means unset
        if key in _KEEP or key.startswith("x-kubernetes-"):
            out[key] = value
        elif key == "properties":
            out["properties"] = {k: _resolve(v, defs) for k, v in value.items()}
        elif key == "required":
            out["required"] = sorted(value)
        elif key == "items":
            out["items"] = _resolve(value, defs)
        elif key == "additionalProperties":
            if isinstance(value, dict) and value:
                out["additionalProperties"] = _resolve(value, defs)
            elif value is True or value == {}:
                out["x-kubernetes-preserve-unknown-fields"] = True
    # JSON Schema 2020 writes exclusive bounds as numbers; OpenAPI v3.0 wants a flag on the bound.
    for exclusive, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(out.get(exclusive), int | float) and not isinstance(out[exclusive], bool):
            out[bound] = out[exclusive]
            out[exclusive] = True
    if out.get("x-kubernetes-preserve-unknown-fields") and "type" not in out:
        out["type"] = "object"
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    return out


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation such as `X`, `X | None` or `list[X]`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def _factory_defaults(model: type[BaseModel], schema: dict[str, Any]) -> None:
    """pydantic leaves `default_factory` values out of the schema; the API server needs them
    to apply nested defaults (an absent `gang` must still get its timeout)."""
    props = schema.get("properties") or {}
    for name, info in model.model_fields.items():
        sub = props.get(info.alias or name)
        if sub is None:
            continue
        if info.default_factory is not None and "default" not in sub and info.annotation:
            value = info.default_factory()  # type: ignore[call-arg]
            sub["default"] = TypeAdapter(info.annotation).dump_python(
                value, mode="json", by_alias=True, exclude_none=True
            )
        nested = _model_of(info.annotation)
        if nested is not None:
            _factory_defaults(nested, sub.get("items", sub) if sub.get("type") == "array" else sub)


def openapi_schema(model: type[BaseModel]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    schema: dict[str, Any] = _resolve(raw, defs)
    _factory_defaults(model, schema)
    _check_structural(schema, model.__name__)
    return schema


def _check_structural(schema: dict[str, Any], where: str) -> None:
    if "type" not in schema and not schema.get("x-kubernetes-int-or-string"):
        raise ValueError(f"{where}: every schema node needs a type: {schema}")
    for name, sub in schema.get("properties", {}).items():
        _check_structural(sub, f"{where}.{name}")
    if "items" in schema:
        _check_structural(schema["items"], f"{where}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        _check_structural(schema["additionalProperties"], f"{where}{{}}")


def crd(resource: Resource) -> dict[str, Any]:
    root: dict[str, Any] = {
        "type": "object",
        "description": resource.description,
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": openapi_schema(resource.spec),
        },
    }
    if resource.status is not None:
        root["properties"]["status"] = openapi_schema(resource.status)
    if resource.root_rules:
        root["x-kubernetes-validations"] = list(resource.root_rules)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": resource.name,
            "labels": {"app.kubernetes.io/name": "wanka", "app.kubernetes.io/part-of": "wanka"},
        },
        "spec": {
            "group": GROUP,
            "scope": resource.scope,
            "names": {
                "kind": resource.kind,
                "listKind": f"{resource.kind}List",
                "plural": resource.plural,
                "singular": resource.kind.lower(),
                "shortNames": list(resource.short_names),
                "categories": [CATEGORY],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    **({"subresources": {"status": {}}} if resource.status is not None else {}),
                    "additionalPrinterColumns": list(resource.columns),
                    "schema": {"openAPIV3Schema": root},
                }
            ],
        },
    }


def render(resource: Resource) -> str:
    header = "# Generated by `make crds` from operator/wanka/api; do not edit.\n"
    return header + str(yaml.safe_dump(crd(resource), sort_keys=False, width=100))


def write_all(out_dirs: list[Path]) -> list[Path]:
    written = []
    for out in out_dirs:
        out.mkdir(parents=True, exist_ok=True)
        for resource in RESOURCES:
            path = out / f"{GROUP}_{resource.plural}.yaml"
            path.write_text(render(resource))
            written.append(path)
    return written


def stale(out_dir: Path) -> list[str]:
    """Files in out_dir that differ from what the models generate."""
    wrong = []
    for resource in RESOURCES:
        path = out_dir / f"{GROUP}_{resource.plural}.yaml"
        if not path.exists() or path.read_text() != render(resource):
            wrong.append(str(path))
    return wrong


def _run(args: argparse.Namespace) -> int:
    dirs = [Path(d) for d in args.out]
    if args.check:
        wrong = [p for d in dirs for p in stale(d)]
        for p in wrong:
            print(f"stale: {p} (run `make crds`)", file=sys.stderr)
        return 1 if wrong else 0
    for path in write_all(dirs):
        print(path)
    return 0


def register(sub: Any) -> None:
    parser = sub.add_parser("crds", help="generate the CRD YAML from the API models")
    parser.add_argument("--out", action="append", default=None, help="output directory (repeat)")
    parser.add_argument("--check", action="store_true", help="fail when the files are stale")
    parser.set_defaults(func=lambda a: _run(_with_default_out(a)))


def _with_default_out(args: argparse.Namespace) -> argparse.Namespace:
    if not args.out:
        args.out = ["crds"]
    return args
