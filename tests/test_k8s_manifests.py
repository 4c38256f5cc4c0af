"""Offline checks of what ``k8s/`` asks a cluster to run (no cluster, no network).

* Built-in kinds (Namespace, ConfigMap, Secret, Ingress, NetworkPolicy, PodDisruptionBudget): the
  strict Kubernetes 1.31 JSON schemas bundled with ``kubernetes-validate`` (unknown fields fail).
* KubeRay kinds (RayJob, RayService): no CRD schema is available offline, so a hand-written schema
  of the top-level and spec fields we use (``additionalProperties: false`` at every level), whose
  pod templates (head, workers, job submitter) are the strict Kubernetes ``PodTemplateSpec``;
  every ``serveConfigV2`` parsed by Ray Serve's own ``ServeDeploySchema`` and ``AutoscalingConfig``
  (plus a key diff: those models ignore unknown keys), its ``args`` by ``ServeSettings`` (which
  refuses unknown keys), and RayJob entrypoints by the argument parsers of the real CLI (rebuilt
  from the source, without importing the training code).
* prometheus-operator kinds: the ``cloudcoil`` pydantic models, plus the same key diff.
* Consistency: the Ray pin of pyproject.toml = the Dockerfile's base image = every ``rayVersion``
  = every image tag; serveConfigV2 ``args`` agree with its per-deployment overrides and with the
  ConfigMap; the PrometheusRule holds exactly ``serving/prometheus_alerts.yml``; monitors scrape
  ports the pods declare.
* Fail closed: every Ray and submitter pod non-root with a read-only root filesystem (and the
  emptyDirs Ray needs); the NetworkPolicies evaluated on the pods KubeRay and the Milvus chart will
  create (labels as KubeRay sets them): default deny, and a table of connections that must get
  through and that must not; PodDisruptionBudgets that select the query service's pods, each pod
  once; nothing publishes the Ray dashboard; Milvus runs with authentication and only its clients
  get the token, from its Secret.

The raw files are checked without ``kubectl``; the rendered overlays (``kubectl kustomize``) only
when ``kubectl`` is on PATH. Each kind of check is shown to fail on a typo'd field at the end.
"""

from __future__ import annotations

import argparse
import ast
import copy
import functools
import importlib
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import tomllib
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
K8S_VERSION = "1.31"
OVERLAYS = ["overlays/dev", "overlays/dev/jobs", "overlays/prod", "overlays/prod/jobs"]
#: Files under k8s/ that are not whole Kubernetes objects: kustomize inputs and Helm values.
NOT_MANIFESTS = ("kustomization.yaml",)
PATCH_SUFFIX = ".patch.yaml"
HELM_VALUES = K8S / "milvus" / "values.yaml"
ENV_CONFIGMAP = K8S / "base" / "env-configmap.yaml"


# ------------------------------------------------------------------------------------ inputs


@functools.cache
def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


@functools.cache
def ray_version() -> str:
    for dep in pyproject()["project"]["dependencies"]:
        m = re.fullmatch(r"ray(\[[^\]]*\])?==([0-9][\w.]*)", dep.replace(" ", ""))
        if m:
            return m.group(2)
    raise AssertionError("pyproject.toml pins no ray==X")


def load_all(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def manifest_files() -> list[Path]:
    return sorted(
        p
        for p in K8S.rglob("*.yaml")
        if p.name not in NOT_MANIFESTS and not p.name.endswith(PATCH_SUFFIX) and p != HELM_VALUES
    )


@functools.cache
def raw_documents() -> list[tuple[str, dict]]:
    """Every object of the files under k8s/ (shared: copy before changing one)."""
    out = []
    for path in manifest_files():
        for i, doc in enumerate(load_all(path)):
            out.append((f"{path.relative_to(ROOT)}#{i} {doc.get('kind')}/{doc.get('metadata', {}).get('name')}", doc))
    return out


@functools.cache
def env_configmap() -> dict[str, str]:
    (doc,) = load_all(ENV_CONFIGMAP)
    assert doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == "regionmir-env"
    return doc["data"]


@functools.cache
def render(overlay: str) -> list[dict]:
    result = subprocess.run(
        ["kubectl", "kustomize", str(K8S / overlay)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, f"kubectl kustomize {overlay} failed:\n{result.stderr}"
    return [d for d in yaml.safe_load_all(result.stdout) if d is not None]


# Ray Serve's own pydantic models warn about pydantic-v1 idioms when imported: not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

needs_kubectl = pytest.mark.skipif(
    shutil.which("kubectl") is None,
    reason="kubectl not on PATH: the rendered overlays are not checked (the raw files under k8s/ still are)",
)


# ------------------------------------------------------------------ key diff for lenient models


def unknown_keys(given: Any, parsed: Any, path: str = "") -> list[str]:
    """Keys of ``given`` that a model dropped while parsing (``parsed`` is its dump): typos."""
    out: list[str] = []
    if isinstance(given, dict) and isinstance(parsed, dict):
        for key, value in given.items():
            where = f"{path}.{key}" if path else str(key)
            if key not in parsed:
                out.append(where)
            else:
                out += unknown_keys(value, parsed[key], where)
    elif isinstance(given, list) and isinstance(parsed, list):
        for i, (a, b) in enumerate(zip(given, parsed)):
            out += unknown_keys(a, b, f"{path}[{i}]")
    return out


# ------------------------------------------------------------------------------ built-in kinds


def builtin_problems(doc: dict) -> list[str]:
    import kubernetes_validate

    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"{'.'.join(map(str, exc.path)) or '(top)'}: {exc.message}"]
    except kubernetes_validate.SchemaNotFoundError as exc:
        return [exc.message]
    return []


# ------------------------------------------------------------------------------- KubeRay kinds

K8S_DEFS = "https://kubernetes.io/api/_definitions.json#/$defs/"


def _k8s(name: str) -> dict:
    return {"$ref": K8S_DEFS + name}


def _obj(properties: dict, required: tuple[str, ...] = ()) -> dict:
    return {"type": "object", "properties": properties, "required": list(required), "additionalProperties": False}


_STR, _BOOL, _NUM = {"type": "string"}, {"type": "boolean"}, {"type": "number"}
_INT0, _INT1 = {"type": "integer", "minimum": 0}, {"type": "integer", "minimum": 1}
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_POD_TEMPLATE = {"$ref": "https://kubernetes.io/api/podtemplatespec/v1"}  # the strict PodTemplateSpec

# Field names from KubeRay's ray.io/v1 Go types (ray-operator/apis/ray/v1/*_types.go). Only fields
# KubeRay documents for current releases; the RayService health thresholds
# (serviceUnhealthySecondThreshold, deploymentUnhealthySecondThreshold) are left out on purpose:
# the operator ignores them since KubeRay issue 1685, so setting them would mislead.
_HEAD_GROUP = _obj(
    {
        "rayStartParams": _STRING_MAP,
        "template": _POD_TEMPLATE,
        "serviceType": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]},
        "headService": _k8s("io.k8s.api.core.v1.Service"),
        "enableIngress": _BOOL,
    },
    required=("rayStartParams", "template"),
)
_WORKER_GROUP = _obj(
    {
        "groupName": _STR,
        "replicas": _INT0,
        "minReplicas": _INT0,
        "maxReplicas": _INT0,
        "idleTimeoutSeconds": _INT0,
        "rayStartParams": _STRING_MAP,
        "template": _POD_TEMPLATE,
        "numOfHosts": _INT1,
        "suspend": _BOOL,
        "scaleStrategy": _obj({"workersToDelete": {"type": "array", "items": _STR}}),
    },
    required=("groupName", "minReplicas", "maxReplicas", "rayStartParams", "template"),
)
_AUTOSCALER = _obj(
    {
        "upscalingMode": {"enum": ["Default", "Aggressive", "Conservative"]},
        "idleTimeoutSeconds": _INT0,
        "resources": _k8s("io.k8s.api.core.v1.ResourceRequirements"),
        "image": _STR,
        "imagePullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]},
        "securityContext": _k8s("io.k8s.api.core.v1.SecurityContext"),
        "env": {"type": "array", "items": _k8s("io.k8s.api.core.v1.EnvVar")},
        "envFrom": {"type": "array", "items": _k8s("io.k8s.api.core.v1.EnvFromSource")},
        "volumeMounts": {"type": "array", "items": _k8s("io.k8s.api.core.v1.VolumeMount")},
    }
)
_RAY_CLUSTER_SPEC = _obj(
    {
        "rayVersion": _STR,
        "enableInTreeAutoscaling": _BOOL,
        "autoscalerOptions": _AUTOSCALER,
        "headGroupSpec": _HEAD_GROUP,
        "workerGroupSpecs": {"type": "array", "items": _WORKER_GROUP},
        "headServiceAnnotations": _STRING_MAP,
        "suspend": _BOOL,
    },
    required=("rayVersion", "headGroupSpec"),
)
# Our own policy rides along in `required`: every RayJob cleans up after itself and has a deadline.
_RAYJOB_SPEC = _obj(
    {
        "entrypoint": _STR,
        "submissionMode": {"enum": ["K8sJobMode", "HTTPMode", "InteractiveMode"]},
        "shutdownAfterJobFinishes": _BOOL,
        "ttlSecondsAfterFinished": _INT0,
        "activeDeadlineSeconds": _INT1,
        "backoffLimit": _INT0,
        "rayClusterSpec": _RAY_CLUSTER_SPEC,
        "submitterPodTemplate": _POD_TEMPLATE,
        "submitterConfig": _obj({"backoffLimit": _INT0}),
        "runtimeEnvYAML": _STR,
        "jobId": _STR,
        "metadata": _STRING_MAP,
        "entrypointNumCpus": _NUM,
        "entrypointNumGpus": _NUM,
        "entrypointResources": _STR,
        "suspend": _BOOL,
    },
    required=(
        "entrypoint",
        "submissionMode",
        "shutdownAfterJobFinishes",
        "ttlSecondsAfterFinished",
        "activeDeadlineSeconds",
        "backoffLimit",
        "rayClusterSpec",
    ),
)
_RAYSERVICE_SPEC = _obj(
    {
        "serveConfigV2": _STR,
        "rayClusterConfig": _RAY_CLUSTER_SPEC,
        "upgradeStrategy": _obj({"type": {"enum": ["NewCluster", "NewClusterWithIncrementalUpgrade", "None"]}}),
        "serveService": _k8s("io.k8s.api.core.v1.Service"),
        "excludeHeadPodFromServeSvc": _BOOL,
    },
    required=("serveConfigV2", "rayClusterConfig"),
)


def _kuberay_schema(kind: str, spec: dict) -> dict:
    return _obj(
        {
            "apiVersion": {"const": "ray.io/v1"},
            "kind": {"const": kind},
            "metadata": _k8s("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"),
            "spec": spec,
        },
        required=("apiVersion", "kind", "metadata", "spec"),
    )


KUBERAY_SCHEMAS = {
    "RayJob": _kuberay_schema("RayJob", _RAYJOB_SPEC),
    "RayService": _kuberay_schema("RayService", _RAYSERVICE_SPEC),
}


