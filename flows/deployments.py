"""Deployments served by ``ferpipe serve``: runs you start from the Prefect UI or CLI, recorded by DVC.

- ``train/train-orsanet``: the ORSANet training recipe. Its parameters (lr, epochs, batch_size,
  preset, ...) become ``dvc exp run --temp -S train.<key>=<value>`` in the project root: the run is
  a DVC experiment (``dvc exp show`` lists it, with the hyperparameters after the preset is
  resolved from reports/train/params.yaml) made in a temporary copy of the project, so
  params.yaml, dvc.lock and the workspace's models and reports stay exactly as they were
  (``dvc exp apply <name>`` brings a run into the workspace). The stages it reruns
  (``ferpipe <stage>`` in dvc.yaml) report to the same Prefect server as their own flow runs,
  named ``<stage> · <dataset> · exp <name>`` and tagged ``launched-by:<this run>``. This run is
  renamed ``train-orsanet · <dataset> · exp <name>``; its parameters and tags are filled with the
  resolved hyperparameters.
- ``pipeline/repro``: ``dvc repro`` of the whole pipeline (or of ``targets``).

Runs are serialised: every deployment has a concurrency limit of 1 and ``ferpipe serve`` runs one
flow run at a time, because two ``dvc exp run`` / ``dvc repro`` in one workspace conflict on DVC's
lock. A run started while another is active waits (AwaitingConcurrencySlot / Scheduled).

Prefect names a deployment ``<flow name>/<deployment name>``: the flows are named ``train`` and
``pipeline`` so that ``prefect deployment run 'train/train-orsanet' --param lr=0.0005`` works. The
stage flows that ``dvc exp run`` triggers appear beside it as separate flow runs (``download``,
``train``, ``evaluate``, ...), started by their own processes.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Literal, Sequence

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from ferpipe.experiments import (  # noqa: F401  (exp_run_command, format_value: re-exported)
    dvc_executable, exp_run_command, format_value, run_streaming, show_experiments)
from flows._common import (LAUNCHED_BY_ENV, LAUNCHED_BY_ID_ENV, annotate_current_run, hyperparameter_tags,
                           markdown_table)

TRAIN_DEPLOYMENT = "train-orsanet"
PIPELINE_DEPLOYMENT = "repro"
SERIAL_NOTE = ("runs are serialised (deployment concurrency limit 1, one run at a time in this process): "
               "two `dvc exp run` / `dvc repro` in one workspace would conflict on DVC's lock")


def train_overrides(**train: Any) -> list[str]:
    """``train.<key>=<value>`` for every key given a value; None keeps params.yaml's."""
    return [f"train.{k}={format_value(v)}" for k, v in train.items() if v is not None]


def _bin_dir() -> Path:
    return Path(sys.executable).parent


_dvc = dvc_executable


def child_env() -> dict[str, str]:
    """The environment of ``dvc``: the venv first on PATH (dvc runs ``ferpipe <stage>`` in a shell),
    PREFECT_API_URL kept so the stage flows report to this server, Prefect's per-run variables
    (``PREFECT__FLOW_RUN_ID`` ...) dropped so the stages start flow runs of their own."""
    from prefect.settings import get_current_settings

    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT__")}
    env["PATH"] = os.pathsep.join([str(_bin_dir()), env.get("PATH", "")])
    api_url = get_current_settings().api.url
    if api_url:
        env["PREFECT_API_URL"] = str(api_url)
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    env.setdefault("DO_NOT_TRACK", "1")
    env.setdefault("DVC_NO_ANALYTICS", "1")
    from prefect.runtime import flow_run

    if flow_run.id:  # the stage runs this command starts are tagged with it (see flows._common.run_tags)
        env[LAUNCHED_BY_ENV], env[LAUNCHED_BY_ID_ENV] = str(flow_run.name), str(flow_run.id)
    return env


