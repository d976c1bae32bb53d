"""Serve configuration files: the shipped ones load, secrets come from env or file."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from serve_app.config import SecretRef, ServeConfig

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["serve_config.yaml", "serve_config.gpu.yaml"])
def test_shipped_serve_configs_load(name):
    config = ServeConfig.from_yaml(ROOT / name)
    assert config.strong.kind == "openai" and config.weak.kind == "vllm"
    assert config.strong.api_key.env == "STRONG_API_KEY"
    assert config.routers[0].aliases == ["default", "fast"]


def test_gpu_config_puts_models_on_gpus():
    config = ServeConfig.from_yaml(ROOT / "serve_config.gpu.yaml")
    assert config.weak.num_gpus >= 1 and 0 < config.router_deployment.num_gpus < 1
    assert config.router_deployment.autoscaling["max_replicas"] > 1


def test_bare_document_and_unknown_keys(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "strong: {kind: openai, model: s, base_url: 'http://x/v1'}\n"
        "weak: {kind: openai, model: w, base_url: 'http://y/v1'}\nport: 9001\n"
    )
    assert ServeConfig.from_yaml(path).port == 9001
    path.write_text(path.read_text() + "trheshold: 0.3\n")
    with pytest.raises(ValidationError, match="trheshold"):
        ServeConfig.from_yaml(path)


def test_secrets_from_env_then_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    secret = tmp_path / "key"
    secret.write_text("from-file\n")
    ref = SecretRef(env="ROUTERAY_TEST_KEY", file=str(secret))
    monkeypatch.delenv("ROUTERAY_TEST_KEY", raising=False)
    assert ref.read() == "from-file"
    monkeypatch.setenv("ROUTERAY_TEST_KEY", "from-env")
    assert ref.read() == "from-env"


def test_relative_paths_are_pinned(tmp_path: Path):
    config = ServeConfig.from_yaml(ROOT / "serve_config.yaml").with_absolute_paths(tmp_path)
    assert config.weak.model_path == str(tmp_path / "out/tiny-model")


def _config(tmp_path: Path, router: str) -> ServeConfig:
    path = tmp_path / "c.yaml"
    path.write_text(
        f"routers: [{router}]\n"
        "strong: {kind: openai, model: s, base_url: 'http://x/v1'}\n"
        "weak: {kind: openai, model: w, base_url: 'http://y/v1'}\n"
    )
    return ServeConfig.from_yaml(path).with_absolute_paths(tmp_path)


def test_routers_by_shipped_name_directory_and_load_options(tmp_path: Path, tiny_router_dir):
    from routers import SHIPPED
    from serve_app.app import check_routers

    shipped = _config(tmp_path, "{name: gap, path: default}")
    assert shipped.routers[0].path == str(SHIPPED["default"])
    assert _config(tmp_path, "{name: gap}").routers[0].path == str(SHIPPED["default"])
    check_routers(shipped)
    mf = _config(
        tmp_path, f"{{name: mf, path: {tiny_router_dir}, options: {{weak_model: other-model}}}}"
    )
    check_routers(mf)


@pytest.mark.parametrize(
    ("router", "error"),
    [
        ("{name: mf, path: TINY, options: {wings: 2}}", "has no load option 'wings'"),
        ("{name: mf, path: TINY, options: {weak_model: ''}}", "cannot use load option"),
        ("{name: x, path: missing-dir}", "does not exist"),
        ("{name: mf, path: UNRECORDED}", "records no default threshold"),
    ],
)
def test_a_router_that_cannot_be_served_stops_the_build(
    tmp_path: Path, tiny_router_dir: Path, router: str, error: str
):
    import json
    import shutil

    from serve_app.app import check_routers

    unrecorded = tmp_path / "unrecorded"
    shutil.copytree(tiny_router_dir, unrecorded)
    document = json.loads((unrecorded / "config.json").read_text())
    document["metadata"] = {}
    (unrecorded / "config.json").write_text(json.dumps(document))
    router = router.replace("TINY", str(tiny_router_dir)).replace("UNRECORDED", str(unrecorded))
    with pytest.raises(ValueError, match=error):
        check_routers(_config(tmp_path, router))


def test_configured_client_keys_that_resolve_to_nothing_refuse_to_start(tmp_path, monkeypatch):
    from backends.config import SecretRef
    from serve_app.config import AuthConfig

    monkeypatch.delenv("ROUTERAY_TEST_KEYS", raising=False)
    assert AuthConfig().api_key_list() == []  # auth off: open on purpose
    keys = tmp_path / "keys"
    keys.write_text("k1, k2\nk3\n")
    assert AuthConfig(api_keys=SecretRef(file=str(keys))).api_key_list() == ["k1", "k2", "k3"]
    for missing in (
        SecretRef(env="ROUTERAY_TEST_KEYS"),
        SecretRef(file=str(tmp_path / "absent")),
        SecretRef(env="ROUTERAY_TEST_KEYS", file=str(tmp_path / "absent")),
    ):
        with pytest.raises(ValueError, match="refusing to serve without authentication"):
            AuthConfig(api_keys=missing).api_key_list()
    monkeypatch.setenv("ROUTERAY_TEST_KEYS", " , \n")
    with pytest.raises(ValueError, match="holds no key"):
        AuthConfig(api_keys=SecretRef(env="ROUTERAY_TEST_KEYS")).api_key_list()


def test_router_replicas_can_ask_for_custom_resources(tmp_path: Path):
    from serve_app.app import build

    path = tmp_path / "c.yaml"
    path.write_text(
        "routers: [{name: fast, path: fast, placement: deployment}]\n"
        "strong: {kind: openai, model: s, base_url: 'http://x/v1'}\n"
        "weak: {kind: openai, model: w, base_url: 'http://y/v1'}\n"
        "router_deployment: {num_cpus: 0.5, resources: {router_node: 1}}\n"
    )
    config = ServeConfig.from_yaml(path)
    assert config.router_deployment.resources == {"router_node": 1.0}
    assert ServeConfig.from_yaml(ROOT / "serve_config.yaml").router_deployment.resources == {}
    # The ingress is bound to the router deployment; Serve exposes no public way down to it.
    router = build(config)._bound_deployment.init_args[1]._bound_deployment
    assert router.name == "Router"
    assert router.ray_actor_options["resources"] == {"router_node": 1.0}
    path.write_text(path.read_text().replace("router_node: 1", "router_node: lots"))
    with pytest.raises(ValidationError, match="resources"):
        ServeConfig.from_yaml(path)


def _bound(config: ServeConfig):
    """The ingress's bound init args: (config dict, router app or None, strong, weak)."""
    from serve_app.app import build

    return build(config)._bound_deployment.init_args