@functools.cache
def k8s_registry():
    import kubernetes_validate
    from referencing import Registry, Resource

    folder = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema" / f"v{K8S_VERSION}.0-local-strict"
    resources = []
    for name in ("_definitions.json", "podtemplatespec-v1.json"):
        contents = json.loads((folder / name).read_text())
        resources.append((contents["$id"], Resource.from_contents(contents)))
    return Registry().with_resources(resources)


@functools.cache
def kuberay_validator(kind: str):
    from jsonschema import Draft202012Validator

    return Draft202012Validator(KUBERAY_SCHEMAS[kind], registry=k8s_registry())


def schema_problems(doc: dict, kind: str) -> list[str]:
    validator = kuberay_validator(kind)
    return [
        f"{'.'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}"
        for e in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    ]


def _containers(template: dict) -> list[dict]:
    return template.get("spec", {}).get("containers", [])


def _gpus(container: dict) -> int:
    limits = container.get("resources", {}).get("limits", {})
    return int(limits.get("nvidia.com/gpu", 0))


def _cpus(container: dict) -> float:
    value = str(container.get("resources", {}).get("limits", {}).get("cpu", "0"))
    return float(value[:-1]) / 1000 if value.endswith("m") else float(value)


def image_problems(image: str, where: str, gpu: bool) -> list[str]:
    ray = ray_version()
    name, _, tag = image.rpartition(":")
    if name.rsplit("/", 1)[-1] != "regionmir":
        return [f"{where}: image {image!r} is not the project's image (regionmir:{ray}[-gpu], see Dockerfile)"]
    if tag not in (ray, f"{ray}-gpu"):
        return [f"{where}: image tag {tag!r} is neither {ray!r} nor {ray + '-gpu'!r} (the Ray pin of pyproject.toml)"]
    if gpu and not tag.endswith("-gpu"):
        return [f"{where}: a pod with GPUs runs the CPU image {image!r}"]
    return []


def env_source_problems(container: dict, where: str, *, secret: bool = True) -> list[str]:
    refs = {(k, v["name"]) for src in container.get("envFrom", []) for k, v in src.items() if isinstance(v, dict)}
    wanted = {("configMapRef", "regionmir-env")} | ({("secretRef", "regionmir-s3")} if secret else set())
    return [f"{where}: envFrom lacks {kind} {name}" for kind, name in sorted(wanted - refs)]


def ray_cluster_problems(spec: dict, where: str) -> list[str]:
    problems = []
    if spec.get("rayVersion") != ray_version():
        problems.append(
            f"{where}.rayVersion: {spec.get('rayVersion')!r} != the ray pin {ray_version()!r} of pyproject.toml"
        )
    head = spec["headGroupSpec"]
    if head.get("rayStartParams", {}).get("num-cpus") != "0":
        problems.append(f'{where}.headGroupSpec.rayStartParams: num-cpus must be "0" (no work on the head)')
    groups = [("headGroupSpec", head)] + [
        (f"workerGroupSpecs[{g.get('groupName')}]", g) for g in spec.get("workerGroupSpecs", [])
    ]
    images = set()
    for label, group in groups:
        template = group["template"]
        for c in _containers(template):
            images.add(c.get("image"))
            problems += image_problems(c.get("image", ""), f"{where}.{label}", gpu=_gpus(c) > 0)
            problems += env_source_problems(c, f"{where}.{label}")
            if _gpus(c) and not any(t.get("key") == "nvidia.com/gpu" for t in template["spec"].get("tolerations", [])):
                problems.append(f"{where}.{label}: GPU pods need a toleration for the nvidia.com/gpu taint")
        if label != "headGroupSpec" and not (
            group["minReplicas"] <= group.get("replicas", group["minReplicas"]) <= group["maxReplicas"]
        ):
            problems.append(f"{where}.{label}: need minReplicas <= replicas <= maxReplicas")
    if len(images) > 1:
        problems.append(f"{where}: head and workers run different images {sorted(images)} (one Ray, one Python)")
    return problems


def worker_resources(spec: dict, at: str = "replicas") -> tuple[int, float]:
    """(GPUs, CPUs) of the worker groups, with ``at`` (replicas or maxReplicas) pods each."""
    gpus, cpus = 0, 0.0
    for group in spec.get("workerGroupSpecs", []):
        n = group.get(at, group.get("minReplicas", 0))
        for c in _containers(group["template"]):
            gpus += n * _gpus(c)
            cpus += n * _cpus(c)
    return gpus, cpus


# --- RayJob entrypoints: parsed by the real CLI's argument parsers (rebuilt from the source)


class _StrictParser(argparse.ArgumentParser):
    def error(self, message: str):  # raise instead of exiting
        raise ValueError(message)


def _literal(node: ast.AST, module: Any = None) -> Any:
    """A literal, a builtin type, or a name the module defines (``choices=PLACEMENTS``)."""
    if isinstance(node, ast.Name) and node.id in ("int", "float", "str"):
        return {"int": int, "float": float, "str": str}[node.id]
    if isinstance(node, ast.Name) and module is not None and hasattr(module, node.id):
        return getattr(module, node.id)
    return ast.literal_eval(node)


@functools.cache
def cli_parser(command: str) -> argparse.ArgumentParser:
    """The parser of ``regionmir COMMAND`` as its module builds it: the ``add_argument`` calls of
    the entry-point function and of the module's functions it calls (defaults and help left out).
    Abbreviations are refused: a manifest spells every flag in full."""
    target = pyproject()["project"]["entry-points"]["regionmir.commands"][command]
    module, function = target.split(":")
    tree = ast.parse((ROOT / (module.replace(".", "/") + ".py")).read_text())
    namespace = importlib.import_module(module)
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    parser = _StrictParser(prog=f"regionmir {command}", add_help=False, allow_abbrev=False)
    seen: set[str] = set()

    def visit(name: str) -> None:
        if name in seen:
            return
        seen.add(name)
        for node in ast.walk(functions[name]):
            if not isinstance(node, ast.Call):
                continue
            if isinstance(node.func, ast.Attribute) and node.func.attr == "add_argument":
                kwargs = {
                    kw.arg: _literal(kw.value, namespace)
                    for kw in node.keywords
                    if kw.arg in ("required", "choices", "action", "type", "nargs", "dest")
                }
                parser.add_argument(*[_literal(a) for a in node.args], **kwargs)
            elif isinstance(node.func, ast.Name) and node.func.id in functions:
                visit(node.func.id)

    visit(function)
    return parser


def expand(text: str, env: dict[str, str], where: str) -> str:
    """``$NAME`` / ``${NAME}`` as the shell expands them, from the ConfigMap; unknown names fail."""

    def sub(m: re.Match) -> str:
        name = m.group(1) or m.group(2)
        if name not in env:
            raise ValueError(f"{where}: ${name} is not a key of ConfigMap regionmir-env")
        return env[name]

    return re.sub(r"\$(?:\{(\w+)\}|(\w+))", sub, text)


def entrypoint_problems(spec: dict, where: str) -> list[str]:
    env = env_configmap()
    try:
        argv = shlex.split(expand(spec["entrypoint"], env, f"{where}.entrypoint"))
    except ValueError as exc:
        return [str(exc)]
    scripts = pyproject()["project"]["scripts"]
    if len(argv) < 2 or argv[0] not in scripts:
        return [f"{where}.entrypoint: must start with one of {sorted(scripts)} and a command"]
    command = argv[1]
    if command not in pyproject()["project"]["entry-points"]["regionmir.commands"]:
        return [f"{where}.entrypoint: unknown command {command!r}"]
    try:
        args = cli_parser(command).parse_args(argv[2:])
    except ValueError as exc:
        return [f"{where}.entrypoint: regionmir {command}: {exc}"]
    problems = []
    cluster = spec["rayClusterSpec"]
    gpus, cpus = worker_resources(cluster)
    wants = getattr(args, "workers", None) or getattr(args, "encoders", None) or 1
    if args.gpu and wants > gpus:
        problems.append(f"{where}: --gpu with {wants} workers/encoders but the worker groups have {gpus} GPUs")
    if not args.gpu and gpus:
        problems.append(f"{where}: the worker groups request {gpus} GPUs but the entrypoint has no --gpu")
    if not args.gpu and wants > cpus:
        problems.append(f"{where}: {wants} CPU workers/encoders but the worker groups have {cpus:g} CPUs")
    if re.search(r"\$\w|\$\{", spec["entrypoint"]):
        # KubeRay's submitter pod runs the entrypoint through a shell: it must see the variables too.
        template = spec.get("submitterPodTemplate")
        if template is None:
            problems.append(f"{where}: the entrypoint uses $variables: give a submitterPodTemplate with envFrom")
        else:
            for c in _containers(template):
                problems += env_source_problems(c, f"{where}.submitterPodTemplate", secret=False)
                head_image = _containers(cluster["headGroupSpec"]["template"])[0]["image"]
                if c.get("image") != head_image:
                    problems.append(
                        f"{where}.submitterPodTemplate: image {c.get('image')!r} != the head's {head_image!r}"
                    )
    return problems


# --- serveConfigV2


@functools.cache
def serve_deployment_names() -> frozenset[str]:
    tree = ast.parse((ROOT / "serving" / "deployments.py").read_text())
    names = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            for t in node.targets:
                if isinstance(t, ast.Name):
                    names[t.id] = node.value.value
    return frozenset(names[k] for k in ("ENCODER", "SEARCH", "INGRESS"))


def import_path_problems(import_path: str, where: str) -> list[str]:
    """``module:attr`` must name a module-level builder function with one parameter (read from the
    source: importing serving.deployments would load torch)."""
    module, _, attr = import_path.partition(":")
    path = ROOT / (module.replace(".", "/") + ".py")
    if not attr or not path.exists():
        return [f"{where}: import_path {import_path!r} is not module:attribute of this project"]
    tree = ast.parse(path.read_text())
    fn = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == attr), None)
    if fn is None:
        return [f"{where}: {module} has no module-level function {attr!r}"]
    if len(fn.args.args) + len(fn.args.kwonlyargs) != 1:
        return [f"{where}: {import_path} must take exactly one parameter (Ray Serve passes the args dict)"]
    return []


