"""The train stage: priors shards -> trained model dir + reports (what ``ferpipe train`` runs).

Reads ``data/priors/<dataset>`` (or ``train.shards_dir``), writes

- ``models/train/<dataset>/{last,best}.pt``           (or ``train.model_dir``)
- ``reports/train/metrics.json``                      final val (at the best epoch) / test metrics
- ``reports/train/live/``                              DVCLive: metrics.json, plots/metrics/*.tsv
- ``reports/train/curves.png``                         loss / accuracy / lr per epoch (DVC's HTML
                                                      plots need a CDN, so a PNG too)
- ``reports/train/history.json``                       per-epoch metrics
- ``reports/train/params.yaml``                        the run's hyperparameters after the preset is
                                                      resolved (dvc.yaml lists it as a params file,
                                                      so ``dvc exp show`` shows the values trained with)

A run whose params differ from params.yaml's (``ferpipe train -S train.epochs=1``) does not
replace the workspace's model and reports: it is refused (see :func:`check_replacement`) unless
``overwrite`` is given. ``dvc repro`` and ``dvc exp run`` run the stage with params.yaml as it
stands, so they always may.

Under ``torchrun`` (WORLD_SIZE > 1) the process group is initialised here (nccl on CUDA, gloo
otherwise); rank 0 alone writes checkpoints and reports.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist

from ferpipe.errors import ConfigError, FerpipeError
from ferpipe.layout import Layout
from ferpipe.progress import Progress, as_progress
from ferpipe.report import Artifact, table
from ferpipe.shards import write_json_atomic
from ferpipe.timings import split_run_facts, write_report

from . import checkpoint as ckpt_io
from . import data as D
from .loop import RunOptions, TrainResult, fit
from .params import TrainParams
from .model_card import write_model_card
from .presets import TrainConfig, resolve
from .progress import StepCallback

log = logging.getLogger(__name__)
EpochCallback = Callable[[dict[str, Any]], None]
_HISTORY_COLUMNS = ("epoch", "train_loss", "val_acc", "val_macro_f1", "val_loss", "lr", "seconds")


@dataclass
class TrainReport:
    dataset: str
    preset: str
    model_dir: str
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    config: dict[str, Any]
    reports: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        m = self.metrics
        return (f"train {self.dataset} ({self.preset}): best val acc {m['val_acc']:.4f} at epoch "
                f"{m['best_epoch']}/{m['epochs']}; test acc {m['test_acc']:.4f} (macro-F1 "
                f"{m['test_macro_f1']:.4f}, n={m['test_n']}); {m['train_images_per_s']:.1f} img/s, "
                f"{m['seconds']:.0f}s; model {self.model_dir}")

    def to_dict(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "preset": self.preset, "model_dir": self.model_dir,
                "metrics": self.metrics, "config": self.config, "reports": self.reports}

    def artifacts(self) -> list[Artifact]:
        """Metrics per epoch and the final ones (the progress and hyperparameters are the flow's)."""
        rows = [{c: (round(h[c], 6) if isinstance(h[c], float) else h[c]) for c in _HISTORY_COLUMNS}
                for h in self.history]
        return [table(("train", self.dataset, "history"), rows, f"{self.dataset} ({self.preset}): metrics per epoch"),
                table(("train", self.dataset, "metrics"), [{"metric": k, "value": v} for k, v in self.metrics.items()],
                      f"{self.dataset} ({self.preset}): final metrics (test read once, best-val checkpoint)")]


class _LiveLogger:
    """Per-epoch DVCLive metrics (train loss, val acc/F1/loss, lr) and step."""

    def __init__(self, live_dir: Path, resume: bool):
        self._dir, self._resume, self._live = live_dir, resume, None

    @property
    def live(self):
        # Opened at the first epoch's end, not before: DVCLive clears its directory when it
        # starts fresh, and a run that fails early (missing checkpoint, bad shards) must not
        # wipe the previous run's logs.
        if self._live is None:
            from dvclive import Live

            # dvcyaml=None: the stage's plots are declared in dvc.yaml by hand (a shared file).
            self._live = Live(dir=str(self._dir), resume=self._resume, report=None, save_dvc_exp=False,
                              dvcyaml=None)
        return self._live

    def __call__(self, info: dict[str, Any]) -> None:
        live = self.live
        live.step = info["epoch"]
        for k in ("train_loss", "val_acc", "val_macro_f1", "val_loss", "lr"):
            live.log_metric(k.replace("_", "/", 1) if k != "lr" else "lr", info[k])
        live.next_step()

    def finish(self, result: TrainResult, classes: Sequence[str]) -> None:
        self.live.summary.update({"test/acc": result.test["acc"], "test/macro_f1": result.test["macro_f1"],
                                  "best/epoch": result.best["epoch"], "best/val_acc": result.best["value"]})
        self.live.end()


def _curves_png(history: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, ax = plt.subplots(1, 3, figsize=(12, 3.2))
    ax[0].plot(ep, [h["train_loss"] for h in history], label="train")
    ax[0].plot(ep, [h["val_loss"] for h in history], label="val (CE)")
    ax[0].set_title("loss"), ax[0].legend()
    ax[1].plot(ep, [h["val_acc"] for h in history], label="val acc")
    ax[1].plot(ep, [h["val_macro_f1"] for h in history], label="val macro-F1")
    ax[1].set_title("validation"), ax[1].legend()
    ax[2].plot(ep, [h["lr"] for h in history])
    ax[2].set_title("lr")
    for a in ax:
        a.set_xlabel("epoch")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _init_distributed() -> bool:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
        return True
    return False


def _model_dir(params: TrainParams, layout: Layout) -> Path:
    return layout.param_path("train.model_dir", params.model_dir, layout.models / "train" / params.dataset)


def _identity(params: TrainParams, layout: Layout) -> dict[str, Any]:
    """What a run computes and where it writes: the resolved config, the data and the model dir."""
    shards = layout.param_path("train.shards_dir", params.shards_dir, layout.shards("priors", params.dataset))
    return {**resolve(params).to_dict(), "dataset": params.dataset, "shards_dir": str(shards),
            "model_dir": str(_model_dir(params, layout))}


def check_replacement(params: TrainParams, declared: TrainParams, layout: Layout) -> None:
    """Refuse a run that differs from params.yaml's (``declared``) when it would replace the
    workspace's trained model or reports, unless the checkpoint there was trained with exactly
    this run's config (a rerun of the same experiment)."""
    new, old = _identity(params, layout), _identity(declared, layout)
    if new == old:
        return
    model_dir = _model_dir(params, layout)
    at_risk = [p for p in (model_dir / "best.pt", model_dir / "last.pt", layout.reports / "train" / "metrics.json")
               if p.exists()]
    if not at_risk:
        return
    best = model_dir / "best.pt"
    if best.exists():
        try:
            norm = lambda d: json.loads(json.dumps(d))  # noqa: E731  (tuples -> lists)
            same = norm(ckpt_io.load(best).get("config")) == norm(resolve(params).to_dict())
        except Exception:  # noqa: BLE001 - an unreadable checkpoint is not this run's
            same = False
        if same:
            return
    from ferpipe.experiments import format_value

    changed = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(new) | set(old))
               if new.get(k) != old.get(k)]
    sets = " ".join(f"-S train.{k}={format_value(v)}" for k, v in params.model_dump(mode="json").items()
                    if v != declared.model_dump(mode="json").get(k) and k != "dataset")
    rel = ", ".join(os.path.relpath(p, layout.root) for p in at_risk)
    raise FerpipeError(
        f"this run's train config differs from params.yaml's ({'; '.join(changed)}) and would replace "
        f"{rel}, which params.yaml's run produced. Run it as a DVC experiment, which leaves the workspace "
        f"as it is and records the run: `dvc exp run --temp {sets}`; or pass --overwrite to replace them.")