def run_logged(cmd: Sequence[str], cwd: str | Path, tail_lines: int = 40) -> str:
    """Run ``cmd``, streaming its output into the flow run's log; raise with the tail on failure."""
    logger = get_run_logger()
    logger.info("$ %s  (in %s)", " ".join(cmd), cwd)
    return run_streaming(cmd, cwd, env=child_env(), on_line=logger.info, tail_lines=tail_lines)


def _project(project_dir: str) -> Path:
    root = Path(project_dir).resolve()
    if not (root / "dvc.yaml").exists():
        raise ValueError(f"{root}: no dvc.yaml (project_dir must be the ferpipe project root)")
    return root


def _experiment_markdown(root: Path, name: str) -> str:
    """The experiment's metrics as ``dvc exp show`` lists them (the workspace's are not the run's)."""
    try:
        exp = show_experiments(root, env=child_env()).get(name)
    except Exception as exc:  # noqa: BLE001 - the run is done; a listing failure only thins the artifact
        return f"\n\n(`dvc exp show` failed: {exc})"
    if exp is None:
        return ""
    lines = []
    for rel, data in exp["metrics"].items():
        flat = {k: v for k, v in (data or {}).items() if isinstance(v, (int, float, str))}
        if flat:
            lines += ["", f"`{rel}`", "", markdown_table([{"metric": k, "value": v} for k, v in flat.items()],
                                                          ["metric", "value"])]
    return "\n".join(lines)


def resolved_hyperparameters(root: Path, overrides: Sequence[str]) -> dict[str, Any]:
    """The train config the experiment will run, presets resolved (what reports/train/params.yaml records)."""
    import json

    from ferpipe.config import load_params
    from ferpipe.train.presets import resolve
    from ferpipe.train.stage import train_params_for

    train = train_params_for(load_params(root / "params.yaml", list(overrides)))  # a wrong value fails here
    return json.loads(json.dumps({"dataset": train.dataset, **resolve(train).to_dict()}))


@flow(name="train", log_prints=True)
def train_orsanet(
    lr: float | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    preset: Literal["orsanet-cpu", "orsanet-large"] | None = None,
    optimizer: Literal["sam-adam", "adam", "adamw", "sgd"] | None = None,
    weight_decay: float | None = None,
    scheduler: Literal["exponential", "cosine", "none"] | None = None,
    loss: Literal["orsanet", "ce"] | None = None,
    seed: int | None = None,
    device: Literal["auto", "cpu", "cuda"] | None = None,
    max_steps_per_epoch: int | None = None,
    set_params: list[str] | None = None,
    experiment_name: str | None = None,
    project_dir: str = ".",
) -> dict[str, Any]:
    """Train ORSANet as a DVC experiment: ``dvc exp run -S train.lr=... -S ...`` in ``project_dir``.

    A parameter left empty keeps params.yaml's value; ``set_params`` adds any other ``-S``
    override (``download.synthetic.n_per_class=50``). The experiment is named ``experiment_name``,
    or after this flow run. Runs are serialised (deployment concurrency limit 1): two
    ``dvc exp run`` in one workspace would conflict on DVC's lock.
    """
    from prefect.runtime import flow_run

    root = _project(project_dir)
    overrides = train_overrides(lr=lr, epochs=epochs, batch_size=batch_size, preset=preset, optimizer=optimizer,
                                weight_decay=weight_decay, scheduler=scheduler, loss=loss, seed=seed,
                                device=device, max_steps_per_epoch=max_steps_per_epoch) + list(set_params or [])
    resolved = resolved_hyperparameters(root, overrides)  # a wrong value fails here, before any stage runs
    name = experiment_name or (f"pf-{flow_run.name}" if flow_run.name else None)
    # The run shows what it trains: its parameters filled with the resolved values, tags to search by.
    given = {"lr": lr, "epochs": epochs, "batch_size": batch_size, "preset": preset, "optimizer": optimizer,
             "weight_decay": weight_decay, "scheduler": scheduler, "loss": loss, "seed": seed,
             "max_steps_per_epoch": max_steps_per_epoch}
    annotate_current_run(
        tags=["ferpipe", f"exp:{name}", f"dataset:{resolved['dataset']}", *hyperparameter_tags(resolved)],
        parameters={**{k: resolved.get(k) if v is None else v for k, v in given.items()}, "experiment_name": name},
        name=f"{TRAIN_DEPLOYMENT} · {resolved['dataset']} · exp {name}")
    cmd = exp_run_command(overrides, name=name, dvc=_dvc(), temp=True)
    run_logged(cmd, root)
    create_markdown_artifact(
        key="train-orsanet-experiment",
        markdown="\n".join([f"# DVC experiment `{name}`", "", "```", " ".join(["dvc", *cmd[1:]]), "```", "",
                            "`dvc exp show` lists it; `dvc exp apply " + str(name) + "` brings it into the workspace.",
                            "", "Hyperparameters (preset resolved):", "",
                            markdown_table([{"key": k, "value": v} for k, v in resolved.items()], ["key", "value"])]
                           ) + _experiment_markdown(root, name),
        description=f"dvc exp run --temp {name}")
    return {"experiment": name, "command": cmd, "project_dir": str(root), "hyperparameters": resolved}


