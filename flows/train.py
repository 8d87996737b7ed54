"""Prefect flow for the train stage: runs the library stage, publishes progress and results.

Artifacts: ``train-<dataset>-progress`` (a progress artifact updated within every epoch, every
few seconds, and after it, through the callbacks the library accepts), ``train-<dataset>-history``
(table: one row per epoch), ``train-<dataset>-metrics`` (table: final val / test metrics) and
``train-<dataset>-hyperparameters`` (table: the run's config after the preset is resolved, also
its tags).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from prefect import flow, get_run_logger
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact

from ferpipe.layout import Layout
from ferpipe.train import TrainParams, TrainReport, train_stage
from ferpipe.train.presets import resolve
from ferpipe.train.progress import describe
from ferpipe.train.stage import epoch_line, train_params_for
from flows._common import annotate_current_run, artifact_key, hyperparameter_tags, params_for, stage_run_name
from flows._stage import publish


class ProgressArtifact:
    """Epoch and step callbacks sharing one progress artifact: created at the first report,
    updated after (within an epoch every ``RunOptions.step_callback_every_s``)."""

    def __init__(self, dataset: str, log: Callable[[str], None]):
        self.dataset, self.log, self.id = dataset, log, None

    def _publish(self, pct: float, desc: str) -> None:
        if self.id is None:
            self.id = create_progress_artifact(progress=pct, key=artifact_key("train", self.dataset, "progress"),
                                               description=desc)
        else:
            update_progress_artifact(artifact_id=self.id, progress=pct, description=desc)
        self.log(desc)

    def on_step(self, info: dict[str, Any]) -> None:
        self._publish(100.0 * info["progress"], f"{self.dataset}: {describe(info)}")

    def on_epoch(self, info: dict[str, Any]) -> None:
        self._publish(100.0 * info["epoch"] / info["epochs"], f"{self.dataset}: {epoch_line(info)}")


def progress_callback(dataset: str, log: Callable[[str], None]) -> Callable[[dict[str, Any]], None]:
    """Epoch callback: creates the progress artifact on the first epoch, updates it after."""
    return ProgressArtifact(dataset, log).on_epoch


def publish_hyperparameters(train: TrainParams) -> dict[str, Any]:
    """The resolved config as a table artifact and as tags of this run; returns it."""
    config = json.loads(json.dumps({"dataset": train.dataset, **resolve(train).to_dict()}))
    create_table_artifact(key=artifact_key("train", train.dataset, "hyperparameters"),
                          table=[{"key": k, "value": json.dumps(v) if isinstance(v, (dict, list)) else v}
                                 for k, v in config.items()],
                          description=f"{train.dataset}: the hyperparameters trained with (preset resolved)")
    annotate_current_run(hyperparameter_tags(config))
    return config


def run_train_params(train: TrainParams, root: str | Path = ".", declared: TrainParams | None = None,
                     overwrite: bool = False, upstream: Any = None) -> TrainReport:
    logger = get_run_logger()
    progress = ProgressArtifact(train.dataset, logger.info)
    publish_hyperparameters(train)
    report = train_stage(train, Layout(Path(root)), callbacks=[progress.on_epoch], step_callbacks=[progress.on_step],
                         declared=declared, overwrite=overwrite, upstream=upstream)
    return publish(report)  # the history and final metrics tables (TrainReport.artifacts)


@flow(name="train", flow_run_name=stage_run_name("train"), log_prints=True)
def train_flow(params_path: str = "params.yaml", overrides: list[str] | None = None,
               root: str = ".", overwrite: bool = False) -> TrainReport:
    """``overwrite``: replace the workspace's model and reports even when ``overrides`` change the
    run (by default such a run is refused: see ferpipe.train.stage.check_replacement)."""
    params = params_for(params_path, overrides)
    declared = train_params_for(params_for(params_path, None)) if overrides else None
    return run_train_params(train_params_for(params), root, declared=declared, overwrite=overwrite,
                            upstream=params)