def write_resolved_params(path: Path, cfg: TrainConfig, params: TrainParams) -> Path:
    """The hyperparameters the run trained with, presets resolved (a params file for DVC)."""
    import yaml

    resolved = json.loads(json.dumps({"dataset": params.dataset, **cfg.to_dict()}))  # tuples -> lists
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    tmp.write_text("# written by the train stage: train.* after the preset is resolved (do not edit)\n"
                   + yaml.safe_dump(resolved, sort_keys=True))
    os.replace(tmp, path)
    return path


def train_stage(params: TrainParams, layout: Layout, callbacks: Sequence[EpochCallback] = (),
                step_callbacks: Sequence[StepCallback] = (), *, declared: TrainParams | None = None,
                overwrite: bool = False, upstream: Any = None) -> TrainReport:
    """Train per ``params``; ``callbacks(info)`` run after every epoch on rank 0, ``step_callbacks``
    every few seconds within one (a Prefect flow passes ones that update its progress artifact; the
    library never imports Prefect). ``declared``: params.yaml's train section; a run that differs
    from it is refused when it would replace the workspace's outputs, unless ``overwrite``.
    ``upstream``: the whole :class:`~ferpipe.config.Params`; its ``align`` and ``priors``
    sections are recorded in the checkpoints (``preprocess``) for ``ferpipe predict``."""
    if not params.dataset:
        raise ConfigError("train.dataset is unset: resolve it with train_params_for(params), "
                          "which defaults it to download.dataset")
    root = layout.root
    shards_dir = layout.param_path("train.shards_dir", params.shards_dir, layout.shards("priors", params.dataset))
    model_dir = _model_dir(params, layout)
    report_dir = layout.reports / "train"
    cfg: TrainConfig = resolve(params)
    if declared is not None and not overwrite:
        check_replacement(params, declared, layout)
    shards = D.probe_shards(shards_dir)
    started_dist = _init_distributed()
    rank = dist.get_rank() if dist.is_initialized() else 0
    try:
        resuming = params.resume is not False and (model_dir / "last.pt").exists()
        live = _LiveLogger(report_dir / "live", resume=resuming) if rank == 0 else None
        cbs = ([live] if live else []) + (list(callbacks) if rank == 0 else [])
        opts = RunOptions(device=params.device, num_workers=params.num_workers, resume=params.resume,
                          threads=params.threads, fused_optimizer=params.fused_optimizer,
                          retain_heap=params.retain_heap, callbacks=cbs,
                          step_callbacks=list(step_callbacks) if rank == 0 else [])
        preprocess = (ckpt_io.preprocess_record(upstream.align, upstream.priors, shards)
                      if upstream is not None else None)
        result = fit(cfg, shards, model_dir, opts, params=params.model_dump(mode="json"), preprocess=preprocess)
        report = _report(params, cfg, result, model_dir, report_dir, root)
        if rank == 0:
            if result.resumed_from:
                # A resumed run's DVCLive dir may hold only the epochs since the resume (DVC
                # deletes non-persisted outputs before a stage runs): rewrite it from the full
                # history the checkpoint carried.
                live.live.end()
                shutil.rmtree(report_dir / "live", ignore_errors=True)
                live = _LiveLogger(report_dir / "live", resume=False)
                for h in result.history:
                    live(h)
            live.finish(result, shards.label_space["classes"])
            # Timings and resume facts go to reports/timings/train/ (ferpipe.timings): these files
            # are DVC outs, byte-identical when a finished stage reruns.
            write_report(report_dir / "metrics.json", report.metrics)
            write_resolved_params(report_dir / "params.yaml", cfg, params)
            write_report(report_dir / "history.json", result.history)
            write_json_atomic(report_dir / "test_confusion.json",
                              {"classes": shards.label_space["classes"], "matrix": result.test["confusion"]})
            _curves_png(result.history, report_dir / "curves.png")
            write_model_card(model_dir / "MODEL_CARD.md", model_name=cfg.model, preset=cfg.preset,
                             config=cfg.to_dict(), model_kwargs=result.model_kwargs, num_params=result.num_params,
                             dataset=params.dataset, label_space=shards.label_space,
                             index_sha256=shards.index_sha256, counts=shards.counts,
                             metrics=split_run_facts(report.metrics)[0], prior=shards.prior_meta)
        return report
    finally:
        if started_dist:
            dist.destroy_process_group()


