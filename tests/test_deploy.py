"""The deployment files (cluster.yaml, deploy/rayservice.yaml, deploy/rayjob.yaml) checked
offline against what they must carry: Ray's own cluster-config validation, room for what
serve_config.gpu.yaml and the batch route job ask of a node, the command line as it is
defined, and no credentials."""

from __future__ import annotations

import copy
import importlib
import re
import shlex
from dataclasses import dataclass, field
from importlib.metadata import requires
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import typer
import yaml
from packaging.requirements import Requirement
from pydantic import BaseModel
from typer.core import TyperGroup

from backends.config import SecretRef, VLLMBackendConfig
from batch_jobs.commit import WRITE_CPUS
from batch_jobs.inputs import READ_CPUS
from batch_jobs.route import actor_layout
from routeray.cli import app
from serve_app.config import ServeConfig

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster.yaml"
RAYSERVICE = ROOT / "deploy" / "rayservice.yaml"
RAYJOB = ROOT / "deploy" / "rayjob.yaml"
GPU_SERVE_CONFIG = ROOT / "serve_config.gpu.yaml"
APP_IMPORT_PATH = "serve_app.app:build_app"

# The hardware of the instance types the files name (vCPUs, GPUs, GiB per GPU). Declared
# resources are advertised as given, not detected, so a declaration beyond the hardware would
# overcommit the node. A new instance type in a file needs its line here.
INSTANCE_TYPES: dict[str, tuple[int, int, int]] = {
    "m7i.2xlarge": (8, 0, 0),
    "p4de.24xlarge": (96, 8, 80),
}
# bf16 weights of the weak models the serve configs name (served name -> GiB).
WEIGHTS_GIB: dict[str, float] = {"mixtral-8x7b-instruct-v0.1": 87.0}
# vLLM's own default.
GPU_MEMORY_UTILIZATION = 0.9

# Dotted paths where the RayService's embedded Serve config may differ from
# serve_config.gpu.yaml on purpose; everything else must match.
ALLOWED_DRIFT: frozenset[str] = frozenset()

SECRET_NAME = "routeray-secrets"
# cluster.yaml's script that starts Ray with the keys from AWS Secrets Manager.
SECRETS_WRAPPER = "with-routeray-secrets"
INSTANCE_TYPE_LABEL = "node.kubernetes.io/instance-type"
KEY_PATTERNS = (
    re.compile(r"aws_access_key_id", re.IGNORECASE),
    re.compile(r"aws_secret_access_key", re.IGNORECASE),
    re.compile(r"aws_session_token", re.IGNORECASE),
    re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    re.compile(r"\bsk-[A-Za-z0-9_-]{16,}"),
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
)
# The RayJob's entrypoint runs through a shell on the head.
SHELL_SPECIAL = set("<>|;&$`(){}*?!\\\"'")
EPS = 1e-9


