"""cluster.yaml: valid for Ray's autoscaler (offline), and study resource asks checked against it."""

import copy
import json
import re
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

from study.cluster import DRIVER_RESOURCE
from study.cluster_fit import check_fits, main

CLUSTER_YAML = Path(__file__).resolve().parents[1] / "cluster.yaml"


@pytest.fixture(scope="module")
def cluster():
    return yaml.safe_load(CLUSTER_YAML.read_text())


def test_cluster_yaml_matches_rays_schema(cluster):
    from ray.autoscaler._private.util import prepare_config, validate_config

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(cluster, schema)
    validate_config(cluster)
    validate_config(prepare_config(copy.deepcopy(cluster)))  # with the AWS defaults filled in


def test_cluster_layout(cluster):
    nodes = cluster["available_node_types"]
    head = nodes[cluster["head_node_type"]]
    assert head["resources"][DRIVER_RESOURCE] >= 1 and head["resources"]["CPU"] == 0
    workers = [spec for name, spec in nodes.items() if name != cluster["head_node_type"]]
    gpu = [spec for spec in workers if spec["resources"].get("GPU", 0) >= 1]
    assert gpu and all(spec["min_workers"] == 0 and spec["max_workers"] >= 1 for spec in gpu)
    assert all(DRIVER_RESOURCE not in spec["resources"] for spec in workers)
    assert any(spec["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot" for spec in gpu)
    for image in (cluster["docker"]["head_image"], cluster["docker"]["worker_image"]):
        assert image.startswith(f"rayproject/ray:{ray.__version__}-py311"), image
    assert any("pip install" in cmd and "mlclip-study" in cmd for cmd in cluster["setup_commands"])


def test_cluster_yaml_holds_no_credentials():
    text = CLUSTER_YAML.read_text()
    assert not re.search(r"AKIA[0-9A-Z]{16}|aws_secret|secret_access|aws_access_key|password", text, re.I)
    assert not re.search(r"RAY_AUTH_TOKEN|\b[0-9a-f]{32,}\b", text, re.I)  # the Ray token travels as a file, never in here
    assert not re.search(r"arn:aws:iam::\d{12}", text)


def test_every_node_runs_ray_with_the_token_from_the_submitting_machine(cluster):
    """Ray's token authentication: the token file is copied to every node and every `ray start` asks for it."""
    assert cluster["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    starts = [cmd for key in ("head_start_ray_commands", "worker_start_ray_commands") for cmd in cluster[key]
              if "ray start" in cmd]
    assert len(starts) == 2 and all(cmd.startswith("export RAY_AUTH_MODE=token;") for cmd in starts), starts


def test_fitting_ask_has_no_problems():
    assert check_fits(CLUSTER_YAML, workers_per_trial=2, gpus_per_worker=1, concurrent_trials=4) == []
    assert check_fits(CLUSTER_YAML, workers_per_trial=1, gpus_per_worker=0.5, concurrent_trials=16,
                      cpus_per_worker=4) == []


@pytest.mark.parametrize("ask, message", [
    (dict(workers_per_trial=4, gpus_per_worker=1, concurrent_trials=3), r"= 12 workers .* only 8"),
    (dict(workers_per_trial=1, gpus_per_worker=2, concurrent_trials=1), r"no node type holds one worker \(2 GPU"),
    (dict(workers_per_trial=1, gpus_per_worker=1, concurrent_trials=1, cpus_per_worker=16), r"no node type holds"),
    (dict(workers_per_trial=1, gpus_per_worker=0.125, concurrent_trials=2000), r"2000 concurrent trials need"),
    (dict(workers_per_trial=0, gpus_per_worker=1, concurrent_trials=1), r"invalid ask"),
])
def test_asks_that_do_not_fit(ask, message):
    problems = check_fits(CLUSTER_YAML, **ask)
    assert problems and re.search(message, problems[0]), problems


def test_driver_resource_must_sit_on_the_head_only(cluster):
    bad = copy.deepcopy(cluster)
    del bad["available_node_types"]["head"]["resources"][DRIVER_RESOURCE]
    bad["available_node_types"]["gpu_worker"]["resources"][DRIVER_RESOURCE] = 10
    problems = check_fits(bad, 1, 1, 1)
    assert any("head node type 'head' does not declare" in p for p in problems)
    assert any("worker node type 'gpu_worker' declares" in p for p in problems)


def test_invalid_config_is_reported(cluster, tmp_path):
    bad = copy.deepcopy(cluster)
    bad["no_such_field"] = 1
    assert re.search(r"invalid autoscaler config.*no_such_field", check_fits(bad, 1, 1, 1)[0])
    assert check_fits(tmp_path / "missing.yaml", 1, 1, 1)[0].startswith("cannot read cluster config")


def test_cli(capsys):
    assert main([str(CLUSTER_YAML), "--workers-per-trial", "2", "--concurrent-trials", "4"]) == 0
    assert main([str(CLUSTER_YAML), "--workers-per-trial", "9"]) == 1
    assert "does not fit" in capsys.readouterr().err


def test_only_placement_groups_of_ended_jobs_are_orphans():
    """A killed study's leftover placement group is released on --address; nothing anyone still uses is."""
    from types import SimpleNamespace as Row

    from ray.job_submission import JobStatus

    from study.cluster import orphaned_placement_groups

    jobs = [Row(job_id="01000000", status=JobStatus.RUNNING), Row(job_id="02000000", status=JobStatus.FAILED),
            Row(job_id="03000000", status="SUCCEEDED"), Row(job_id=None, status=JobStatus.PENDING)]
    groups = [
        Row(placement_group_id="a", creator_job_id="02000000", state="CREATED", is_detached=False),  # killed job
        Row(placement_group_id="b", creator_job_id="03000000", state="PENDING", is_detached=False),  # ended job
        Row(placement_group_id="c", creator_job_id="01000000", state="CREATED", is_detached=False),  # another study
        Row(placement_group_id="d", creator_job_id="02000000", state="CREATED", is_detached=True),  # meant to outlive
        Row(placement_group_id="e", creator_job_id="02000000", state="REMOVED", is_detached=False),  # already gone
        Row(placement_group_id="f", creator_job_id="04000000", state="CREATED", is_detached=False),  # this driver's
        Row(placement_group_id="g", creator_job_id="05000000", state="CREATED", is_detached=False),  # no such job
    ]
    assert orphaned_placement_groups(groups, jobs, own_job="04000000") == ["a", "b", "g"]


def test_the_workers_get_the_studys_ray_settings_and_the_users_mlflow_retry_budget(monkeypatch):
    from study.cluster import RAY_ENV_DEFAULTS, apply_env_defaults

    for key in RAY_ENV_DEFAULTS:  # so that this process's environment is given back as it was
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "10")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "not forwarded")
    monkeypatch.setenv("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "1")  # the user's value wins
    env = apply_env_defaults()
    assert env["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "10" and "MLFLOW_TRACKING_PASSWORD" not in env
    assert env["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] == "1" and env["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] == "true"