def serve_config_problems(text: str, where: str) -> list[str]:
    from pydantic import ValidationError
    from ray.serve.config import AutoscalingConfig
    from ray.serve.schema import ServeDeploySchema

    from serving.config import ConfigError, ServeSettings

    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        return [f"{where}: not YAML ({exc})"]
    try:
        parsed = ServeDeploySchema.model_validate(config)
    except ValidationError as exc:
        return [f"{where}: {exc}"]
    problems = [
        f"{where}: unknown key {k!r} (Ray Serve ignores it)"
        for k in unknown_keys(config, parsed.model_dump(exclude_unset=True, mode="json"))
    ]
    apps = config.get("applications", [])
    if [a.get("name") for a in apps] != ["regionmir"]:
        problems.append(f"{where}: expected one application named regionmir")
    env = env_configmap()
    for i, app in enumerate(apps):
        at = f"{where}.applications[{i}]"
        if app.get("route_prefix") != "/":
            problems.append(f"{at}.route_prefix: the page and API live at /")
        problems += import_path_problems(app.get("import_path", ""), f"{at}.import_path")
        try:
            settings = ServeSettings.load(data=app.get("args") or {}, env={}, data_source=f"{at}.args").validate()
        except ConfigError as exc:
            problems.append(str(exc))
            continue
        if settings.model != env["REGIONMIR_MODEL_URI"]:
            problems.append(
                f"{at}.args.model {settings.model!r} != ConfigMap REGIONMIR_MODEL_URI {env['REGIONMIR_MODEL_URI']!r}"
            )
        if settings.milvus != env["REGIONMIR_MILVUS_URI"]:
            problems.append(f"{at}.args.milvus {settings.milvus!r} != ConfigMap REGIONMIR_MILVUS_URI")
        if isinstance(settings.encoder.gpus_per_replica, str):
            problems.append(
                f"{at}.args.encoder.gpus_per_replica: give a number on Kubernetes ('auto' looks at the "
                "GPUs present at build time, none while the GPU workers are scaled down)"
            )
        overrides = {d.get("name"): d for d in app.get("deployments", [])}
        if set(overrides) != serve_deployment_names():
            problems.append(
                f"{at}.deployments: expected options for exactly {sorted(serve_deployment_names())}, "
                f"got {sorted(map(str, overrides))}"
            )
        for name, d in overrides.items():
            dat = f"{at}.deployments[{name}]"
            auto = d.get("autoscaling_config")
            if auto is not None:
                try:
                    model = AutoscalingConfig.model_validate(auto)
                except ValidationError as exc:
                    problems.append(f"{dat}.autoscaling_config: {exc}")
                else:
                    problems += [
                        f"{dat}.autoscaling_config: unknown key {k!r}"
                        for k in unknown_keys(auto, model.model_dump(exclude_unset=True, mode="json"))
                    ]
            if name not in serve_deployment_names():
                continue
            # Serve applies these over what the builder made from args: they must say the same.
            s = getattr(settings, name)
            mine = {k: d[k] for k in ("num_replicas", "autoscaling_config") if k in d}
            if mine != s.serve_scaling():
                problems.append(f"{dat}: replicas {mine} != what args.{name} builds {s.serve_scaling()}")
            if d.get("max_ongoing_requests") != s.max_ongoing_requests:
                problems.append(f"{dat}.max_ongoing_requests != args.{name}.max_ongoing_requests")
            actor = d.get("ray_actor_options")
            if actor is None:
                # Without it Serve keeps the builder's options, which copy S3 credentials into runtime_env.
                problems.append(f"{dat}: set ray_actor_options (num_cpus, num_gpus)")
                continue
            gpus = (
                float(settings.encoder.gpus_per_replica)
                if name == "encoder" and not isinstance(settings.encoder.gpus_per_replica, str)
                else 0.0
            )
            if actor.get("num_cpus") != s.num_cpus or float(actor.get("num_gpus", 0)) != gpus:
                problems.append(
                    f"{dat}.ray_actor_options {actor} != args.{name} (num_cpus {s.num_cpus}, num_gpus {gpus:g})"
                )
    return problems


def _serve_config(doc: dict) -> dict:
    return yaml.safe_load(doc["spec"]["serveConfigV2"])


def rayservice_problems(doc: dict, where: str) -> list[str]:
    spec = doc["spec"]
    problems = serve_config_problems(spec["serveConfigV2"], f"{where}.serveConfigV2")
    if problems:
        return problems
    config = _serve_config(doc)
    cluster = spec["rayClusterConfig"]
    port = config.get("http_options", {}).get("port", 8000)
    head = _containers(cluster["headGroupSpec"]["template"])[0]
    if {"name": "serve", "containerPort": port} not in head.get("ports", []):
        problems.append(
            f"{where}: the head container must declare the Serve port {{name: serve, containerPort: {port}}}"
        )
    for group in cluster.get("workerGroupSpecs", []):
        for c in _containers(group["template"]):
            if {"name": "serve", "containerPort": port} not in c.get("ports", []):
                problems.append(
                    f"{where}: worker group {group['groupName']} must declare the Serve port {port} "
                    "(proxies run on every node)"
                )
    encoder = next(d for d in config["applications"][0]["deployments"] if d["name"] == "encoder")
    per_replica = float(encoder.get("ray_actor_options", {}).get("num_gpus", 0))
    if per_replica:
        max_replicas = encoder.get("autoscaling_config", {}).get("max_replicas", encoder.get("num_replicas", 1))
        gpus, _ = worker_resources(cluster, at="maxReplicas" if cluster.get("enableInTreeAutoscaling") else "replicas")
        if max_replicas * per_replica > gpus:
            problems.append(
                f"{where}: up to {max_replicas} encoder replicas x {per_replica:g} GPU, "
                f"but the worker groups reach {gpus} GPUs"
            )
    for c in [head] + [c for g in cluster.get("workerGroupSpecs", []) for c in _containers(g["template"])]:
        keys = {e["name"]: e.get("valueFrom", {}).get("secretKeyRef") for e in c.get("env", [])}
        if keys.get("REGIONMIR_API_KEY") != {"name": "regionmir-api-key", "key": "api-key"}:
            problems.append(f"{where}: container {c['name']} must take REGIONMIR_API_KEY from Secret regionmir-api-key")
        if keys.get("REGIONMIR_ID_SALT") != {"name": "regionmir-id-salt", "key": "id-salt"}:
            problems.append(
                f"{where}: container {c['name']} must take REGIONMIR_ID_SALT from Secret regionmir-id-salt "
                "(the service refuses the public default salt)"
            )
    return problems


def kuberay_problems(doc: dict, where: str) -> list[str]:
    if doc.get("kind") not in KUBERAY_SCHEMAS:
        return [f"{where}: no schema for {doc.get('kind')} here"]
    problems = schema_problems(doc, doc["kind"])
    if problems:
        return [f"{where}: {p}" for p in problems]
    spec = doc["spec"]
    if doc["kind"] == "RayJob":
        return (
            ray_cluster_problems(spec["rayClusterSpec"], f"{where}.rayClusterSpec")
            + entrypoint_problems(spec, where)
            + pod_security_problems(doc, where)
        )
    return (
        ray_cluster_problems(spec["rayClusterConfig"], f"{where}.rayClusterConfig")
        + rayservice_problems(doc, where)
        + pod_security_problems(doc, where)
    )


# ------------------------------------------------------------------- prometheus-operator kinds


@functools.cache
def prometheus_models() -> dict[str, Any]:
    from cloudcoil.models.prometheus_operator.v1 import PodMonitor, PrometheusRule, ServiceMonitor

    return {"PodMonitor": PodMonitor, "ServiceMonitor": ServiceMonitor, "PrometheusRule": PrometheusRule}


def prometheus_problems(doc: dict, where: str) -> list[str]:
    from pydantic import ValidationError

    model = prometheus_models().get(doc["kind"])
    if model is None:
        return [f"{where}: no model for {doc['kind']}"]
    try:
        parsed = model.model_validate(doc)
    except ValidationError as exc:
        return [f"{where}: {exc}"]
    return [
        f"{where}: unknown key {k!r}"
        for k in unknown_keys(doc, parsed.model_dump(by_alias=True, exclude_unset=True, mode="json"))
    ]


# ------------------------------------------------------------------------------- fail closed
# Pod security of every Ray and submitter pod; NetworkPolicies evaluated on the pods KubeRay and the
# Milvus chart create; PodDisruptionBudgets; the dashboard's exposure; Milvus authentication.

#: The base image's user `ray` (rayproject/ray): uid 1000, primary group `users` (gid 100).
RAY_UID, RAY_GID = 1000, 100
POD_SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": RAY_UID,
    "runAsGroup": RAY_GID,
    "seccompProfile": {"type": "RuntimeDefault"},
}
CONTAINER_SECURITY = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}
#: Writable emptyDirs a container needs on a read-only root filesystem: mount path -> emptyDir medium.
RAY_NODE_WRITABLE = {"/tmp": None, "/dev/shm": "Memory", "/home/ray/.cache": None}
SUBMITTER_WRITABLE = {"/tmp": None, "/home/ray/.cache": None}
AUTOSCALER_WRITABLE = {"/tmp": None}
DASHBOARD_PORT = 8265
MILVUS_TOKEN_REF = {"name": "regionmir-milvus-token", "key": "token"}
MILVUS_ROOT_REF = {"name": "regionmir-milvus-root", "key": "password"}


def _cluster(doc: dict) -> dict | None:
    spec = doc.get("spec", {})
    return spec.get("rayClusterSpec") or spec.get("rayClusterConfig")


def _pod_templates(doc: dict) -> list[tuple[str, str, str, dict]]:
    """(node type head|worker|submitter, KubeRay group name, where, template) of a RayJob/RayService."""
    cluster = _cluster(doc)
    if not cluster:
        return []
    out = [("head", "headgroup", "headGroupSpec", cluster["headGroupSpec"]["template"])]
    out += [
        ("worker", g["groupName"], f"workerGroupSpecs[{g['groupName']}]", g["template"])
        for g in cluster.get("workerGroupSpecs", [])
    ]
    if doc["spec"].get("submitterPodTemplate"):
        out.append(("submitter", "", "submitterPodTemplate", doc["spec"]["submitterPodTemplate"]))
    return out


def _security_context_problems(effective: dict, at: str) -> list[str]:
    problems = [
        f"{at}: securityContext.{key} is {effective.get(key)!r}, want {want!r}"
        for key, want in {**POD_SECURITY, **CONTAINER_SECURITY}.items()
        if effective.get(key) != want
    ]
    if effective.get("privileged"):
        problems.append(f"{at}: privileged")
    return problems


def _writable_problems(mounts: list[dict], volumes: dict[str, dict], wanted: dict, at: str) -> list[str]:
    by_path = {m["mountPath"]: m for m in mounts}
    problems = []
    for path, medium in wanted.items():
        mount = by_path.get(path)
        volume = volumes.get(mount["name"]) if mount else None
        if volume is None or "emptyDir" not in volume or mount.get("readOnly"):
            problems.append(f"{at}: the root filesystem is read-only: mount a writable emptyDir at {path}")
        elif (volume["emptyDir"] or {}).get("medium") != medium:
            problems.append(f"{at}: the emptyDir at {path} must have medium {medium!r}")
    return problems


