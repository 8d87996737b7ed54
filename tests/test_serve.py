"""`ferpipe serve`: deployments that run `dvc exp run --temp` / `dvc repro`, serialised, against a real server.

The end-to-end test starts `prefect server start` (temporary PREFECT_HOME, free 127.0.0.1 port) and
`ferpipe serve` on a tiny temporary project (git + DVC; tiny random priors shards added to DVC and
the real `ferpipe train` stage on a tiny ORSANet, 2 steps an epoch), reproduces it once (the
workspace's model), triggers two `train/train-orsanet` runs at once (one with the README's
`prefect deployment run ... --param epochs=1`), and checks that they ran one after the other, each
became a DVC experiment that `dvc exp show` lists with its `-S train.*` values and its resolved
hyperparameters, that params.yaml, dvc.lock and the workspace's model and reports stayed
byte-identical, that the deployment runs carry the resolved values as parameters and tags, and
that the train stage runs reported to the same server named by stage, dataset and experiment.
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
        "dvc", "exp", "run", "--temp", "-S", "train.lr=0.0005", "-S", "train.epochs=1", "-n", "pf-x"]
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


TINY = {"depth": 1, "embed_dim": 32, "num_heads": 2, "ir_widths": [8, 8, 16], "ir_units": [1, 1, 1],
        "ir_stem_width": 8, "ir_input_size": None, "spade_hidden": 8, "encoder_widths": [8, 8, 16],
        "drop_path_rate": 0.1}


def make_project(root: Path) -> Path:
    """A tiny ferpipe project: git + DVC, tiny priors shards (dvc add) and the real train stage."""
    from ferpipe.train.fixtures import write_random_priors

    root.mkdir(parents=True)
    # params.yaml as a person writes it: comments, nulls (the preset's value), a flow-style list
    (root / "params.yaml").write_text(
        "download:\n  dataset: mini   # the dataset name\n\n"
        "train:\n  preset: orsanet-cpu\n  epochs: 2\n  lr: null        # the preset's\n  batch_size: null\n"
        "  max_steps_per_epoch: 2\n  num_workers: 0\n  threads: 1\n  shuffle_buffer: 64\n"
        f"  model_kwargs: {json.dumps(TINY)}\n")
    write_random_priors(root / "data" / "priors" / "mini", "features", counts=(48, 14, 14), size=112,
                        samples_per_shard=24)
    (root / "dvc.yaml").write_text(yaml.safe_dump({
        "stages": {"train": {
            "cmd": "ferpipe train", "deps": ["data/priors/${download.dataset}"],
            "params": ["train", "download.dataset"],
            "outs": [{"models/train/${download.dataset}": {"persist": True}},
                     {"reports/train/params.yaml": {"cache": False}}],
            "metrics": [{"reports/train/metrics.json": {"cache": False}}]}},
        "params": ["reports/train/params.yaml"]}, sort_keys=False))
    _git(root, "init", "-q", "-b", "main")
    _git(root, "config", "user.email", "test@ferpipe")
    _git(root, "config", "user.name", "ferpipe test")
    env = base_env(root / ".home")
    subprocess.run([str(BIN / "dvc"), "init", "-q"], cwd=root, check=True, env=env)
    subprocess.run([str(BIN / "dvc"), "config", "core.analytics", "false"], cwd=root, check=True)
    subprocess.run([str(BIN / "dvc"), "add", "-q", "data/priors/mini"], cwd=root, check=True, env=env)
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", "tiny project")
    return root


def _digests(root: Path) -> dict[str, str]:
    import hashlib

    files = ["params.yaml", "dvc.lock", "models/train/mini/best.pt", "models/train/mini/last.pt",
             *sorted(str(p.relative_to(root)) for p in (root / "reports").rglob("*") if p.is_file())]
    return {f: hashlib.sha256((root / f).read_bytes()).hexdigest() for f in files}


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


def _flow_runs(**filters):
    from prefect.client.orchestration import get_client

    async def read():
        async with get_client() as client:
            return await client.read_flow_runs(**filters)

    return asyncio.run(read())


@pytest.mark.slow
def test_serve_train_orsanet_runs_serialised_dvc_experiments(tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
    from prefect.deployments import run_deployment

    project = make_project(tmp_path / "project")
    home, logs = tmp_path / "prefect-home", tmp_path / "logs"
    serve_log = logs / "ferpipe-serve.log"
    # a run waiting for the deployment's slot is retried after 2 s (default 30), the runner polls every 2 s
    with prefect_server(home, logs, PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS="2") as api_url, \
            api_url_set(api_url, home):
        env = base_env(home, api_url)
        # the workspace's own run: dvc repro (its train stage reports to the server too)
        repro = subprocess.run([str(BIN / "dvc"), "repro"], cwd=project, env=env, capture_output=True, text=True,
                               timeout=300)
        assert repro.returncode == 0, repro.stdout[-4000:] + repro.stderr[-4000:]
        _git(project, "add", "-A")
        _git(project, "commit", "-q", "-m", "trained")
        workspace = _digests(project)

        serve = start([str(BIN / "ferpipe"), "serve", "--root", str(project)],
                      {**env, "PREFECT_RUNNER_POLL_FREQUENCY": "2"}, serve_log, cwd=project)
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
                                  "--param", "lr=0.0005", "--param", "epochs=1", "--param", "experiment_name=exp-0"],
                                 env=env, capture_output=True, text=True, timeout=120)
            assert cli.returncode == 0, cli.stdout + cli.stderr
            first_id = re.search(r"UUID:\s*([0-9a-f-]{36})", cli.stdout).group(1)
            second = run_deployment("train/train-orsanet", timeout=0, parameters={
                "lr": 0.001, "experiment_name": "exp-1"})

            async def read(ids):
                async with get_client() as client:
                    return [await client.read_flow_run(i) for i in ids]

            deadline = time.monotonic() + 400
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

            # the workspace is exactly as it was: params.yaml, dvc.lock, the model, every report
            assert _digests(project) == workspace

            # each run is a DVC experiment with its -S values and its resolved hyperparameters
            shown = subprocess.run([str(BIN / "dvc"), "exp", "show", "--json"], cwd=project, env=env,
                                   capture_output=True, text=True, check=True)
            table = json.loads(shown.stdout)
            for name, lr, epochs in (("exp-0", 0.0005, 1), ("exp-1", 0.001, 2)):
                exp = _find_exp(table, name)
                assert exp is not None, shown.stdout[:3000]
                params = exp["data"]["params"]
                train = params["params.yaml"]["data"]["train"]
                assert train["lr"] == lr and train["batch_size"] is None
                resolved = params["reports/train/params.yaml"]["data"]
                assert resolved["lr"] == lr and resolved["epochs"] == epochs and resolved["batch_size"] == 32
                assert resolved["optimizer"] == "adamw" and resolved["preset"] == "orsanet-cpu"
                assert exp["data"]["metrics"]["reports/train/metrics.json"]["data"]["epochs"] == epochs

            # the deployment runs show what they trained: parameters filled in, tags, a name
            runs = {r.parameters["experiment_name"]: r for r in asyncio.run(read([first_id, second.id]))}
            r0 = runs["exp-0"]
            assert r0.name == "train-orsanet · mini · exp exp-0"
            assert r0.parameters["epochs"] == 1 and r0.parameters["batch_size"] == 32
            assert r0.parameters["preset"] == "orsanet-cpu" and r0.parameters["optimizer"] == "adamw"
            assert {"exp:exp-0", "epochs:1", "batch_size:32", "lr:0.0005", "preset:orsanet-cpu"} <= set(r0.tags)
            assert runs["exp-1"].parameters["epochs"] == 2

            # the train stage runs reported to this server, named by stage, dataset and experiment,
            # tagged with the deployment run that launched them
            stage_runs = _flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=["stage:train"])))
            by_name = {r.name: r for r in stage_runs}
            assert {"train · mini · dvc repro", "train · mini · exp exp-0", "train · mini · exp exp-1"} <= set(by_name)
            s0 = by_name["train · mini · exp exp-0"]
            assert s0.state.is_completed() and f"launched-by-id:{first_id}" in s0.tags
            assert {"exp:exp-0", "dataset:mini", "epochs:1"} <= set(s0.tags)
            assert r0.start_time <= s0.start_time <= r0.end_time

            # pipeline/repro: `dvc repro` in the same workspace: up to date, nothing changes
            repro = run_deployment("pipeline/repro", timeout=180)
            assert repro.state.is_completed(), (repro.state, tail(serve_log, 8000))
            assert "dvc repro" in serve_log.read_text()
            assert _digests(project) == workspace
        finally:
            kill_group(serve)
    if os.environ.get("FERPIPE_KEEP_LOGS"):
        sys.stderr.write(tail(serve_log, 20000))
