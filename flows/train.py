"""Prefect flow for the train stage: runs the library stage, publishes progress and results.

Artifacts: ``train-<dataset>-progress`` (a progress artifact updated after every epoch through
the callback the library accepts), ``train-<dataset>-history`` (table: one row per epoch) and
``train-<dataset>-metrics`` (table: final val / test metrics).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from prefect import flow, get_run_logger
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact

from ferpipe.layout import Layout
from ferpipe.train import TrainParams, TrainReport, train_stage
from ferpipe.train.stage import train_params_for
from flows._common import artifact_key, params_for

_HISTORY_COLUMNS = ("epoch", "train_loss", "val_acc", "val_macro_f1", "val_loss", "lr", "seconds")


def progress_callback(dataset: str, log: Callable[[str], None]) -> Callable[[dict[str, Any]], None]:
    """Epoch callback: creates the progress artifact on the first epoch, updates it after."""
    state: dict[str, Any] = {}

    def on_epoch(info: dict[str, Any]) -> None:
        pct = 100.0 * info["epoch"] / info["epochs"]
        desc = (f"{dataset}: epoch {info['epoch']}/{info['epochs']}, train loss {info['train_loss']:.4f}, "
                f"val acc {info['val_acc']:.4f} (best {info['best_val_acc']:.4f} @ {info['best_epoch']})")
        if "id" not in state:
            state["id"] = create_progress_artifact(progress=pct, key=artifact_key("train", dataset, "progress"),
                                                   description=desc)
        else:
            update_progress_artifact(artifact_id=state["id"], progress=pct, description=desc)
        log(desc)

    return on_epoch


def run_train_params(train: TrainParams, root: str | Path = ".", upstream: Any = None) -> TrainReport:
    logger = get_run_logger()
    report = train_stage(train, Layout(Path(root)), callbacks=[progress_callback(train.dataset, logger.info)],
                         upstream=upstream)
    rows = [{c: (round(h[c], 6) if isinstance(h[c], float) else h[c]) for c in _HISTORY_COLUMNS}
            for h in report.history]
    create_table_artifact(key=artifact_key("train", train.dataset, "history"), table=rows,
                          description=f"{train.dataset} ({report.preset}): metrics per epoch")
    create_table_artifact(key=artifact_key("train", train.dataset, "metrics"),
                          table=[{"metric": k, "value": v} for k, v in report.metrics.items()],
                          description=f"{train.dataset} ({report.preset}): final metrics (test read once, "
                                      f"best-val checkpoint)")
    logger.info(report.summary())
    return report


@flow(name="train", log_prints=True)
def train_flow(params_path: str = "params.yaml", overrides: list[str] | None = None,
               root: str = ".") -> TrainReport:
    params = params_for(params_path, overrides)
    return run_train_params(train_params_for(params), root, upstream=params)