def pod_security_problems(doc: dict, where: str) -> list[str]:
    """Every pod non-root (the image's user), default seccomp, no host namespaces or hostPath; every
    container without privilege escalation or capabilities, on a read-only root filesystem with the
    emptyDirs Ray needs. The autoscaler sidecar KubeRay injects takes autoscalerOptions; the
    wait-gcs-ready init container it injects copies the Ray container's securityContext and mounts."""
    problems = []
    for node_type, _, label, template in _pod_templates(doc):
        spec = template.get("spec", {})
        pod_context = spec.get("securityContext", {})
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for flag in ("hostNetwork", "hostPID", "hostIPC"):
            if spec.get(flag):
                problems.append(f"{where}.{label}: {flag}")
        problems += [f"{where}.{label}: hostPath volume {name}" for name, v in volumes.items() if "hostPath" in v]
        wanted = SUBMITTER_WRITABLE if node_type == "submitter" else RAY_NODE_WRITABLE
        for c in spec.get("initContainers", []) + spec.get("containers", []):
            at = f"{where}.{label}.{c['name']}"
            problems += _security_context_problems({**pod_context, **c.get("securityContext", {})}, at)
            problems += _writable_problems(c.get("volumeMounts", []), volumes, wanted, at)
        if node_type == "head" and _cluster(doc).get("enableInTreeAutoscaling"):
            options = _cluster(doc).get("autoscalerOptions", {})
            at = f"{where}.autoscalerOptions"
            problems += _security_context_problems({**pod_context, **options.get("securityContext", {})}, at)
            problems += _writable_problems(options.get("volumeMounts", []), volumes, AUTOSCALER_WRITABLE, at)
    return problems


# --- the pods the cluster will run, with the labels their controllers give them


class Pod(NamedTuple):
    name: str
    namespace: str
    labels: dict[str, str]
    ports: dict[str, int]  # declared container ports, by name


def kuberay_pod_labels(node_type: str, cluster: str, group: str, template_labels: dict, *, rayservice: bool) -> dict:
    """The labels KubeRay gives a Ray pod (labelPod in ray-operator/controllers/ray/common/pod.go):
    its own, overridden by the template's except ray.io/node-type, ray.io/group, ray.io/cluster;
    RayService pods also get ray.io/serve (BuildPod; KubeRay flips the head's with the proxy's health)."""
    labels = {
        "ray.io/is-ray-node": "yes",
        "ray.io/cluster": cluster,
        "ray.io/node-type": node_type,
        "ray.io/group": group,
        "ray.io/identifier": f"{cluster}-{node_type}",
        "app.kubernetes.io/name": "kuberay",
        "app.kubernetes.io/created-by": "kuberay-operator",
    }
    labels.update(
        {k: v for k, v in template_labels.items() if k not in ("ray.io/node-type", "ray.io/group", "ray.io/cluster")}
    )
    if rayservice:
        labels["ray.io/serve"] = "false" if node_type == "head" else "true"
    return labels


def kuberay_pods(docs: list[dict]) -> list[Pod]:
    pods = []
    for doc in docs:
        if doc.get("kind") not in ("RayJob", "RayService"):
            continue
        name, namespace = doc["metadata"]["name"], doc["metadata"].get("namespace", "regionmir")
        # RayService clusters are <name>-raycluster-<random>, RayJob clusters <name>-<random>.
        cluster = f"{name}-raycluster-x7k2p" if doc["kind"] == "RayService" else f"{name}-x7k2p"
        for node_type, group, _, template in _pod_templates(doc):
            ports = {
                p["name"]: p["containerPort"] for c in _containers(template) for p in c.get("ports", []) if "name" in p
            }
            template_labels = template.get("metadata", {}).get("labels", {})
            if node_type == "submitter":  # a Kubernetes Job's pod: the template's labels + the Job's
                labels = {**template_labels, "job-name": name, "batch.kubernetes.io/job-name": name}
                pods.append(Pod(f"{name}/submitter", namespace, labels, ports))
            else:
                labels = kuberay_pod_labels(
                    node_type, cluster, group, template_labels, rayservice=doc["kind"] == "RayService"
                )
                pods.append(Pod(f"{name}/{group}", namespace, labels, ports))
    return pods


@functools.cache
def milvus_release() -> tuple[str, str]:
    """(release, namespace) of the `helm install ... zilliztech/milvus` in k8s/milvus/README.md."""
    text = (K8S / "milvus" / "README.md").read_text()
    m = re.search(r"helm install (\S+) zilliztech/milvus (?:--namespace|-n) (\S+)", text)
    assert m, "k8s/milvus/README.md has no `helm install RELEASE zilliztech/milvus --namespace NS`"
    return m.group(1), m.group(2)


def milvus_pods() -> list[Pod]:
    """The pods of the Milvus chart in standalone mode (labels: milvus.matchLabels + component; the
    etcd subchart: app.kubernetes.io/name etcd, the parent's release as instance)."""
    release, namespace = milvus_release()
    return [
        Pod(
            f"{release}-standalone",
            namespace,
            {"app.kubernetes.io/name": "milvus", "app.kubernetes.io/instance": release, "component": "standalone"},
            {"milvus": 19530, "metrics": 9091},
        ),
        Pod(
            f"{release}-etcd-0",
            namespace,
            {"app.kubernetes.io/name": "etcd", "app.kubernetes.io/instance": release},
            {"client": 2379, "peer": 2380},
        ),
    ]


#: Pods outside the namespace, as their charts label them, in the namespaces k8s/README.md installs
#: them into (ingress-nginx: the namespace of its install guide).
OUTSIDERS = {
    "ingress-controller": Pod(
        "ingress-nginx-controller",
        "ingress-nginx",
        {
            "app.kubernetes.io/name": "ingress-nginx",
            "app.kubernetes.io/instance": "ingress-nginx",
            "app.kubernetes.io/component": "controller",
        },
        {},
    ),
    "kuberay-operator": Pod(
        "kuberay-operator",
        "kuberay-system",
        {
            "app.kubernetes.io/name": "kuberay-operator",
            "app.kubernetes.io/instance": "kuberay-operator",
            "app.kubernetes.io/component": "kuberay-operator",
        },
        {},
    ),
    "prometheus": Pod(
        "prometheus-kps-prometheus-0",
        "monitoring",
        {
            "app.kubernetes.io/name": "prometheus",
            "app.kubernetes.io/managed-by": "prometheus-operator",
            "app.kubernetes.io/instance": "kps-kube-prometheus-prometheus",
            "prometheus": "kps-kube-prometheus-prometheus",
        },
        {},
    ),
}
#: Pods that must get nowhere: one in another namespace, one in RegionMIR's own.
STRANGERS = {
    "stranger": Pod("curl", "default", {"run": "curl"}, {}),
    "neighbour": Pod("debug", "regionmir", {"run": "debug"}, {}),
}


# --- NetworkPolicy semantics (ingress only: no policy here restricts egress)


def selector_matches(selector: dict, labels: dict[str, str]) -> bool:
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for e in selector.get("matchExpressions", []):
        key, op, values = e["key"], e["operator"], e.get("values", [])
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": labels.get(key) not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def _namespace_labels(namespace: str) -> dict[str, str]:
    return {"kubernetes.io/metadata.name": namespace}  # set by the API server on every namespace


def _policy_types(policy: dict) -> list[str]:
    return policy["spec"].get("policyTypes") or (["Ingress"] + (["Egress"] if "egress" in policy["spec"] else []))


def _peer_matches(peer: dict, policy_namespace: str, src: Pod) -> bool:
    if "ipBlock" in peer:
        return False  # no ipBlock here: pod traffic only
    if "namespaceSelector" in peer:
        if not selector_matches(peer["namespaceSelector"], _namespace_labels(src.namespace)):
            return False
    elif src.namespace != policy_namespace:
        return False
    return selector_matches(peer.get("podSelector", {}), src.labels)


def _port_matches(ports: list[dict] | None, dst: Pod, port: int) -> bool:
    if not ports:
        return True
    for p in ports:
        if p.get("protocol", "TCP") != "TCP":
            continue
        want = p.get("port")
        if want is None:
            return True
        number = dst.ports.get(want) if isinstance(want, str) else want
        if number is not None and number <= port <= p.get("endPort", number):
            return True
    return False


def ingress_allowed(policies: list[dict], src: Pod, dst: Pod, port: int) -> bool:
    """Whether `src` may open a TCP connection to `dst`:`port` under these NetworkPolicies."""
    isolating = [
        p
        for p in policies
        if p["metadata"].get("namespace", "regionmir") == dst.namespace
        and "Ingress" in _policy_types(p)
        and selector_matches(p["spec"]["podSelector"], dst.labels)
    ]
    if not isolating:
        return True
    for policy in isolating:
        namespace = policy["metadata"].get("namespace", "regionmir")
        for rule in policy["spec"].get("ingress") or []:
            if not _port_matches(rule.get("ports"), dst, port):
                continue
            peers = rule.get("from")
            if not peers or any(_peer_matches(peer, namespace, src) for peer in peers):
                return True
    return False


def _is_default_deny(policy: dict) -> bool:
    spec = policy["spec"]
    return spec.get("podSelector") == {} and "Ingress" in _policy_types(policy) and not spec.get("ingress")


def _component(pod: Pod) -> str | None:
    return pod.labels.get("app.kubernetes.io/component")


def _scraped_ports(docs: list[dict], pod: Pod) -> set[int]:
    """The ports of `pod` a PodMonitor / ServiceMonitor of `docs` scrapes (monitors name ports)."""
    ports = set()
    for m in docs:
        if (
            m["kind"] == "PodMonitor"
            and selector_matches(m["spec"]["selector"], pod.labels)
            and pod.namespace in m["spec"].get("namespaceSelector", {}).get("matchNames", [pod.namespace])
        ):
            ports |= {pod.ports[e["port"]] for e in m["spec"]["podMetricsEndpoints"] if e["port"] in pod.ports}
        if m["kind"] == "ServiceMonitor" and selector_matches(m["spec"]["selector"], pod.labels):
            ports |= {pod.ports[e["port"]] for e in m["spec"]["endpoints"] if e["port"] in pod.ports}
    return ports


