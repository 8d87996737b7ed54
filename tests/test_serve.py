"""`ferpipe serve`: deployments that run `dvc exp run` / `dvc repro`, serialised, against a real server.

The end-to-end test starts `prefect server start` (temporary PREFECT_HOME, free 127.0.0.1 port) and
`ferpipe serve` on a tiny temporary project (git + DVC; a `download` stage on 14 synthetic images
and a `train-params` stage that records the validated `train` params), triggers two
`train/train-orsanet` runs at once through the Prefect client, and checks that they ran one after
the other, each became a DVC experiment with its `-S train.*` values, and that the stage flow
`dvc exp run` triggered reported to the same server. Real training is not run: it needs the
aligned shards and priors of the whole pipeline (minutes); the command it would run is checked.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.prefect_server import BIN, api_url_set, base_env, kill_group, prefect_server, start, tail


def test_overrides_become_the_dvc_exp_run_command(tmp_path):
    from dvc.utils.hydra import apply_overrides

    from ferpipe.config import load_params, parse_override
    from flows.deployments import exp_run_command, format_value, train_overrides

    overrides = train_overrides(lr=0.0005, epochs=1, batch_size=8, preset="orsanet-cpu", optimizer=None,
                                weight_decay=1e-05, max_steps_per_epoch=2, device=None)
    assert overrides == ["train.lr=0.0005", "train.epochs=1", "train.batch_size=8", "train.preset=orsanet-cpu",
                         "train.weight_decay=1.0e-05", "train.max_steps_per_epoch=2"]
    assert exp_run_command(overrides[:2], name="pf-x", dvc="dvc") == [
        "dvc", "exp", "run", "-S", "train.lr=0.0005", "-S", "train.epochs=1", "-n", "pf-x"]
    assert format_value(True) == "true" and format_value([1, 2.5]) == "[1,2.5]" and format_value(None) == "null"

    # DVC (Hydra grammar) and ferpipe (YAML) read every value back as what was given
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"train": {"lr": None, "epochs": None, "batch_size": None, "preset": "x",
                                                "weight_decay": None, "max_steps_per_epoch": None}}))
    apply_overrides(params, overrides)
    expected = {"lr": 0.0005, "epochs": 1, "batch_size": 8, "preset": "orsanet-cpu", "weight_decay": 1e-05,
                "max_steps_per_epoch": 2}
    # DVC's YAML writer prints 1e-05, which YAML 1.1 reads as a string: the validated params hold floats
    validated = load_params(params).train
    assert {k: getattr(validated, k) for k in expected} == expected
    assert {parse_override(o)[0].split(".")[1]: parse_override(o)[1] for o in overrides} == expected


def test_deployments_are_named_for_the_readme_and_limited_to_one_run():
    from flows.deployments import deployments

    deps = deployments(".")
    assert [f"{d.flow_name}/{d.name}" for d in deps] == ["train/train-orsanet", "pipeline/repro"]
    for d in deps:
        limit = d.concurrency_limit
        assert (limit if isinstance(limit, int) else limit.limit) == 1
        assert d.parameters["project_dir"] == str(Path(".").resolve())
        assert d.entrypoint.startswith("flows.deployments.")
    schema = deps[0]._parameter_openapi_schema.properties
    assert {"lr", "epochs", "batch_size", "preset", "max_steps_per_epoch", "set_params"} <= set(schema)


def test_serve_refuses_without_an_api_url(tmp_path):
    env = base_env(tmp_path / "home")
    proc = subprocess.run([str(BIN / "ferpipe"), "serve"], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "PREFECT_API_URL is not set" in proc.stderr and "prefect server start" in proc.stderr


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def make_project(root: Path) -> Path:
    """A tiny ferpipe project: git + DVC, 14 synthetic images, and a stage recording the train params."""
    root.mkdir(parents=True)
    (root / "params.yaml").write_text(yaml.safe_dump({
        "download": {"dataset": "mini", "workers": 1,
                     "synthetic": {"n_per_class": 2, "size": 96, "workers": 1}},
        "train": {"lr": None, "epochs": None, "batch_size": None, "preset": "orsanet-cpu",
                  "max_steps_per_epoch": None},
    }, sort_keys=False))
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {
        "download": {"cmd": "ferpipe download", "params": ["download"],
                     "outs": ["data/raw/${download.dataset}", "data/manifests/${download.dataset}.parquet"]},
        "train-params": {"cmd": "ferpipe params > train_params.json", "params": ["train"],
                         "outs": [{"train_params.json": {"cache": False}}]},
    }}, sort_keys=False))
    (root / ".gitignore").write_text("data/downloads\nreports\n")
    _git(root, "init", "-q", "-b", "main")
    _git(root, "config", "user.email", "test@ferpipe")
    _git(root, "config", "user.name", "ferpipe test")
    subprocess.run([str(BIN / "dvc"), "init", "-q"], cwd=root, check=True, env=base_env(root / ".home"))
    subprocess.run([str(BIN / "dvc"), "config", "core.analytics", "false"], cwd=root, check=True)
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", "tiny project")
    return root


def _find_exp(node, name: str):
    """The `dvc exp show --json` record named ``name`` (searched recursively)."""
    if isinstance(node, dict):
        if node.get("name") == name and "data" in node:
            return node
        node = list(node.values())
    if isinstance(node, list):
        for item in node:
            found = _find_exp(item, name)
            if found is not None:
                return found
    return None


@pytest.mark.slow
def test_serve_train_orsanet_runs_serialised_dvc_experiments(tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.deployments import run_deployment

    project = make_project(tmp_path / "project")
    home, logs = tmp_path / "prefect-home", tmp_path / "logs"
    serve_log = logs / "ferpipe-serve.log"
    # a run waiting for the deployment's slot is retried after 2 s (default 30), the runner polls every 2 s
    with prefect_server(home, logs, PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS="2") as api_url, \
            api_url_set(api_url, home):
        serve = start([str(BIN / "ferpipe"), "serve", "--root", str(project)],
                      {**base_env(home, api_url), "PREFECT_RUNNER_POLL_FREQUENCY": "2"}, serve_log, cwd=project)
        try:
            async def deployment():
                async with get_client() as client:
                    return await client.read_deployment_by_name("train/train-orsanet")

            deadline = time.monotonic() + 120
            while True:
                try:
                    dep = asyncio.run(deployment())
                    break
                except Exception:
                    assert serve.poll() is None, tail(serve_log)
                    assert time.monotonic() < deadline, "deployment never appeared:\n" + tail(serve_log)
                    time.sleep(1)
            assert dep.global_concurrency_limit is not None and dep.global_concurrency_limit.limit == 1
            assert dep.parameters["project_dir"] == str(project.resolve())
            assert "lr" in dep.parameter_openapi_schema["properties"]
            assert "serialised" in serve_log.read_text()

            # two runs at once: the second waits for the first (one dvc exp run at a time). The first is
            # started with the README's command, the second through the client.
            cli = subprocess.run([str(BIN / "prefect"), "deployment", "run", "train/train-orsanet",
                                  "--param", "lr=0.0005", "--param", "epochs=1", "--param", "max_steps_per_epoch=2",
                                  "--param", "experiment_name=exp-0"], env=base_env(home, api_url),
                                 capture_output=True, text=True, timeout=120)
            assert cli.returncode == 0, cli.stdout + cli.stderr
            first_id = re.search(r"UUID:\s*([0-9a-f-]{36})", cli.stdout).group(1)
            second = run_deployment("train/train-orsanet", timeout=0, parameters={
                "lr": 0.001, "epochs": 1, "max_steps_per_epoch": 2, "experiment_name": "exp-1"})

            async def read(ids):
                async with get_client() as client:
                    return [await client.read_flow_run(i) for i in ids]

            deadline = time.monotonic() + 300
            while True:
                done = asyncio.run(read([first_id, second.id]))
                if all(r.state.is_final() for r in done):
                    break
                assert serve.poll() is None, tail(serve_log)
                assert time.monotonic() < deadline, "runs never finished:\n" + tail(serve_log, 8000)
                time.sleep(2)
            assert all(r.state.is_completed() for r in done), (
                [r.state for r in done], tail(serve_log, 8000))
            first, later = sorted(done, key=lambda r: r.start_time)
            assert first.end_time <= later.start_time, "runs overlapped"

            # each run is a DVC experiment carrying its -S values; the workspace holds the last one
            env = base_env(home, api_url)
            shown = subprocess.run([str(BIN / "dvc"), "exp", "show", "--json"], cwd=project, env=env,
                                   capture_output=True, text=True, check=True)
            table = json.loads(shown.stdout)
            for i, lr in enumerate((0.0005, 0.001)):
                exp = _find_exp(table, f"exp-{i}")
                assert exp is not None, shown.stdout[:3000]
                train = exp["data"]["params"]["params.yaml"]["data"]["train"]
                assert train["lr"] == lr and train["epochs"] == 1 and train["max_steps_per_epoch"] == 2
            last = json.loads((project / "train_params.json").read_text())["train"]
            assert last["lr"] == {"exp-0": 0.0005, "exp-1": 0.001}[later.parameters["experiment_name"]]

            # the stage flow dvc ran (`ferpipe download`) reported to this server
            async def stage_runs():
                async with get_client() as client:
                    return await client.read_flow_runs(
                        flow_filter=FlowFilter(name=FlowFilterName(any_=["download"])))

            stages = asyncio.run(stage_runs())
            assert len(stages) == 1 and stages[0].state.is_completed()
            assert first.start_time <= stages[0].start_time <= first.end_time

            # pipeline/repro: `dvc repro` in the same workspace (up to date after the experiments)
            repro = run_deployment("pipeline/repro", timeout=180)
            assert repro.state.is_completed(), (repro.state, tail(serve_log, 8000))
            assert "dvc repro" in serve_log.read_text()
        finally:
            kill_group(serve)
    if os.environ.get("FERPIPE_KEEP_LOGS"):
        sys.stderr.write(tail(serve_log, 20000))