@flow(name="pipeline", log_prints=True)
def pipeline_repro(force: bool = False, targets: list[str] | None = None, project_dir: str = ".") -> dict[str, Any]:
    """``dvc repro`` of the pipeline (or ``targets``) in ``project_dir``; dvc.lock records the result.

    Runs are serialised (deployment concurrency limit 1): two ``dvc repro`` in one workspace would
    conflict on DVC's lock.
    """
    root = _project(project_dir)
    annotate_current_run(tags=["ferpipe", "dvc-repro"],
                         name=f"{PIPELINE_DEPLOYMENT} · dvc repro" + (f" {' '.join(targets)}" if targets else ""))
    cmd = [_dvc(), "repro", *(["--force"] if force else []), *(targets or [])]
    run_logged(cmd, root)
    return {"command": cmd, "project_dir": str(root)}


def deployments(project_dir: str | Path = ".") -> list:
    from prefect.types.entrypoint import EntrypointType

    root = str(Path(project_dir).resolve())
    common = dict(concurrency_limit=1, entrypoint_type=EntrypointType.MODULE_PATH)
    return [
        train_orsanet.to_deployment(
            name=TRAIN_DEPLOYMENT, parameters={"project_dir": root}, tags=["ferpipe", "dvc-exp"], **common),
        pipeline_repro.to_deployment(
            name=PIPELINE_DEPLOYMENT, parameters={"project_dir": root}, tags=["ferpipe", "dvc-repro"], **common),
    ]


def serve_command(project_dir: str | Path = ".") -> int:
    """``ferpipe serve``: serve the deployments until interrupted (needs PREFECT_API_URL)."""
    from prefect import serve
    from prefect.settings import get_current_settings

    root = Path(project_dir).resolve()
    if not get_current_settings().api.url:
        print("ferpipe serve: error: PREFECT_API_URL is not set. Deployments need a running server:\n"
              "  prefect server start --host 127.0.0.1 --port 4200\n"
              "  export PREFECT_API_URL=http://127.0.0.1:4200/api", file=sys.stderr)
        return 2
    _project(str(root))
    deps = deployments(root)
    print(f"ferpipe serve: project {root}\n"
          f"ferpipe serve: {', '.join(f'{d.flow_name}/{d.name}' for d in deps)}; {SERIAL_NOTE}.\n"
          f"ferpipe serve: e.g. prefect deployment run 'train/{TRAIN_DEPLOYMENT}' --param lr=0.0005", flush=True)
    serve(*deps, limit=1)
    return 0