def expected_flows(docs: list[dict]) -> list[tuple[Pod, Pod, int, bool, str]]:
    """(source, destination, port, allowed?, why) for the pods `docs` make: what must get through
    and what must not."""
    ray = [p for p in kuberay_pods(docs) if p.labels.get("ray.io/is-ray-node") == "yes"]
    submitters = [p for p in kuberay_pods(docs) if "job-name" in p.labels]
    standalone, etcd = milvus_pods()
    out = {**OUTSIDERS, **STRANGERS}
    has_ingress = any(d["kind"] == "Ingress" for d in docs)
    flows = []
    heads = [p for p in ray if p.labels["ray.io/node-type"] == "head"]
    for pod in ray:
        component = _component(pod)
        if component == "query-service":
            flows += [
                (out["ingress-controller"], pod, 8000, has_ingress, "the Ingress reaches Serve"),
                (out["stranger"], pod, 8000, False, "Serve only through the ingress controller"),
                (out["neighbour"], pod, 8000, False, "Serve only through the ingress controller"),
                (out["prometheus"], pod, 8000, False, "Prometheus scrapes metrics ports only"),
            ]
        for peer in ray:
            same = _component(peer) == component
            flows += [
                (peer, pod, 6379, same, "Ray pods of one cluster reach each other, not another's"),
                (peer, pod, 10002, same, "Ray pods of one cluster reach each other (any port)"),
            ]
        flows += [
            (
                pod,
                standalone,
                19530,
                component in ("query-service", "indexing"),
                "only the service's and the index job's Ray pods use Milvus",
            ),
            (pod, standalone, 9091, False, "Milvus's clients use its client port only"),
        ]
        for port in sorted(_scraped_ports(docs, pod)):
            flows += [
                (out["prometheus"], pod, port, True, "Prometheus scrapes the ports the monitors name"),
                (out["stranger"], pod, port, False, "metrics only to Prometheus"),
            ]
    for head in heads:
        flows += [
            (out["kuberay-operator"], head, DASHBOARD_PORT, True, "the operator uses the dashboard"),
            (out["ingress-controller"], head, DASHBOARD_PORT, False, "the dashboard is not published"),
            (out["prometheus"], head, DASHBOARD_PORT, False, "the dashboard is not a metrics port"),
            (out["stranger"], head, DASHBOARD_PORT, False, "the dashboard is not published"),
            (out["neighbour"], head, DASHBOARD_PORT, False, "the dashboard is not published"),
            (out["kuberay-operator"], head, 6379, False, "the operator needs no GCS access"),
        ]
        if _component(head) == "query-service":
            flows.append((out["kuberay-operator"], head, 8000, True, "the operator checks the head's Serve proxy"))
    for sub in submitters:
        for head in heads:
            same = _component(head) == _component(sub)
            flows += [
                (sub, head, DASHBOARD_PORT, same, "a submitter reaches its own cluster's dashboard only"),
                (sub, head, 6379, False, "a submitter talks to the dashboard only"),
            ]
        flows.append((sub, standalone, 19530, False, "the submitter does not use Milvus"))
    flows += [
        (standalone, etcd, 2379, True, "Milvus reaches its etcd"),
        (out["stranger"], etcd, 2379, False, "etcd only for Milvus"),
        (out["neighbour"], standalone, 19530, False, "Milvus only for RegionMIR's Ray pods"),
        (out["stranger"], standalone, 19530, False, "Milvus only for RegionMIR's Ray pods"),
        (out["ingress-controller"], standalone, 19530, False, "Milvus is not published"),
        (out["prometheus"], standalone, 19530, False, "Prometheus scrapes metrics ports only"),
    ]
    flows += [
        (out["prometheus"], standalone, port, True, "Prometheus scrapes Milvus's metrics")
        for port in sorted(_scraped_ports(docs, standalone))
    ]
    flows += [(pod, etcd, 2379, False, "etcd only for Milvus") for pod in ray[:1]]
    return flows


def network_policy_problems(docs: list[dict]) -> list[str]:
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    pods = kuberay_pods(docs) + milvus_pods()
    problems = []
    if not any(_is_default_deny(p) and p["metadata"].get("namespace") == "regionmir" for p in policies):
        problems.append("no default-deny ingress NetworkPolicy (podSelector {}, no ingress rules) in regionmir")
    for policy in policies:
        at = f"NetworkPolicy/{policy['metadata']['name']}"
        namespace = policy["metadata"].get("namespace", "regionmir")
        if "Egress" in _policy_types(policy):
            problems.append(f"{at}: egress is not restricted here (S3, DNS, the Kubernetes API)")
        if _is_default_deny(policy):
            continue
        selected = [
            p for p in pods if p.namespace == namespace and selector_matches(policy["spec"]["podSelector"], p.labels)
        ]
        if not selected:
            problems.append(
                f"{at}: podSelector {policy['spec']['podSelector']} selects no pod that KubeRay or the "
                "Milvus chart creates"
            )
        for rule in policy["spec"].get("ingress") or []:
            for peer in rule.get("from") or []:
                if not any(_peer_matches(peer, namespace, s) for s in pods + list(OUTSIDERS.values())):
                    problems.append(f"{at}: `from` {peer} matches no pod that exists")
            for port in rule.get("ports") or []:
                if isinstance(port.get("port"), int) and not any(port["port"] in p.ports.values() for p in selected):
                    problems.append(f"{at}: port {port['port']} is declared by none of the pods it selects")
    for src, dst, port, want, why in expected_flows(docs):
        got = ingress_allowed(policies, src, dst, port)
        if got != want:
            problems.append(
                f"{src.namespace}/{src.name} -> {dst.namespace}/{dst.name}:{port} is "
                f"{'allowed' if got else 'denied'}, want {'allowed' if want else 'denied'} ({why})"
            )
    return problems


def disruption_budget_problems(docs: list[dict]) -> list[str]:
    """Every PDB selects pods of the query service; minAvailable as an integer (a RayCluster has no
    scale subresource, so Kubernetes refuses maxUnavailable and percentages for its pods); a broken pod
    never blocks a drain; the head and every worker group covered, each pod by one budget only
    (an eviction of a pod under two budgets fails)."""
    budgets = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    service_pods = [p for p in kuberay_pods(docs) if _component(p) == "query-service"]
    other_pods = [p for p in kuberay_pods(docs) if _component(p) != "query-service"] + milvus_pods()
    problems = []
    covering: dict[str, list[str]] = {p.name: [] for p in service_pods}
    for budget in budgets:
        at = f"PodDisruptionBudget/{budget['metadata']['name']}"
        spec = budget["spec"]
        if "maxUnavailable" in spec or not isinstance(spec.get("minAvailable"), int):
            problems.append(f"{at}: use an integer minAvailable (Ray pods' controller has no scale subresource)")
        if spec.get("unhealthyPodEvictionPolicy") != "AlwaysAllow":
            problems.append(
                f"{at}: unhealthyPodEvictionPolicy must be AlwaysAllow (a broken pod must not block drains)"
            )
        selected = [p for p in service_pods if selector_matches(spec["selector"], p.labels)]
        if not selected:
            problems.append(f"{at}: selector {spec['selector']} selects no pod of the query service")
        problems += [
            f"{at}: selects {p.name}, not a query-service pod"
            for p in other_pods
            if selector_matches(spec["selector"], p.labels)
        ]
        for p in selected:
            covering[p.name].append(at)
    for name, by in covering.items():
        if len(by) != 1:
            problems.append(f"pod {name} is covered by {len(by)} PodDisruptionBudgets {by}, want exactly 1")
    return problems


def dashboard_exposure_problems(docs: list[dict]) -> list[str]:
    """Nothing here publishes the Ray dashboard (8265): no Service or Ingress points at it, and the
    head Services KubeRay creates stay ClusterIP, without KubeRay's Ingress."""
    problems = []
    for d in docs:
        at = f"{d['kind']}/{d['metadata']['name']}"
        if d["kind"] == "Service":
            for p in d["spec"].get("ports", []):
                if DASHBOARD_PORT in (p.get("port"), p.get("targetPort")) or p.get("targetPort") == "dashboard":
                    problems.append(f"{at}: exposes the Ray dashboard port {DASHBOARD_PORT}")
        if d["kind"] == "Ingress":
            backends = [
                path["backend"] for rule in d["spec"].get("rules", []) for path in rule.get("http", {}).get("paths", [])
            ]
            backends += [d["spec"]["defaultBackend"]] if "defaultBackend" in d["spec"] else []
            for b in backends:
                svc = b.get("service", {})
                port = svc.get("port", {})
                if (
                    port.get("number") == DASHBOARD_PORT
                    or port.get("name") == "dashboard"
                    or svc.get("name", "").endswith("-head-svc")
                ):
                    problems.append(f"{at}: routes to the Ray dashboard ({svc})")
        cluster = _cluster(d) if d["kind"] in ("RayJob", "RayService") else None
        if cluster:
            head = cluster["headGroupSpec"]
            if (
                head.get("serviceType", "ClusterIP") != "ClusterIP"
                or head.get("headService", {}).get("spec", {}).get("type", "ClusterIP") != "ClusterIP"
            ):
                problems.append(f"{at}: the head Service (dashboard {DASHBOARD_PORT}) must stay ClusterIP")
            if head.get("enableIngress"):
                problems.append(f"{at}: enableIngress publishes the Ray dashboard")
            serve = d["spec"].get("serveService", {}).get("spec", {})
            if any(DASHBOARD_PORT in (p.get("port"), p.get("targetPort")) for p in serve.get("ports", [])):
                problems.append(f"{at}: serveService exposes port {DASHBOARD_PORT}")
    return problems


def _env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def milvus_auth_problems(docs: list[dict], values: dict) -> list[str]:
    """Milvus runs with authentication, its root password from a Secret; the query service's and the
    index job's Ray containers take MILVUS_TOKEN from the Secret regionmir-milvus-token, nothing else
    gets it, and no manifest spells a token."""
    problems = []
    user = yaml.safe_load(values.get("extraConfigFiles", {}).get("user.yaml") or "{}") or {}
    if user.get("common", {}).get("security", {}).get("authorizationEnabled") is not True:
        problems.append(
            "milvus/values.yaml: extraConfigFiles user.yaml must set common.security.authorizationEnabled: true"
        )
    extra_env = {e["name"]: e for e in values.get("standalone", {}).get("extraEnv", [])}
    root = extra_env.get("COMMON_SECURITY_DEFAULTROOTPASSWORD")
    if (root or {}).get("valueFrom", {}).get("secretKeyRef") != MILVUS_ROOT_REF:
        problems.append(
            f"milvus/values.yaml: standalone.extraEnv must take COMMON_SECURITY_DEFAULTROOTPASSWORD "
            f"from Secret {MILVUS_ROOT_REF}"
        )
    for d in docs:
        for node_type, _, label, template in _pod_templates(d):
            uses_milvus = node_type != "submitter" and template.get("metadata", {}).get("labels", {}).get(
                "app.kubernetes.io/component"
            ) in ("query-service", "indexing")
            for c in _containers(template):
                at = f"{d['kind']}/{d['metadata']['name']}.{label}.{c['name']}"
                token = _env(c).get("MILVUS_TOKEN")
                if uses_milvus and (token or {}).get("valueFrom", {}).get("secretKeyRef") != MILVUS_TOKEN_REF:
                    problems.append(f"{at}: MILVUS_TOKEN must come from Secret {MILVUS_TOKEN_REF}")
                if not uses_milvus and token is not None:
                    problems.append(f"{at}: does not use Milvus and must not get MILVUS_TOKEN")
                if token is not None and "value" in token:
                    problems.append(f"{at}: MILVUS_TOKEN spelled out in the manifest")
    return problems


# ---------------------------------------------------------------------------------- dispatcher


def document_problems(doc: dict, where: str) -> list[str]:
    api = doc.get("apiVersion", "")
    if api.startswith("ray.io/"):
        return kuberay_problems(doc, where)
    if api.startswith("monitoring.coreos.com/"):
        return prometheus_problems(doc, where)
    return [f"{where}: {p}" for p in builtin_problems(doc)]


def assert_valid(doc: dict, where: str) -> None:
    problems = document_problems(doc, where)
    assert not problems, "\n".join(problems)


# ======================================================================================= tests