# ---------------------------------------------------------------- loading


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [doc for doc in docs if doc.get("kind") == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


@pytest.fixture(scope="module")
def gpu_serve_config() -> ServeConfig:
    return ServeConfig.from_yaml(GPU_SERVE_CONFIG)


@pytest.fixture(scope="module")
def cluster() -> dict[str, Any]:
    return _yaml(CLUSTER)


@pytest.fixture(scope="module")
def rayservice() -> dict[str, Any]:
    return _one(_documents(RAYSERVICE), "RayService")


@pytest.fixture(scope="module")
def embedded_serve_document(rayservice: dict[str, Any]) -> dict[str, Any]:
    text = rayservice["spec"]["serveConfigV2"]
    assert isinstance(text, str), "serveConfigV2 is a YAML string, not a mapping"
    return yaml.safe_load(text)


@pytest.fixture(scope="module")
def embedded_serve_config(
    embedded_serve_document: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> ServeConfig:
    # Through the same loader `routeray serve --config` and build_app use for a Serve file.
    path = tmp_path_factory.mktemp("rayservice") / "serve_config.yaml"
    path.write_text(yaml.safe_dump(embedded_serve_document))
    return ServeConfig.from_yaml(path)


@pytest.fixture(scope="module")
def rayjob_documents() -> list[dict[str, Any]]:
    return _documents(RAYJOB)


@pytest.fixture(scope="module")
def rayjob(rayjob_documents: list[dict[str, Any]]) -> dict[str, Any]:
    return _one(rayjob_documents, "RayJob")


# ---------------------------------------------------------------- what a node can host


@dataclass(frozen=True)
class Ask:
    """One actor's resource request, as Ray sees it."""

    cpus: float
    gpus: float = 0.0


@dataclass
class Node:
    """Free resources of one Ray node; GPUs one by one, because Ray places a fractional
    request on a single GPU and a whole one on whole GPUs."""

    cpus: float
    gpus: list[float] = field(default_factory=list)

    @classmethod
    def of(cls, cpus: float, gpus: float) -> Node:
        return cls(float(cpus), [1.0] * int(gpus))

    def take(self, ask: Ask) -> bool:
        if ask.cpus > self.cpus + EPS:
            return False
        if ask.gpus >= 1:
            whole = [i for i, free in enumerate(self.gpus) if free >= 1 - EPS]
            if len(whole) < ask.gpus:
                return False
            for i in whole[: int(ask.gpus)]:
                self.gpus[i] = 0.0
        elif ask.gpus > 0:
            index = next((i for i, free in enumerate(self.gpus) if free >= ask.gpus - EPS), None)
            if index is None:
                return False
            self.gpus[index] -= ask.gpus
        self.cpus -= ask.cpus
        return True


def fits(asks: list[Ask], nodes: list[Node]) -> bool:
    """Whether every ask finds a node, placing the largest first (first fit decreasing)."""
    nodes = copy.deepcopy(nodes)
    for ask in sorted(asks, key=lambda a: (a.gpus, a.cpus), reverse=True):
        if not any(node.take(ask) for node in nodes):
            return False
    return True


def _replicas(autoscaling: dict[str, Any] | None, bound: str) -> int:
    # Serve's own defaults: one replica, and min = max = 1 when autoscaling leaves one out.
    return int((autoscaling or {}).get(bound, 1))


def serve_asks(config: ServeConfig, bound: str) -> list[Ask]:
    """The replicas that need resources (routers, vLLM engines) at Serve's `bound`
    (min_replicas or max_replicas); the ingress and API clients ask for none."""
    rd = config.router_deployment
    asks = [Ask(rd.num_cpus, rd.num_gpus)] * _replicas(rd.autoscaling, bound)
    for backend in (config.strong, config.weak):
        if isinstance(backend, VLLMBackendConfig):
            count = _replicas(backend.autoscaling, bound)
            asks += [Ask(backend.num_cpus, backend.num_gpus)] * count
    return asks


def one_of_each(config: ServeConfig) -> list[Ask]:
    """One weak-model replica and one router replica: the least a GPU node must hold."""
    weak = config.weak
    assert isinstance(weak, VLLMBackendConfig), "the GPU config serves the weak model on vLLM"
    rd = config.router_deployment
    return [Ask(weak.num_cpus, weak.num_gpus), Ask(rd.num_cpus, rd.num_gpus)]


def check_weak_model_fits_gpus(config: ServeConfig, gib_per_gpu: float) -> None:
    """vLLM splits the weights over tensor_parallel_size GPUs, which must be exactly the GPUs
    the replica holds, and each GPU must hold its share within gpu_memory_utilization."""
    weak = config.weak
    assert isinstance(weak, VLLMBackendConfig)
    args = weak.engine_args
    parallel = int(args.get("tensor_parallel_size", 1)) * int(args.get("pipeline_parallel_size", 1))
    assert weak.num_gpus == parallel, (
        f"the weak replica holds {weak.num_gpus} GPUs but vLLM runs on {parallel}"
    )
    assert weak.model in WEIGHTS_GIB, f"add {weak.model}'s weight size to WEIGHTS_GIB"
    share = WEIGHTS_GIB[weak.model] / parallel
    usable = gib_per_gpu * float(args.get("gpu_memory_utilization", GPU_MEMORY_UTILIZATION))
    assert share < usable, (
        f"{weak.model}: {share:.0f} GiB of weights per GPU, {usable:.0f} GiB usable per GPU"
    )


def _instance(instance_type: str) -> tuple[int, int, int]:
    assert instance_type in INSTANCE_TYPES, f"add {instance_type} to INSTANCE_TYPES"
    return INSTANCE_TYPES[instance_type]


# ---------------------------------------------------------------- the command line


@dataclass(frozen=True)
class CommandLine:
    """A parsed `routeray` command line: which command, with which option values."""

    command_path: str
    params: dict[str, Any]


def parse_command_line(argv: list[str]) -> CommandLine:
    """What `routeray` would run `argv` as, found without running anything: an unknown,
    renamed or mistyped option, or a missing subcommand, fails here as on the cluster."""
    assert argv and argv[0] == "routeray", f"not a routeray command line: {argv}"
    command = typer.main.get_command(app)
    ctx = command.make_context("routeray", argv[1:])
    while isinstance(command, TyperGroup):
        # A group stops parsing at its subcommand's name and keeps what follows in ctx.args;
        # parsing never reorders, so the name is the word just before them.
        rest = argv[len(argv) - len(ctx.args) - 1 :]
        name, found, args = command.resolve_command(ctx, rest)
        assert found is not None and name is not None, f"no subcommand in {argv}"
        command = found
        ctx = command.make_context(name, args, parent=ctx)
    return CommandLine(ctx.command_path, dict(ctx.params))


def route_defaults() -> dict[str, Any]:
    """`routeray batch route`'s own defaults (what a job gets when it leaves an option out)."""
    return parse_command_line(
        ["routeray", "batch", "route", "--input", "in/", "--output", "out/"]
    ).params


def route_asks(
    resources: dict[str, float], num_actors: int | None, num_cpus: float | None, num_gpus: float
) -> list[Ask]:
    """The batch route job's tasks and actors on a cluster with `resources`, laid out by the
    job's own rule (batch_jobs.route.actor_layout)."""
    with pytest.MonkeyPatch.context() as mp:
        import ray

        mp.setattr(ray, "cluster_resources", lambda: dict(resources))
        actors, cpus, _ = actor_layout(num_actors, num_cpus, num_gpus)
    return [Ask(cpus, num_gpus)] * actors + [Ask(READ_CPUS), Ask(WRITE_CPUS)]


# ---------------------------------------------------------------- Kubernetes helpers


def _quantity(value: Any) -> float:
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def _pod_templates(cluster_spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    templates = {"head": cluster_spec["headGroupSpec"]["template"]}
    for group in cluster_spec.get("workerGroupSpecs", []):
        templates[group["groupName"]] = group["template"]
    return templates


def _ray_container(template: dict[str, Any]) -> dict[str, Any]:
    # KubeRay runs Ray in the pod's first container.
    return template["spec"]["containers"][0]


def _group_node(group: dict[str, Any]) -> Node:
    """What one pod of the group advertises to Ray: rayStartParams, else (as KubeRay does) the
    container's limits."""
    params = group.get("rayStartParams") or {}
    limits = _ray_container(group["template"]).get("resources", {}).get("limits", {})
    cpus = _quantity(params.get("num-cpus", limits.get("cpu", 0)))
    gpus = _quantity(params.get("num-gpus", limits.get("nvidia.com/gpu", 0)))
    return Node.of(cpus, gpus)


def _gpu_limit(group: dict[str, Any]) -> float:
    limits = _ray_container(group["template"]).get("resources", {}).get("limits", {})
    return _quantity(limits.get("nvidia.com/gpu", 0))


def _gpu_groups(cluster_spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [g for g in cluster_spec.get("workerGroupSpecs", []) if _gpu_limit(g) > 0]


def _secret_envs(model: BaseModel) -> set[str]:
    """Names of the environment variables a config reads its secrets from."""
    found: set[str] = set()
    for name in type(model).model_fields:
        value = getattr(model, name)
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, SecretRef):
                found |= {item.env} if item.env else set()
            elif isinstance(item, BaseModel):
                found |= _secret_envs(item)
    return found


def _differences(a: Any, b: Any, path: str = "") -> set[str]:
    """Dotted paths (list items by index) where two parsed YAML documents differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        found: set[str] = set()
        for key in a.keys() | b.keys():
            sub = f"{path}.{key}" if path else str(key)
            found |= _differences(a.get(key), b.get(key), sub) if key in a and key in b else {sub}
        return found
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        pairs = enumerate(zip(a, b, strict=True))
        return set().union(*(_differences(x, y, f"{path}.{i}") for i, (x, y) in pairs))
    return set() if a == b else {path}


# ================================================================ cluster.yaml


def test_cluster_yaml_passes_rays_own_validation(cluster: dict[str, Any]):
    """What `ray up` runs before it contacts AWS (ray.autoscaler._private.commands.
    _bootstrap_config): defaults from Ray's aws/defaults.yaml merged in, then the schema
    (ray/autoscaler/ray-schema.json) and Ray's cross-field checks."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(cluster)))


def test_rays_validation_would_catch_a_slip(cluster: dict[str, Any]):
    """The check above is live: a misspelt node-type field and fractional declared resources
    are refused by the same calls."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    misspelt = copy.deepcopy(cluster)
    first = next(iter(misspelt["available_node_types"].values()))
    first["resource"] = first.pop("resources")
    fractional = copy.deepcopy(cluster)
    next(iter(fractional["available_node_types"].values()))["resources"]["CPU"] = 0.5
    for broken in (misspelt, fractional):
        with pytest.raises(jsonschema.ValidationError):
            validate_config(prepare_config(broken))


def test_cluster_node_configs_are_valid_ec2_requests(cluster: dict[str, Any]):
    """Ray hands node_config to EC2's RunInstances as it is (adding the counts), so botocore's
    own API model, read offline, refuses a misspelt or mistyped field before AWS does."""
    import botocore.session
    from botocore.validate import ParamValidator

    model = botocore.session.get_session().get_service_model("ec2")
    shape = model.operation_model("RunInstances").input_shape
    for name, node_type in cluster["available_node_types"].items():
        request = {**node_type["node_config"], "MinCount": 1, "MaxCount": 1}
        report = ParamValidator().validate(request, shape)
        assert not report.has_errors(), f"{name}: {report.generate_report()}"


def test_cluster_node_types_declare_what_their_hardware_has(cluster: dict[str, Any]):
    for name, node_type in cluster["available_node_types"].items():
        resources = node_type["resources"]
        assert {"CPU", "GPU"} <= set(resources), f"{name}: declare CPU and GPU explicitly"
        vcpus, gpus, _ = _instance(node_type["node_config"]["InstanceType"])
        assert resources["CPU"] <= vcpus, f"{name}: more CPUs declared than the instance has"
        assert resources["GPU"] <= gpus, f"{name}: more GPUs declared than the instance has"


def _worker_types(cluster: dict[str, Any], gpu: bool) -> dict[str, dict[str, Any]]:
    return {
        name: node_type
        for name, node_type in cluster["available_node_types"].items()
        if name != cluster["head_node_type"] and (node_type["resources"].get("GPU", 0) > 0) == gpu
    }


def test_cluster_worker_groups_are_bounded(cluster: dict[str, Any]):
    cpu_types, gpu_types = _worker_types(cluster, gpu=False), _worker_types(cluster, gpu=True)
    assert cpu_types and gpu_types, "a CPU worker group and a GPU worker group"
    for name, node_type in {**cpu_types, **gpu_types}.items():
        low, high = node_type.get("min_workers"), node_type.get("max_workers")
        assert isinstance(low, int) and isinstance(high, int), f"{name}: set min/max_workers"
        assert 0 <= low <= high, name
    total = sum(t["max_workers"] for t in {**cpu_types, **gpu_types}.values())
    assert total <= cluster["max_workers"], "the global max_workers cuts a group short"


def test_cluster_gpu_workers_host_the_gpu_serve_config(
    cluster: dict[str, Any], gpu_serve_config: ServeConfig
):
    (name, gpu_type), *_ = _worker_types(cluster, gpu=True).items()
    resources = gpu_type["resources"]

    def nodes(count: int) -> list[Node]:
        return [Node.of(resources["CPU"], resources["GPU"]) for _ in range(count)]

    assert fits(one_of_each(gpu_serve_config), nodes(1)), f"{name} cannot host vLLM + a router"
    # Serve places its minimum without waiting for the autoscaler; its maximum within bounds.
    low = max(1, gpu_type["min_workers"])
    assert fits(serve_asks(gpu_serve_config, "min_replicas"), nodes(low))
    assert fits(serve_asks(gpu_serve_config, "max_replicas"), nodes(gpu_type["max_workers"])), (
        f"{gpu_type['max_workers']} {name} nodes cannot hold Serve's maximum replicas"
    )
    _, _, gib_per_gpu = _instance(gpu_type["node_config"]["InstanceType"])
    check_weak_model_fits_gpus(gpu_serve_config, gib_per_gpu)


def test_cluster_cpu_workers_host_the_batch_route_actors(cluster: dict[str, Any]):
    """With the command's defaults, on a cluster of one CPU worker: the job's actor layout and
    its read and write tasks fit that node, and no actor asks for more than a node has."""
    defaults = route_defaults()
    for name, cpu_type in _worker_types(cluster, gpu=False).items():
        resources = {k: float(v) for k, v in cpu_type["resources"].items()}
        asks = route_asks(
            resources, defaults["num_actors"], defaults["num_cpus"], defaults["num_gpus"]
        )
        assert all(ask.gpus == 0 for ask in asks)
        assert fits(asks, [Node.of(resources["CPU"], resources["GPU"])]), name


def test_cluster_gpu_workers_host_batch_route_on_gpu_shares(cluster: dict[str, Any]):
    """`--num-gpus 0.25` (README): one actor per GPU share, each with a CPU."""
    for name, gpu_type in _worker_types(cluster, gpu=True).items():
        resources = {k: float(v) for k, v in gpu_type["resources"].items()}
        asks = route_asks(resources, None, None, 0.25)
        assert fits(asks, [Node.of(resources["CPU"], resources["GPU"])]), name


def _setup_commands(cluster: dict[str, Any], name: str) -> list[str]:
    if name == cluster["head_node_type"]:
        return [*cluster.get("setup_commands", []), *cluster.get("head_setup_commands", [])]
    node_type = cluster["available_node_types"][name]
    if "worker_setup_commands" in node_type:  # replaces the global lists for this type
        return node_type["worker_setup_commands"]
    return [*cluster.get("setup_commands", []), *cluster.get("worker_setup_commands", [])]


def test_cluster_installs_routeray_with_the_right_torch(cluster: dict[str, Any]):
    """GPU nodes get the gpu extra (CUDA vLLM); every other node the CPU torch wheels, so no
    multi-GB CUDA download lands on a machine without a GPU."""
    for name, node_type in cluster["available_node_types"].items():
        installs = [c for c in _setup_commands(cluster, name) if re.search(r'"routeray[\[ @]', c)]
        assert len(installs) == 1, f"{name}: one command installs routeray, found {installs}"
        install = installs[0]
        assert re.search(r'"ray\[[^\]]*\]==', install), f"{name}: pin Ray beside routeray"
        if node_type["resources"].get("GPU", 0) > 0:
            assert '"routeray[gpu]' in install, name
        else:
            assert "[gpu]" not in install, name
            assert "download.pytorch.org/whl/cpu" in install, f"{name} would pull CUDA torch"


def test_cluster_gpu_workers_fetch_the_weak_models_weights(
    cluster: dict[str, Any], gpu_serve_config: ServeConfig
):
    weak = gpu_serve_config.weak
    assert isinstance(weak, VLLMBackendConfig)
    for name in _worker_types(cluster, gpu=True):
        commands = " ".join(_setup_commands(cluster, name))
        assert weak.model_path in commands, f"{name} never puts weights at {weak.model_path}"


def test_cluster_ray_start_carries_the_serve_configs_keys(
    cluster: dict[str, Any], gpu_serve_config: ServeConfig
):
    """Replicas read their keys from the environment they inherit from `ray start`, on any
    node: every node installs the wrapper that fetches each key the config names, and both
    start commands run Ray through it."""
    names = _secret_envs(gpu_serve_config)
    assert {"STRONG_API_KEY", "ROUTERAY_API_KEYS"} <= names
    starts = [
        command
        for command in [*cluster["head_start_ray_commands"], *cluster["worker_start_ray_commands"]]
        if "ray start" in command
    ]
    assert len(starts) == 2 and all(f"{SECRETS_WRAPPER} ray start" in c for c in starts)
    for name in cluster["available_node_types"]:
        scripts = [c for c in _setup_commands(cluster, name) if f"{SECRETS_WRAPPER} <<" in c]
        assert len(scripts) == 1, f"{name} does not install {SECRETS_WRAPPER}"
        fetched = re.search(r"for name in ([^;]+);", scripts[0])
        assert fetched and names <= set(fetched.group(1).split()), f"{name}: {names}"


def test_cluster_nodes_get_s3_from_an_instance_profile(cluster: dict[str, Any]):
    profile = re.compile(r"^arn:aws:iam::(\d{12}|<ACCOUNT_ID>):instance-profile/[\w+=,.@-]+$")
    for name, node_type in cluster["available_node_types"].items():
        arn = node_type["node_config"].get("IamInstanceProfile", {}).get("Arn", "")
        assert profile.match(arn), f"{name}: IamInstanceProfile.Arn, got {arn!r}"


# ================================================================ deploy/rayservice.yaml


def test_rayservice_is_a_rayservice(rayservice: dict[str, Any]):
    assert rayservice["apiVersion"] == "ray.io/v1"
    assert {"serveConfigV2", "rayClusterConfig"} <= set(rayservice["spec"])


def test_rayservice_serve_config_is_a_routeray_app(
    embedded_serve_document: dict[str, Any], embedded_serve_config: ServeConfig
):
    apps = embedded_serve_document["applications"]
    assert [a["import_path"] for a in apps] == [APP_IMPORT_PATH]
    module, _, attribute = APP_IMPORT_PATH.partition(":")
    assert callable(getattr(importlib.import_module(module), attribute))
    assert isinstance(embedded_serve_config.weak, VLLMBackendConfig)


def test_rayservice_serve_config_matches_serve_config_gpu(embedded_serve_document: dict[str, Any]):
    drift = _differences(_yaml(GPU_SERVE_CONFIG), embedded_serve_document) - ALLOWED_DRIFT
    assert not drift, (
        f"deploy/rayservice.yaml's serveConfigV2 differs from serve_config.gpu.yaml at "
        f"{sorted(drift)}; change both, or list a deliberate difference in ALLOWED_DRIFT"
    )


def test_rayservice_pods_get_the_secrets_from_a_secret(
    rayservice: dict[str, Any], embedded_serve_config: ServeConfig
):
    """Any pod may host a replica that reads a key, so every pod's env carries each one the
    config names, from the Secret, never as a literal."""
    names = _secret_envs(embedded_serve_config)
    assert {"STRONG_API_KEY", "ROUTERAY_API_KEYS"} <= names
    for group, template in _pod_templates(rayservice["spec"]["rayClusterConfig"]).items():
        env = {e["name"]: e for e in _ray_container(template).get("env", [])}
        for name in names:
            assert name in env, f"{group} pods lack {name}"
            assert "value" not in env[name], f"{group}: {name} given as a literal"
            ref = env[name].get("valueFrom", {}).get("secretKeyRef", {})
            assert ref.get("name") == SECRET_NAME and ref.get("key"), f"{group}: {name}"
            # A missing key must stop the pod: empty client keys would leave the endpoint open.
            assert not ref.get("optional"), f"{group}: {name} must not be optional"
    assert all(doc.get("kind") != "Secret" for doc in _documents(RAYSERVICE))


def test_rayservice_gpu_group_hosts_the_serve_config(
    rayservice: dict[str, Any], embedded_serve_config: ServeConfig
):
    cluster_spec = rayservice["spec"]["rayClusterConfig"]
    groups = _gpu_groups(cluster_spec)
    assert groups, "a worker group requesting nvidia.com/gpu"
    group = groups[0]
    resources = _ray_container(group["template"])["resources"]
    requested = _quantity(resources["requests"].get("nvidia.com/gpu", 0))
    limited = _quantity(resources["limits"]["nvidia.com/gpu"])
    assert requested == limited, "Kubernetes takes extended resources with requests == limits"
    params = group["rayStartParams"]
    assert _quantity(params["num-gpus"]) == limited, "declare the pod's GPUs to Ray"
    assert _quantity(params["num-cpus"]) <= _quantity(resources["limits"]["cpu"])

    def pods(count: int) -> list[Node]:
        return [_group_node(group) for _ in range(count)]

    assert fits(one_of_each(embedded_serve_config), pods(1))
    low = max(1, group.get("minReplicas", group.get("replicas", 1)))
    assert fits(serve_asks(embedded_serve_config, "min_replicas"), pods(low))
    assert fits(serve_asks(embedded_serve_config, "max_replicas"), pods(group["maxReplicas"]))

    spec = group["template"]["spec"]
    vcpus, gpus, gib_per_gpu = _instance(spec.get("nodeSelector", {}).get(INSTANCE_TYPE_LABEL, ""))
    assert limited <= gpus and _quantity(resources["limits"]["cpu"]) <= vcpus
    check_weak_model_fits_gpus(embedded_serve_config, gib_per_gpu)


def test_rayservice_gpu_pods_mount_the_weak_models_weights(
    rayservice: dict[str, Any], embedded_serve_config: ServeConfig
):
    weak = embedded_serve_config.weak
    assert isinstance(weak, VLLMBackendConfig)
    for group in _gpu_groups(rayservice["spec"]["rayClusterConfig"]):
        mounts = [m["mountPath"] for m in _ray_container(group["template"]).get("volumeMounts", [])]
        assert any(Path(weak.model_path).is_relative_to(mount) for mount in mounts), (
            f"{group['groupName']} pods do not mount {weak.model_path}"
        )


# ================================================================ deploy/rayjob.yaml


def _entrypoint(rayjob: dict[str, Any]) -> list[str]:
    return shlex.split(rayjob["spec"]["entrypoint"])


def test_rayjob_is_a_rayjob_that_cleans_up(rayjob: dict[str, Any]):
    spec = rayjob["spec"]
    assert rayjob["apiVersion"] == "ray.io/v1"
    assert spec["shutdownAfterJobFinishes"] is True
    assert "rayClusterSpec" in spec or "clusterSelector" in spec


def test_rayjob_entrypoint_is_a_batch_route_the_cli_accepts(rayjob: dict[str, Any]):
    entrypoint = rayjob["spec"]["entrypoint"]
    assert not SHELL_SPECIAL & set(entrypoint), "the entrypoint runs through a shell"
    parsed = parse_command_line(_entrypoint(rayjob))
    assert parsed.command_path == "routeray batch route"
    assert parsed.params["input"].startswith("s3://")
    assert parsed.params["output"].startswith("s3://")
    assert parsed.params["demo_prompts"] is None


def test_rayjob_cluster_hosts_the_jobs_actors(rayjob: dict[str, Any]):
    """The pool the entrypoint asks for, plus a read and a write task, fits the workers that
    are there when the job starts, and no actor asks for more than a pod has."""
    params = parse_command_line(_entrypoint(rayjob)).params
    cluster_spec = rayjob["spec"]["rayClusterSpec"]
    head = cluster_spec["headGroupSpec"]
    nodes = [
        _group_node(group)
        for group in cluster_spec["workerGroupSpecs"]
        for _ in range(group.get("minReplicas", group.get("replicas", 1)))
    ] + [_group_node(head)]
    resources = {
        "CPU": sum(n.cpus for n in nodes),
        "GPU": float(sum(len(n.gpus) for n in nodes)),
    }
    asks = route_asks(resources, params["num_actors"], params["num_cpus"], params["num_gpus"])
    assert fits(asks, nodes)


def test_rayjob_reads_s3_through_irsa(
    rayjob_documents: list[dict[str, Any]], rayjob: dict[str, Any]
):
    account = _one(rayjob_documents, "ServiceAccount")
    arn = account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
    assert re.match(r"^arn:aws:iam::(\d{12}|<ACCOUNT_ID>):role/[\w+=,.@-]+$", arn)
    for group, template in _pod_templates(rayjob["spec"]["rayClusterSpec"]).items():
        assert template["spec"].get("serviceAccountName") == account["metadata"]["name"], group


# ================================================================ all of them


@pytest.mark.parametrize("path", [CLUSTER, RAYSERVICE, RAYJOB], ids=lambda p: p.name)
def test_no_credentials_in_deploy_files(path: Path):
    text = path.read_text()
    found = [p.pattern for p in KEY_PATTERNS if p.search(text)]
    assert not found, f"{path.name} holds what looks like a credential: {found}"


def test_every_cluster_runs_one_ray_version_the_project_accepts(
    rayservice: dict[str, Any], rayjob: dict[str, Any]
):
    """The launcher and the cluster must match, and so must every image of a KubeRay cluster."""
    pins = set(re.findall(r'"ray\[[^\]]*\]==([^"]+)"', CLUSTER.read_text()))
    pins.add(rayservice["spec"]["rayClusterConfig"]["rayVersion"])
    pins.add(rayjob["spec"]["rayClusterSpec"]["rayVersion"])
    assert len(pins) == 1, f"different Ray versions: {sorted(pins)}"
    ray = next(Requirement(r) for r in requires("routeray") or [] if Requirement(r).name == "ray")
    assert ray.specifier.contains(pins.pop())
