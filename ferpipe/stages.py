"""The stages of the pipeline, declared once, in dvc.yaml's order.

Each :class:`Stage` names its params sections, the code and data it reads, what it writes, its
library entry (``ferpipe <stage> --no-flow``) and its Prefect flow (``ferpipe <stage>``). The
CLI's subcommands, :mod:`ferpipe.pipeline`, ``flows/pipeline.py`` and the sharded-flow task
runner are derived from :data:`STAGES`; ``tests/test_stages.py`` fails when dvc.yaml's stages,
cmds, params, deps or outs disagree with it.

The entry is one object of the :class:`StageEntry` shape: ``run(params, layout, progress) ->
report``, the report having ``summary()``, ``to_dict()`` and ``artifacts()``
(:mod:`ferpipe.report`). Sharded stages are :class:`ferpipe.sharded.ShardedStage`: ``plan``,
``run_shard`` and ``finish`` besides ``run``. ``flows/_stage.py`` builds every stage's flow from
its entry.

Paths are relative to the project root; ``{dataset}`` stands for ``download.dataset`` (dvc.yaml
writes it ``${download.dataset}``). Entries and flows are ``"module:NAME"`` strings imported
only when asked for: this module imports nothing heavy, so ``ferpipe params`` stays fast.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Protocol

from ferpipe.errors import ConfigError


class StageEntry(Protocol):
    """What a stage's entry object is: a name and ``run``; the report it returns has ``summary()``,
    ``to_dict()`` and ``artifacts()``. Some take options (train: ``declared``, ``overwrite``)."""

    name: str

    def run(self, params: Any, layout: Any, progress: Any = None, **options: Any) -> Any: ...


@dataclass(frozen=True)
class Stage:
    name: str
    entry: str                # "module:OBJECT": a StageEntry
    params: tuple[str, ...]   # params.yaml sections / dotted keys it reads (dvc.yaml `params`)
    code: tuple[str, ...]     # source it depends on (dvc.yaml `deps` that are code)
    inputs: tuple[str, ...] = ()   # data and models it reads (the other `deps`)
    outputs: tuple[str, ...] = ()  # what it writes (`outs`)
    metrics: tuple[str, ...] = ()
    plots: tuple[str, ...] = ()
    sharded: bool = False     # one task per shard: the flow runs on the task runner `flows.*` asks for

    @property
    def command(self) -> str:
        return f"ferpipe {self.name}"

    @property
    def flow(self) -> str:
        """``"module:function"`` of the Prefect flow: ``flows/<name>.py``'s ``<name>_flow``."""
        module = self.name.replace("-", "_")
        return f"flows.{module}:{module}_flow"

    def paths(self, kind: str, dataset: str) -> list[str]:
        """``inputs``, ``outputs``, ``metrics`` or ``plots`` with the dataset name filled in."""
        return [p.format(dataset=dataset) for p in getattr(self, kind)]

    def load(self) -> StageEntry:
        return _resolve(self.entry)

    def load_flow(self) -> Any:
        return _resolve(self.flow)


def _resolve(spec: str) -> Any:
    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)


_DATA = "download.dataset"
_PRIOR_NETS = ("models/prior_nets/parser.pt", "models/prior_nets/landmarks.pt")

STAGES: tuple[Stage, ...] = (
    Stage("download", "ferpipe.sources.download:DOWNLOAD", ("download",),
          code=("ferpipe/sources", "ferpipe/manifest.py", "ferpipe/labels.py"),
          outputs=("data/raw/{dataset}", "data/manifests/{dataset}.parquet", "reports/download/{dataset}.json")),
    Stage("align", "ferpipe.align.stage:ALIGN", ("align", _DATA),
          ("ferpipe/align", "ferpipe/shards.py", "ferpipe/sharded.py"),
          inputs=("data/manifests/{dataset}.parquet", "data/raw/{dataset}"),
          outputs=("data/aligned/{dataset}", "reports/align/{dataset}.json"), sharded=True),
    Stage("prior-nets", "ferpipe.priors.training:PRIOR_NETS", ("prior_nets",),
          code=("ferpipe/priors/nets.py", "ferpipe/priors/data.py", "ferpipe/priors/training.py",
                "ferpipe/priors/conventions.py", "ferpipe/sources/synthetic", "ferpipe/align/warp.py"),
          outputs=_PRIOR_NETS, metrics=("models/prior_nets/metrics.json",)),
    Stage("priors", "ferpipe.priors.stage:PRIORS", ("priors", _DATA, "download.source"),
          ("ferpipe/priors", "ferpipe/shards.py", "ferpipe/sharded.py"),
          inputs=("data/aligned/{dataset}", *_PRIOR_NETS),
          outputs=("data/priors/{dataset}", "reports/priors/{dataset}.json"), sharded=True),
    Stage("occlusion", "ferpipe.occlusion.stage:OCCLUSION", (_DATA, "occlusion", "priors"),
          ("ferpipe/occlusion", "ferpipe/priors", "ferpipe/shards.py", "ferpipe/sharded.py"),
          # data/raw and the manifest: the ground truth and landmarks the occluders are placed on
          inputs=("data/priors/{dataset}", "data/raw/{dataset}", "data/manifests/{dataset}.parquet", *_PRIOR_NETS),
          outputs=("data/occlusion/{dataset}", "reports/occlusion/{dataset}.json"), sharded=True),
    Stage("train", "ferpipe.train.stage:TRAIN", ("train", _DATA),
          ("ferpipe/train", "ferpipe/models", "ferpipe/losses"), inputs=("data/priors/{dataset}",),
          outputs=("models/train/{dataset}", "reports/train/history.json", "reports/train/test_confusion.json",
                   "reports/train/params.yaml"),
          metrics=("reports/train/metrics.json",),
          plots=("reports/train/live/plots/metrics", "reports/train/curves.png")),
    Stage("evaluate", "ferpipe.evaluate.stage:EVALUATE", (_DATA, "evaluate"),
          ("ferpipe/evaluate", "ferpipe/train/data.py"),
          inputs=("data/priors/{dataset}", "data/occlusion/{dataset}", "models/train/{dataset}/best.pt"),
          outputs=("reports/evaluate/{dataset}.json", "reports/report.md"), metrics=("reports/metrics.json",),
          plots=("reports/plots/clean_predictions.csv", "reports/plots/synthetic-occlusion_predictions.csv",
                 "reports/plots/robustness.csv", "reports/plots/by_occluder.csv", "reports/plots/by_region.csv")),
)

# Every stage above, in order, as one command (``ferpipe pipeline``); not a dvc.yaml stage.
PIPELINE_STAGE = Stage("pipeline", "ferpipe.pipeline:PIPELINE", params=(), code=())

NAMES: tuple[str, ...] = tuple(s.name for s in STAGES)
SHARDED: frozenset[str] = frozenset(s.name for s in STAGES if s.sharded)


def get(name: str) -> Stage:
    for stage in (*STAGES, PIPELINE_STAGE):
        if stage.name == name:
            return stage
    raise ConfigError(f"unknown stage {name!r}; the stages are {', '.join(NAMES)}")


def cli_table() -> dict[str, tuple[str, str, str]]:
    """stage name → (flow module, flow function, library entry): what ``ferpipe <stage>`` runs."""
    return {s.name: (*s.flow.split(":"), s.entry) for s in (*STAGES, PIPELINE_STAGE)}