def test_ray_pin_dockerfile_and_torch_agree():
    ray = ray_version()
    dockerfile = (ROOT / "Dockerfile").read_text()
    froms = re.findall(r"^FROM\s+(\S+)", dockerfile, re.MULTILINE)
    assert froms, "Dockerfile has no FROM"
    for image in froms:
        name, _, tag = image.partition(":")
        assert name == "rayproject/ray" and tag.startswith(f"{ray}-py311"), (
            f"Dockerfile base {image} is not rayproject/ray:{ray}-py311[-gpu] (the ray pin of pyproject.toml)"
        )
    assert "${GPU_SUFFIX}" in froms[0] and re.search(r"^ARG GPU_SUFFIX", dockerfile, re.MULTILINE), (
        "the -gpu build arg is gone"
    )
    pins = [d for d in pyproject()["project"]["dependencies"] if d.startswith(("torch==", "torchvision=="))]
    assert len(pins) == 2
    for pin in pins:
        assert pin in dockerfile, f"Dockerfile does not install {pin} (pyproject.toml)"
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "demo-output"} <= set(ignored)


def test_there_is_something_to_check():
    kinds = {doc["kind"] for _, doc in raw_documents()}
    assert {
        "Namespace",
        "ConfigMap",
        "Secret",
        "Ingress",
        "RayJob",
        "RayService",
        "PodMonitor",
        "ServiceMonitor",
        "PrometheusRule",
        "NetworkPolicy",
        "PodDisruptionBudget",
    } <= kinds
    steps = {doc["metadata"]["labels"]["regionmir.io/step"] for _, doc in raw_documents() if doc["kind"] == "RayJob"}
    assert steps == {"pretrain", "finetune", "index"}


@pytest.mark.parametrize("where,doc", raw_documents(), ids=[w for w, _ in raw_documents()])
def test_manifest_file(where, doc):
    assert_valid(doc, where)


def serve_configs_in_files() -> list[tuple[str, str]]:
    """Every serveConfigV2 under k8s/, overlay patches included (they replace the whole string)."""
    out = []
    for path in sorted(K8S.rglob("*.yaml")):
        for doc in load_all(path):
            text = doc.get("spec", {}).get("serveConfigV2") if isinstance(doc, dict) else None
            if text:
                out.append((str(path.relative_to(ROOT)), text))
    return out


@pytest.mark.parametrize("where,text", serve_configs_in_files(), ids=[w for w, _ in serve_configs_in_files()])
def test_serve_config(where, text):
    problems = serve_config_problems(text, where)
    assert not problems, "\n".join(problems)


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rendered_overlay(overlay):
    docs = render(overlay)
    assert docs, f"{overlay} renders nothing"
    problems = []
    for doc in docs:
        problems += document_problems(doc, f"{overlay}: {doc['kind']}/{doc['metadata']['name']}")
    assert not problems, "\n".join(problems)
    dev = overlay.startswith("overlays/dev")
    for doc in docs:
        for c in _pod_containers(doc):
            assert c["image"].endswith(f":{ray_version()}" if dev else f":{ray_version()}-gpu"), (overlay, c["image"])
            assert not (dev and _gpus(c)), f"{overlay}: the dev overlay asks for GPUs"


def _pod_containers(doc: dict) -> list[dict]:
    spec = doc.get("spec", {})
    cluster = spec.get("rayClusterSpec") or spec.get("rayClusterConfig")
    if not cluster:
        return []
    templates = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster.get("workerGroupSpecs", [])]
    if spec.get("submitterPodTemplate"):
        templates.append(spec["submitterPodTemplate"])
    return [c for t in templates for c in _containers(t)]


@needs_kubectl
def test_rendered_overlays_contain_what_they_should():
    def kinds(overlay: str) -> list[str]:
        return sorted(d["kind"] for d in render(overlay))

    policies = ["NetworkPolicy"] * 7
    assert kinds("overlays/prod") == sorted(
        [
            "ConfigMap",
            "ConfigMap",
            "Namespace",
            "PodMonitor",
            "PodMonitor",
            "PrometheusRule",
            "RayService",
            "ServiceMonitor",
        ]
        + policies
        + ["NetworkPolicy"] * 2
        + ["PodDisruptionBudget"] * 3
    )
    assert kinds("overlays/dev") == sorted(
        ["ConfigMap", "Namespace", "RayService"] + policies + ["PodDisruptionBudget"] * 2
    )
    assert kinds("overlays/prod/jobs") == kinds("overlays/dev/jobs") == ["RayJob"] * 3
    for doc in render("overlays/prod") + render("overlays/prod/jobs"):
        assert doc["metadata"].get("namespace") == "regionmir" or doc["kind"] == "Namespace", doc["metadata"]
    dashboard = next(d for d in render("overlays/prod") if d["metadata"]["name"] == "regionmir-grafana-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    (content,) = dashboard["data"].values()
    assert json.loads(content) == json.loads((ROOT / "serving" / "grafana_dashboard.json").read_text())


def test_prometheus_rule_holds_the_serving_alert_rules():
    (rule,) = [d for _, d in raw_documents() if d["kind"] == "PrometheusRule"]
    alerts = yaml.safe_load((ROOT / "serving" / "prometheus_alerts.yml").read_text())
    assert rule["spec"]["groups"] == alerts["groups"], (
        "k8s/monitoring/prometheusrule.yaml and serving/prometheus_alerts.yml differ: edit both"
    )


def test_dashboard_generator_points_at_the_serving_dashboard():
    (kustomization,) = load_all(ROOT / "serving" / "kustomization.yaml")
    (generator,) = kustomization["configMapGenerator"]
    assert generator["options"]["labels"] == {"grafana_dashboard": "1"}
    (entry,) = generator["files"]
    assert entry.split("=")[-1] == "grafana_dashboard.json" and (ROOT / "serving" / "grafana_dashboard.json").exists()
    (monitoring,) = load_all(K8S / "monitoring" / "kustomization.yaml")
    assert "../../serving" in monitoring["resources"]


def test_monitors_scrape_ports_the_pods_declare():
    docs = [d for _, d in raw_documents()]
    (service,) = [d for d in docs if d["kind"] == "RayService"]
    cluster = service["spec"]["rayClusterConfig"]
    head_ports = {
        p["name"]: p["containerPort"]
        for c in _containers(cluster["headGroupSpec"]["template"])
        for p in c.get("ports", [])
    }
    for monitor in (d for d in docs if d["kind"] == "PodMonitor"):
        node_type = monitor["spec"]["selector"]["matchLabels"]["ray.io/node-type"]
        wanted = {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]}
        if node_type == "head":
            assert wanted == {"metrics", "as-metrics", "dash-metrics"}
            assert {head_ports.get(p) for p in wanted} == {8080, 44217, 44227}, head_ports
        else:
            assert wanted == {"metrics"}
            for d in docs:
                spec = d.get("spec", {})
                for g in (spec.get("rayClusterSpec") or spec.get("rayClusterConfig") or {}).get("workerGroupSpecs", []):
                    assert g["rayStartParams"]["metrics-export-port"] == "8080", d["metadata"]["name"]
                    for c in _containers(g["template"]):
                        assert {"name": "metrics", "containerPort": 8080} in c["ports"], d["metadata"]["name"]
    assert cluster["headGroupSpec"]["rayStartParams"]["metrics-export-port"] == "8080"
    (milvus,) = [d for d in docs if d["kind"] == "ServiceMonitor"]
    assert [e["port"] for e in milvus["spec"]["endpoints"]] == ["metrics"]
    assert milvus["spec"]["endpoints"][0]["path"] == "/metrics"


def test_milvus_values_use_the_shared_object_store():
    values = yaml.safe_load(HELM_VALUES.read_text())
    assert values["minio"]["enabled"] is False
    s3 = values["externalS3"]
    assert s3["enabled"] is True and s3["bucketName"]
    assert not s3["accessKey"] and not s3["secretKey"], "credentials belong on the helm command line, not in git"
    endpoint = env_configmap()["REGIONMIR_S3_ENDPOINT"]
    host, _, port = endpoint.split("://", 1)[1].partition(":")
    assert (s3["host"], str(s3["port"]), s3["useSSL"]) == (host, port or "443", endpoint.startswith("https"))
    assert values["metrics"]["enabled"] is True
    # Scraped once, by k8s/monitoring/milvus-servicemonitor.yaml (which selects the release `milvus`).
    assert values["metrics"]["serviceMonitor"]["enabled"] is False
    assert env_configmap()["REGIONMIR_MILVUS_URI"] == "http://milvus:19530"


def test_ingress_points_at_the_kuberay_serve_service():
    docs = [d for _, d in raw_documents()]
    (service,) = [d for d in docs if d["kind"] == "RayService"]
    (ingress,) = [d for d in docs if d["kind"] == "Ingress"]
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {
        "name": f"{service['metadata']['name']}-serve-svc",
        "port": {"number": _serve_config(service)["http_options"]["port"]},
    }