def test_a_light_router_scores_in_the_ingress_and_a_heavy_one_on_the_deployment(tmp_path: Path):
    backends = (
        "strong: {kind: openai, model: s, base_url: 'http://x/v1'}\n"
        "weak: {kind: openai, model: w, base_url: 'http://y/v1'}\n"
    )
    path = tmp_path / "c.yaml"
    path.write_text(
        "routers: [{name: fast, path: fast}, {name: minilm, path: minilm}]\n" + backends
    )
    config, router, *_ = _bound(ServeConfig.from_yaml(path))
    placed = {r["name"]: r["placement"] for r in config["routers"]}
    assert placed == {"fast": "ingress", "minilm": "deployment"}
    # Only the heavy router is loaded by the router deployment.
    assert [r["name"] for r in router._bound_deployment.init_args[0]] == ["minilm"]
    # Every router in the ingress: no router deployment at all.
    path.write_text("routers: [{name: fast, path: fast}]\n" + backends)
    assert _bound(ServeConfig.from_yaml(path))[1] is None
    # An explicit placement wins over the kind's.
    path.write_text("routers: [{name: minilm, path: minilm, placement: ingress}]\n" + backends)
    config, router, *_ = _bound(ServeConfig.from_yaml(path))
    assert config["routers"][0]["placement"] == "ingress" and router is None


def test_the_ingress_can_autoscale(tmp_path: Path):
    from serve_app.app import build

    path = tmp_path / "c.yaml"
    path.write_text(
        "strong: {kind: openai, model: s, base_url: 'http://x/v1'}\n"
        "weak: {kind: openai, model: w, base_url: 'http://y/v1'}\n"
        "ingress: {num_cpus: 0.25, autoscaling: {min_replicas: 1, max_replicas: 3}}\n"
    )
    ingress = build(ServeConfig.from_yaml(path))._bound_deployment
    assert ingress.ray_actor_options["num_cpus"] == 0.25
    assert ingress._deployment_config.autoscaling_config.max_replicas == 3
