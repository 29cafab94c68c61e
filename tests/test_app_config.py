"""The Serve config file and the options the app builder resolves from it, without starting Ray."""

import pytest
import yaml

from deployments.app import MODEL_DEPLOYMENTS, AppArgs, ModelPlacement, actor_options, build_app
from pipelines.serving import DEFAULT_CONFIG, load_serve_config
from stores.settings import REPO_ROOT


def test_serve_config_is_a_valid_deploy_config():
    config = load_serve_config(DEFAULT_CONFIG)  # ServeDeploySchema: what `serve deploy` validates
    assert config.http_options.host == "127.0.0.1"
    assert config.logging_config.enable_access_log is False
    app = config.applications[0]
    assert app.import_path == "deployments.app:build_app"
    AppArgs.model_validate(app.args)
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())["applications"][0]["deployments"]
    for deployment in raw:
        # GPUs must come from args.models.*.gpu_share; a hard num_gpus here would hang a CPU-only cluster.
        assert "num_gpus" not in deployment.get("ray_actor_options", {})
        assert deployment["max_ongoing_requests"] > 0


def test_gpu_share_only_where_the_cluster_has_gpus():
    placement = ModelPlacement(num_cpus=1, gpu_share=0.25)
    assert actor_options(placement, cluster_gpus=0) == {"num_cpus": 1, "num_gpus": 0.0}
    assert actor_options(placement, cluster_gpus=8) == {"num_cpus": 1, "num_gpus": 0.25}


def test_builder_applies_placements_and_rejects_unknown_models():
    app = build_app({"models": {"popularity": {"num_cpus": 0.5}}, "ingress": {"cascade": ["popularity"]}})
    assert app is not None
    with pytest.raises(ValueError, match="unknown models"):
        build_app({"models": {"nonexistent": {}}})
    with pytest.raises(Exception):
        build_app({"modelz": {}})


def test_port_override_keeps_the_rest(tmp_path):
    config = load_serve_config(DEFAULT_CONFIG, http_port=18123, namespace="t_ns")
    assert config.http_options.port == 18123
    assert config.applications[0].args["namespace"] == "t_ns"
    assert yaml.safe_load(DEFAULT_CONFIG.read_text())["http_options"]["port"] == 8000


def test_one_replica_of_everything_fits_two_cores():
    """`recserve serve` starts Ray with the machine's CPUs (2 here, and in CI): the ingress plus one
    replica of every model must fit, or a deployment waits forever for its CPU share."""
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())["applications"][0]
    models = AppArgs.model_validate(raw["args"]).models
    assert set(models) == set(MODEL_DEPLOYMENTS)  # every model is placed explicitly
    ingress = next(d for d in raw["deployments"] if d["name"] == "Ingress")
    total = ingress["ray_actor_options"]["num_cpus"] * ingress["num_replicas"]
    total += sum(p.num_cpus for p in models.values() if p.enabled)
    assert total <= 2.0, f"{total} CPUs asked for"
    assert raw["args"]["ingress"]["cascade"] == ["tgn", "hgt", "lightgcn", "content", "popularity"]


def test_the_grafana_dashboard_only_charts_metrics_that_exist():
    """Every `ray_recserve_*` series the dashboard queries is one the ingress or the models define."""
    import json
    import re

    dashboard = json.loads((REPO_ROOT / "deployments" / "grafana" / "recserve_dashboard.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    queried = {re.sub(r"_(total|bucket|sum|count)$", "", m) for e in exprs for m in re.findall(r"ray_recserve_\w+", e)}
    defined = set(re.findall(r'"(recserve_\w+)"', (REPO_ROOT / "deployments" / "metrics.py").read_text()))
    assert queried and queried <= {f"ray_{name}" for name in defined}
    assert {f"ray_{name}" for name in defined} - queried == set(), "a metric the dashboard does not show"


@pytest.mark.parametrize("stopped_while", ["starting", "serving"])
def test_ctrl_c_or_sigterm_stops_serve_cleanly_while_starting_or_serving(monkeypatch, stopped_while):
    """A stop that lands while Serve is still starting leaves with status 130, not a contextlib error; either way
    Ray is stopped. (Ray itself is not started: the interrupt is the fault under test.)"""
    import signal

    from pipelines import serving

    stops = []

    def start(*args, **kwargs):
        if stopped_while == "starting":
            raise KeyboardInterrupt
        return "config"

    monkeypatch.setattr(serving, "start", start)
    monkeypatch.setattr(serving, "stop", lambda: stops.append(True))
    handler = signal.getsignal(signal.SIGTERM)
    try:
        if stopped_while == "starting":
            with pytest.raises(SystemExit) as exited:
                with serving.running(None):
                    pytest.fail("the block must not run")
            assert exited.value.code == 130
        else:
            with serving.running(None) as config:
                assert config == "config"
                raise KeyboardInterrupt
    finally:
        signal.signal(signal.SIGTERM, handler)
    assert stops == [True]