def test_secret_templates_match_what_the_pods_reference():
    secrets = {d["metadata"]["name"]: set(d["stringData"]) for _, d in raw_documents() if d["kind"] == "Secret"}
    assert secrets == {
        "regionmir-s3": {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"},
        "regionmir-api-key": {"api-key"},
        "regionmir-id-salt": {"id-salt"},
        "regionmir-milvus-token": {"token"},
        "regionmir-milvus-root": {"password"},
    }
    # Every Secret a pod (or the Milvus chart) reads has a template, with that key.
    values = yaml.safe_load(HELM_VALUES.read_text())
    containers = [c for _, d in raw_documents() for _, _, _, t in _pod_templates(d) for c in _containers(t)]
    containers.append({"env": values["standalone"]["extraEnv"]})
    for c in containers:
        for e in c.get("env", []):
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert ref["key"] in secrets.get(ref["name"], set()), f"{e['name']}: no template for {ref}"
        for src in c.get("envFrom", []):
            if "secretRef" in src:
                assert src["secretRef"]["name"] in secrets, src
    for path in manifest_files():
        if "secrets" not in path.parts:
            assert "kind: Secret" not in path.read_text(), f"{path}: Secrets stay templates in k8s/secrets"
    for name in ("base", "jobs", "monitoring"):
        (k,) = load_all(K8S / name / "kustomization.yaml")
        assert not any("secret" in r for r in k["resources"]), "kubectl apply -k must not overwrite real Secrets"


def test_application_args_come_between_the_file_and_the_environment():
    from serving.config import ConfigError, ServeSettings

    args = {"model": "s3://m", "milvus": "http://milvus:19530", "encoder": {"max_replicas": 4, "gpus_per_replica": 1}}
    settings = ServeSettings.load(
        data=args,
        env={"REGIONMIR_SERVE__ENCODER__MAX_REPLICAS": "8", "REGIONMIR_API_KEY": "k"},
        data_source="application args",
    )
    assert (settings.encoder.max_replicas, settings.encoder.gpus_per_replica, settings.auth.api_key) == (8, 1, "k")
    with pytest.raises(ConfigError, match=r"application args: unknown setting 'encoder.max_replica'"):
        ServeSettings.load(data={"encoder": {"max_replica": 4}}, env={}, data_source="application args")


# ----------------------------------------------------- a wrong field fails (one of each kind)


def _raw(kind: str, name: str | None = None) -> dict:
    for _, doc in raw_documents():
        if doc["kind"] == kind and (name is None or doc["metadata"]["name"] == name):
            return copy.deepcopy(doc)
    raise KeyError(kind)


def _rename(mapping: dict, old: str, new: str) -> None:
    mapping[new] = mapping.pop(old)


def test_a_wrong_field_in_a_builtin_kind_fails():
    import kubernetes_validate

    ingress = _raw("Ingress")
    _rename(ingress["spec"], "ingressClassName", "ingressClass")
    with pytest.raises(kubernetes_validate.ValidationError, match="ingressClass"):
        kubernetes_validate.validate(ingress, K8S_VERSION, strict=True)
    assert any("'ingressClass' was unexpected" in p for p in document_problems(ingress, "ingress"))


@pytest.mark.parametrize(
    "mutate,name",
    [
        (lambda d: _rename(d["spec"], "upgradeStrategy", "upgradeStratgy"), "upgradeStratgy"),
        (
            lambda d: _rename(d["spec"]["rayClusterConfig"], "enableInTreeAutoscaling", "enableInTreeAutoScaling"),
            "enableInTreeAutoScaling",
        ),
        (
            lambda d: _rename(d["spec"]["rayClusterConfig"]["workerGroupSpecs"][0], "maxReplicas", "maxReplica"),
            "maxReplica",
        ),
        # an embedded pod template is the strict Kubernetes PodTemplateSpec
        (
            lambda d: _rename(
                d["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0],
                "envFrom",
                "envfrom",
            ),
            "envfrom",
        ),
        (lambda d: d["spec"].__setitem__("serviceUnhealthySecondThreshold", 900), "serviceUnhealthySecondThreshold"),
    ],
    ids=["spec", "rayClusterConfig", "workerGroupSpec", "pod-template", "deprecated-threshold"],
)
def test_a_wrong_field_in_a_rayservice_fails(mutate, name):
    service = _raw("RayService")
    assert not document_problems(service, "RayService")
    mutate(service)
    problems = document_problems(service, "RayService")
    assert any(f"'{name}' was unexpected" in p for p in problems), problems


def test_a_wrong_field_or_flag_in_a_rayjob_fails():
    job = _raw("RayJob", "regionmir-pretrain")
    _rename(job["spec"], "shutdownAfterJobFinishes", "shutdownAfterJobFinish")
    assert any("'shutdownAfterJobFinish' was unexpected" in p for p in document_problems(job, "RayJob"))
    for wrong, message in [
        ("--epochs 50", "--epoch"),
        ("--gpu", "--gpus"),
        ("--objective supcon", "--objective supconn"),
        ("$REGIONMIR_DATA_URI", "$REGIONMIR_DATA_URL"),
    ]:
        job = _raw("RayJob", "regionmir-pretrain")
        job["spec"]["entrypoint"] = job["spec"]["entrypoint"].replace(wrong, message)
        problems = document_problems(job, "RayJob")
        assert any(message.split()[-1].lstrip("$") in p for p in problems), (message, problems)
    job = _raw("RayJob", "regionmir-index")
    job["spec"]["entrypoint"] = job["spec"]["entrypoint"].replace("--encoders 2", "--encoders 3")
    assert any("3 workers/encoders but the worker groups have 2 GPUs" in p for p in document_problems(job, "RayJob"))


def test_a_ray_version_or_image_out_of_step_with_pyproject_fails():
    job = _raw("RayJob", "regionmir-index")
    job["spec"]["rayClusterSpec"]["rayVersion"] = "2.59.0"
    assert any("rayVersion: '2.59.0' != the ray pin" in p for p in document_problems(job, "RayJob"))
    job = _raw("RayJob", "regionmir-index")
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    head["image"] = "regionmir:2.59.0-gpu"
    problems = document_problems(job, "RayJob")
    assert any("image tag '2.59.0-gpu'" in p for p in problems) and any("different images" in p for p in problems)


def _edit_serve_config(edit) -> list[str]:
    service = _raw("RayService")
    config = _serve_config(service)
    edit(config)
    return serve_config_problems(yaml.safe_dump(config), "serveConfigV2")


@pytest.mark.parametrize(
    "edit,name",
    [
        (lambda c: _rename(c["applications"][0], "route_prefix", "route_prefx"), "route_prefx"),
        (lambda c: _rename(c["http_options"], "port", "prot"), "prot"),
        (
            lambda c: _rename(c["applications"][0]["deployments"][0], "autoscaling_config", "autoscalling_config"),
            "autoscalling_config",
        ),
        (
            lambda c: _rename(
                c["applications"][0]["deployments"][0]["autoscaling_config"],
                "target_ongoing_requests",
                "target_ongoing_request",
            ),
            "target_ongoing_request",
        ),
        (
            lambda c: _rename(c["applications"][0]["deployments"][0]["ray_actor_options"], "num_gpus", "num_gpu"),
            "num_gpu",
        ),
        (
            lambda c: _rename(c["applications"][0]["args"]["encoder"], "max_replicas", "max_replica"),
            "encoder.max_replica",
        ),
    ],
    ids=["application", "http_options", "deployment", "autoscaling_config", "ray_actor_options", "args"],
)
def test_a_wrong_field_in_serve_config_fails(edit, name):
    assert not _edit_serve_config(lambda c: None)
    problems = _edit_serve_config(edit)
    assert any(f"{name}'" in p for p in problems), problems


def test_serve_config_overrides_that_disagree_with_args_fail():
    def edit(c):
        c["applications"][0]["deployments"][0]["autoscaling_config"]["max_replicas"] = 9

    problems = _edit_serve_config(edit)
    assert any("deployments[encoder]: replicas" in p for p in problems), problems


@pytest.mark.parametrize(
    "kind,edit,name",
    [
        (
            "PrometheusRule",
            lambda d: _rename(d["spec"]["groups"][0]["rules"][0], "annotations", "annotation"),
            "annotation",
        ),
        ("PodMonitor", lambda d: _rename(d["spec"], "podMetricsEndpoints", "podMetricEndpoints"), "podMetricEndpoints"),
        (
            "ServiceMonitor",
            lambda d: _rename(d["spec"]["endpoints"][0], "scrapeTimeout", "scrape_timeout"),
            "scrape_timeout",
        ),
    ],
    ids=["PrometheusRule", "PodMonitor", "ServiceMonitor"],
)
def test_a_wrong_field_in_a_prometheus_operator_kind_fails(kind, edit, name):
    doc = _raw(kind)
    edit(doc)
    problems = document_problems(doc, kind)
    assert any(name in p for p in problems), problems


def test_the_index_job_hashes_patients_with_the_services_salt():
    """Patient hashes in the index and in a query must match: the index job's Ray pods take the
    same REGIONMIR_ID_SALT Secret as the RayService's."""
    jobs = [(where, d) for where, d in raw_documents() if d["kind"] == "RayJob" and "jobs/index.yaml" in where]
    assert jobs, "no index RayJob found"
    for where, job in jobs:
        cluster = job["spec"]["rayClusterSpec"]
        templates = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
        for container in [c for t in templates for c in _containers(t)]:
            keys = {e["name"]: e.get("valueFrom", {}).get("secretKeyRef") for e in container.get("env", [])}
            assert keys.get("REGIONMIR_ID_SALT") == {"name": "regionmir-id-salt", "key": "id-salt"}, (
                f"{where}: {container['name']}"
            )


# ----------------------------------------------------------------------------------- fail closed


def _deployment(name: str) -> list[dict]:
    """The objects of one way to deploy (the service's overlay and its jobs together; the files:
    everything under k8s/, which is prod + ingress + jobs without the image overrides)."""
    if name == "files":
        return copy.deepcopy([d for _, d in raw_documents()])
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl not on PATH: the rendered overlays are not checked")
    overlay, _, extra = name.partition("+")
    service = (
        render_with_component(f"overlays/{overlay}", "components/ingress") if extra else render(f"overlays/{overlay}")
    )
    return copy.deepcopy(service + render(f"overlays/{overlay}/jobs"))


@functools.cache
def render_with_component(overlay: str, component: str) -> list[dict]:
    """An overlay with a component enabled, through a temporary kustomization (kustomize refuses
    absolute paths, so it names both relative to itself)."""
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "kustomization.yaml").write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "kustomize.config.k8s.io/v1beta1",
                    "kind": "Kustomization",
                    "resources": [os.path.relpath(K8S / overlay, tmp)],
                    "components": [os.path.relpath(K8S / component, tmp)],
                }
            )
        )
        result = subprocess.run(["kubectl", "kustomize", tmp], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, f"kubectl kustomize {overlay} + {component} failed:\n{result.stderr}"
    return [d for d in yaml.safe_load_all(result.stdout) if d is not None]


DEPLOYMENTS = ["files", "prod", "prod+ingress", "dev"]


@pytest.mark.parametrize("deployment", DEPLOYMENTS)
def test_network_policies_deny_by_default_and_allow_only_what_is_needed(deployment):
    docs = _deployment(deployment)
    assert any(d["kind"] == "NetworkPolicy" for d in docs)
    problems = network_policy_problems(docs)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("deployment", DEPLOYMENTS)
def test_disruption_budgets_cover_the_query_service(deployment):
    docs = _deployment(deployment)
    problems = disruption_budget_problems(docs)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("deployment", DEPLOYMENTS)
def test_the_ray_dashboard_is_not_published(deployment):
    problems = dashboard_exposure_problems(_deployment(deployment))
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("deployment", DEPLOYMENTS)
def test_milvus_needs_a_token_that_only_its_clients_get(deployment):
    problems = milvus_auth_problems(_deployment(deployment), yaml.safe_load(HELM_VALUES.read_text()))
    assert not problems, "\n".join(problems)


def test_pods_outside_the_namespace_are_where_the_readme_installs_them():
    readme = (K8S / "README.md").read_text()
    for pod in (OUTSIDERS["kuberay-operator"], OUTSIDERS["prometheus"]):
        assert f"-n {pod.namespace} " in readme, pod
    assert "ingress-nginx" in (K8S / "components" / "ingress" / "networkpolicy.yaml").read_text()
    release, namespace = milvus_release()
    assert f'REGIONMIR_MILVUS_URI: "http://{release}:19530"' in ENV_CONFIGMAP.read_text()
    assert namespace == "regionmir", "Milvus moved: move its NetworkPolicies with it (k8s/base/networkpolicies.yaml)"


def _doc(docs: list[dict], kind: str, name: str) -> dict:
    (doc,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def _ingress_rules(docs: list[dict], name: str) -> list[dict]:
    return _doc(docs, "NetworkPolicy", name)["spec"]["ingress"]


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda docs: docs.remove(_doc(docs, "NetworkPolicy", "default-deny-ingress")), "no default-deny"),
        (
            lambda docs: _ingress_rules(docs, "ingress-controller-to-serve")[0]["from"][0]["namespaceSelector"][
                "matchLabels"
            ].__setitem__("kubernetes.io/metadata.name", "nginx"),
            "denied, want allowed (the Ingress reaches Serve)",
        ),
        (
            lambda docs: _ingress_rules(docs, "milvus-clients")[0]["from"][1]["podSelector"]["matchLabels"].__setitem__(
                "app.kubernetes.io/component", "training"
            ),
            "allowed, want denied (only the service's and the index",
        ),
        (
            lambda docs: _ingress_rules(docs, "milvus-clients")[0].pop("ports"),
            "allowed, want denied (Milvus's clients use its client port only)",
        ),
        (
            lambda docs: _ingress_rules(docs, "kuberay-operator-to-ray-heads")[0].pop("ports"),
            "allowed, want denied (the operator needs no GCS access)",
        ),
        (
            lambda docs: _ingress_rules(docs, "ray-query-service")[0]["from"][0]["podSelector"]["matchLabels"].pop(
                "app.kubernetes.io/component"
            ),
            "allowed, want denied (Ray pods of one cluster reach each other, not another's)",
        ),
        (
            lambda docs: _ingress_rules(docs, "ray-training")[1].pop("ports"),
            "allowed, want denied (a submitter talks to",
        ),
        (
            lambda docs: _doc(docs, "NetworkPolicy", "ray-indexing")["spec"]["podSelector"]["matchLabels"].__setitem__(
                "app.kubernetes.io/component", "index"
            ),
            "selects no pod",
        ),
        (
            lambda docs: _ingress_rules(docs, "prometheus-scrapes-ray")[0]["ports"].pop(),
            "denied, want allowed (Prometheus",
        ),
        (
            lambda docs: _ingress_rules(docs, "prometheus-scrapes-ray")[0]["ports"].append({"port": 8265}),
            "allowed, want denied (the dashboard is not a metrics port)",
        ),
        (
            lambda docs: _doc(docs, "NetworkPolicy", "milvus-release-internal")["spec"]["podSelector"][
                "matchLabels"
            ].__setitem__("app.kubernetes.io/instance", "milvus-db"),
            "selects no pod",
        ),
    ],
    ids=[
        "no-default-deny",
        "ingress-namespace",
        "milvus-from-training",
        "milvus-any-port",
        "operator-any-port",
        "ray-across-clusters",
        "submitter-any-port",
        "selector-typo",
        "metrics-port-missing",
        "dashboard-to-prometheus",
        "milvus-release-renamed",
    ],
)
def test_a_network_policy_that_opens_or_closes_too_much_fails(mutate, message):
    docs = _deployment("files")
    assert not network_policy_problems(docs)
    mutate(docs)
    problems = network_policy_problems(docs)
    assert any(message in p for p in problems), problems