def _report(params: TrainParams, cfg: TrainConfig, result: TrainResult, model_dir: Path, report_dir: Path,
            root: Path) -> TrainReport:
    val = result.val_at_best or {}
    metrics = {
        "epochs": result.epochs, "best_epoch": result.best["epoch"],
        "val_acc": result.best["value"], "val_macro_f1": val.get("macro_f1"),
        "test_acc": result.test["acc"], "test_macro_f1": result.test["macro_f1"], "test_n": result.test["n"],
        "test_loss": result.test["loss"],
        "final_train_loss": result.history[-1]["train_loss"] if result.history else None,
        "train_images_per_s": result.images_per_s, "seconds": result.seconds,
        "resumed_from_epoch": result.resumed_from, "world_size": result.world,
    }
    # Wilson intervals, as evaluate's (ferpipe.evaluate.metrics): k is recovered from acc * n.
    from ferpipe.evaluate.metrics import wilson_interval  # noqa: PLC0415

    for key, n in (("test_acc", result.test.get("n")), ("val_acc", val.get("n"))):
        if n and metrics.get(key) is not None:
            metrics[f"{key}_ci95"] = wilson_interval(round(metrics[key] * n), n)
    if result.world > 1:
        metrics["ranks_identical"] = True  # fit() raises when the ranks' final weights differ
    rel = lambda p: os.path.relpath(p, root)  # noqa: E731
    return TrainReport(dataset=params.dataset, preset=cfg.preset, model_dir=rel(model_dir), metrics=metrics,
                       history=result.history, config=cfg.to_dict(),
                       reports={"metrics": rel(report_dir / "metrics.json"), "live": rel(report_dir / "live"),
                                "curves": rel(report_dir / "curves.png")})