@pytest.mark.parametrize(
    "mutate,message",
    [
        (
            lambda docs: _doc(docs, "PodDisruptionBudget", "regionmir-ray-head")["spec"].update(
                {"maxUnavailable": 0, "minAvailable": None}
            ),
            "integer minAvailable",
        ),
        (
            lambda docs: _doc(docs, "PodDisruptionBudget", "regionmir-serve-gpu-workers")["spec"].pop(
                "unhealthyPodEvictionPolicy"
            ),
            "AlwaysAllow",
        ),
        (
            lambda docs: _doc(docs, "PodDisruptionBudget", "regionmir-serve-gpu-workers")["spec"]["selector"][
                "matchLabels"
            ].__setitem__("ray.io/group", "gpus"),
            "selects no pod",
        ),
        (
            lambda docs: _doc(docs, "PodDisruptionBudget", "regionmir-ray-head")["spec"]["selector"]["matchLabels"].pop(
                "ray.io/node-type"
            ),
            "PodDisruptionBudgets",
        ),
        (
            lambda docs: docs.remove(_doc(docs, "PodDisruptionBudget", "regionmir-serve-cpu-workers")),
            "covered by 0 PodDisruptionBudgets",
        ),
        (
            lambda docs: _doc(docs, "PodDisruptionBudget", "regionmir-ray-head")["spec"]["selector"]["matchLabels"].pop(
                "app.kubernetes.io/component"
            ),
            "not a query-service pod",
        ),
    ],
    ids=["maxUnavailable", "unhealthy-policy", "group-typo", "overlap", "group-uncovered", "job-heads"],
)
def test_a_wrong_disruption_budget_fails(mutate, message):
    docs = _deployment("files")
    mutate(docs)
    problems = disruption_budget_problems(docs)
    assert any(message in p for p in problems), problems


@pytest.mark.parametrize(
    "mutate",
    [
        lambda docs: _raw_cluster(docs, "RayService", "regionmir")["headGroupSpec"].__setitem__(
            "serviceType", "LoadBalancer"
        ),
        lambda docs: _raw_cluster(docs, "RayJob", "regionmir-index")["headGroupSpec"].__setitem__(
            "enableIngress", True
        ),
        lambda docs: _doc(docs, "Ingress", "regionmir")["spec"]["rules"][0]["http"]["paths"].append(
            {
                "path": "/ray",
                "pathType": "Prefix",
                "backend": {"service": {"name": "regionmir-head-svc", "port": {"number": 8265}}},
            }
        ),
        lambda docs: docs.append(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "ray-dashboard"},
                "spec": {"type": "NodePort", "ports": [{"port": 80, "targetPort": 8265}]},
            }
        ),
    ],
    ids=["head-loadbalancer", "kuberay-ingress", "ingress-path", "service"],
)
def test_publishing_the_ray_dashboard_fails(mutate):
    docs = _deployment("files")
    mutate(docs)
    assert any("dashboard" in p for p in dashboard_exposure_problems(docs))


def _raw_cluster(docs: list[dict], kind: str, name: str) -> dict:
    return _cluster(_doc(docs, kind, name))


def _ray_container(docs: list[dict], kind: str, name: str, group: int | None = None) -> dict:
    cluster = _raw_cluster(docs, kind, name)
    template = cluster["headGroupSpec"]["template"] if group is None else cluster["workerGroupSpecs"][group]["template"]
    return template["spec"]["containers"][0]


@pytest.mark.parametrize(
    "mutate,message",
    [
        (
            lambda docs, values: values["extraConfigFiles"].__setitem__("user.yaml", "common: {security: {}}"),
            "authorizationEnabled",
        ),
        (lambda docs, values: values["standalone"].pop("extraEnv"), "COMMON_SECURITY_DEFAULTROOTPASSWORD"),
        (
            lambda docs, values: _ray_container(docs, "RayJob", "regionmir-index", 0)["env"].pop(),
            "workerGroupSpecs[gpu].ray-worker: MILVUS_TOKEN must come from",
        ),
        (
            lambda docs, values: _ray_container(docs, "RayService", "regionmir", 1)["env"][-1].update(
                {"value": "regionmir:secret"}
            ),
            "spelled out",
        ),
        (
            lambda docs, values: (
                _ray_container(docs, "RayJob", "regionmir-pretrain")
                .setdefault("env", [])
                .append({"name": "MILVUS_TOKEN", "valueFrom": {"secretKeyRef": MILVUS_TOKEN_REF}})
            ),
            "must not get MILVUS_TOKEN",
        ),
    ],
    ids=["auth-off", "default-root-password", "index-worker-without-token", "literal-token", "token-for-training"],
)
def test_milvus_without_auth_or_with_a_leaked_token_fails(mutate, message):
    docs, values = _deployment("files"), yaml.safe_load(HELM_VALUES.read_text())
    mutate(docs, values)
    problems = milvus_auth_problems(docs, values)
    assert any(message in p for p in problems), problems


def _template(doc: dict, which: str) -> dict:
    cluster = _cluster(doc)
    return {
        "head": lambda: cluster["headGroupSpec"]["template"],
        "worker": lambda: cluster["workerGroupSpecs"][0]["template"],
        "submitter": lambda: doc["spec"]["submitterPodTemplate"],
    }[which]()


@pytest.mark.parametrize(
    "kind,name,mutate,message",
    [
        (
            "RayService",
            "regionmir",
            lambda d: _template(d, "worker")["spec"]["securityContext"].update({"runAsUser": 0}),
            "securityContext.runAsUser is 0",
        ),
        (
            "RayService",
            "regionmir",
            lambda d: _template(d, "head")["spec"]["securityContext"].pop("runAsNonRoot"),
            "securityContext.runAsNonRoot is None",
        ),
        (
            "RayService",
            "regionmir",
            lambda d: _template(d, "worker")["spec"]["containers"][0]["securityContext"].update(
                {"readOnlyRootFilesystem": False}
            ),
            "readOnlyRootFilesystem is False",
        ),
        (
            "RayService",
            "regionmir",
            lambda d: _template(d, "head")["spec"]["containers"][0]["securityContext"]["capabilities"].update(
                {"add": ["NET_ADMIN"]}
            ),
            "securityContext.capabilities",
        ),
        (
            "RayService",
            "regionmir",
            lambda d: _template(d, "head")["spec"]["containers"][0]["volumeMounts"].pop(1),
            "writable emptyDir at /dev/shm",
        ),
        (
            "RayService",
            "regionmir",
            lambda d: _template(d, "head")["spec"]["volumes"][1]["emptyDir"].pop("medium"),
            "/dev/shm must have medium 'Memory'",
        ),
        (
            "RayService",
            "regionmir",
            lambda d: _cluster(d)["autoscalerOptions"].pop("securityContext"),
            "autoscalerOptions: securityContext.readOnlyRootFilesystem",
        ),
        (
            "RayService",
            "regionmir",
            lambda d: _template(d, "worker")["spec"]["securityContext"].update(
                {"seccompProfile": {"type": "Unconfined"}}
            ),
            "seccompProfile",
        ),
        (
            "RayJob",
            "regionmir-index",
            lambda d: _template(d, "submitter")["spec"]["containers"][0]["securityContext"].update(
                {"allowPrivilegeEscalation": True}
            ),
            "submitterPodTemplate.ray-job-submitter: securityContext.allowPrivilegeEscalation",
        ),
        (
            "RayJob",
            "regionmir-pretrain",
            lambda d: _template(d, "worker")["spec"]["volumes"].append({"name": "host", "hostPath": {"path": "/"}}),
            "hostPath",
        ),
        (
            "RayJob",
            "regionmir-finetune",
            lambda d: _template(d, "head")["spec"]["containers"][0].pop("volumeMounts"),
            "writable emptyDir at /tmp",
        ),
    ],
    ids=[
        "root",
        "may-run-as-root",
        "writable-root",
        "capability",
        "no-shm",
        "shm-on-disk",
        "autoscaler",
        "seccomp",
        "submitter-escalation",
        "host-path",
        "job-head-no-tmp",
    ],
)
def test_a_pod_that_is_not_locked_down_fails(kind, name, mutate, message):
    doc = _raw(kind, name)
    assert not pod_security_problems(doc, kind)
    mutate(doc)
    problems = document_problems(doc, kind)
    assert any(message in p for p in problems), problems