def train_params_for(params) -> TrainParams:
    """``train.*`` with ``dataset`` defaulting to ``download.dataset``, the name every stage uses."""
    train = params.train
    return train if train.dataset else train.model_copy(update={"dataset": params.download.dataset})


def check_pipeline_replacement(params, declared, root: str | Path = ".") -> None:
    """:func:`check_replacement` on whole :class:`Params`: a pipeline run checks before its first
    stage, not after the stages before train have run."""
    check_replacement(train_params_for(params), train_params_for(declared), Layout(Path(root)))


def epoch_line(info: dict[str, Any]) -> str:
    """One line per finished epoch (the flow's progress artifact)."""
    return (f"epoch {info['epoch']}/{info['epochs']}, train loss {info['train_loss']:.4f}, val acc "
            f"{info['val_acc']:.4f} (best {info['best_val_acc']:.4f} @ {info['best_epoch']})")


class TrainStage:
    """``ferpipe train``: priors shards -> a trained model and its reports (see the module doc)."""

    name = "train"

    def run(self, params, layout: Layout, progress: Progress | None = None, declared=None, overwrite: bool = False,
            step_callbacks: Sequence[StepCallback] = ()) -> TrainReport:
        """``declared``: params.yaml's whole :class:`Params`, without the run's overrides (see
        :func:`check_replacement`); ``progress`` advances by epoch (``step_callbacks``: within one)."""
        progress = as_progress(progress)
        train = train_params_for(params)
        progress.start(resolve(train).epochs, f"train {train.dataset}")

        def on_epoch(info: dict[str, Any]) -> None:  # (fit logs the epoch's line itself)
            progress.advance(1, val_acc=round(info["val_acc"], 4), best=round(info["best_val_acc"], 4))

        try:
            return train_stage(train, layout, callbacks=[on_epoch], step_callbacks=step_callbacks,
                               declared=train_params_for(declared) if declared is not None else None,
                               overwrite=overwrite, upstream=params)
        finally:
            progress.close()


TRAIN = TrainStage()
