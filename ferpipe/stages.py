"""The stages of the pipeline, declared once, in dvc.yaml's order.

Each :class:`Stage` names its params sections, the code and data it reads, what it writes, its
library runner (``ferpipe <stage> --no-flow``) and its Prefect flow (``ferpipe <stage>``). The
CLI's subcommands, :mod:`ferpipe.pipeline`, ``flows/pipeline.py`` and the sharded-flow task
runner are derived from :data:`STAGES`; ``tests/test_stages.py`` fails when dvc.yaml's stages,
cmds, params, deps or outs disagree with it.

Paths are relative to the project root; ``{dataset}`` stands for ``download.dataset`` (dvc.yaml
writes it ``${download.dataset}``). Runners and flows are ``"module:function"`` strings imported
only when asked for: this module imports nothing heavy, so ``ferpipe params`` stays fast.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

from ferpipe.errors import ConfigError


@dataclass(frozen=True)
class Stage:
    name: str
    params: tuple[str, ...]   # params.yaml sections / dotted keys it reads (dvc.yaml `params`)
    code: tuple[str, ...]     # source it depends on (dvc.yaml `deps` that are code)
    inputs: tuple[str, ...]   # data and models it reads (the other `deps`)
    outputs: tuple[str, ...]  # what it writes (`outs`)
    runner: str               # "module:function": fn(params, root=Path) -> report
    flow: str                 # "module:function": the Prefect flow
    metrics: tuple[str, ...] = ()
    plots: tuple[str, ...] = ()
    sharded: bool = False     # one task per shard: the flow runs on the task runner `flows.*` asks for

    @property
    def command(self) -> str:
        return f"ferpipe {self.name}"

    def paths(self, kind: str, dataset: str) -> list[str]:
        """``inputs``, ``outputs``, ``metrics`` or ``plots`` with the dataset name filled in."""
        return [p.format(dataset=dataset) for p in getattr(self, kind)]

    def load_runner(self) -> Callable[..., Any]:
        return _resolve(self.runner)

    def load_flow(self) -> Any:
        return _resolve(self.flow)


def _resolve(spec: str) -> Any:
    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)


_PRIOR_NETS = ("models/prior_nets/parser.pt", "models/prior_nets/landmarks.pt")

STAGES: tuple[Stage, ...] = (
    Stage(
        name="download",
        params=("download",),
        code=("ferpipe/sources", "ferpipe/manifest.py", "ferpipe/labels.py"),
        inputs=(),
        outputs=("data/raw/{dataset}", "data/manifests/{dataset}.parquet", "reports/download/{dataset}.json"),
        runner="ferpipe.sources.download:run_download",
        flow="flows.download:download_flow",
    ),
    Stage(
        name="align",
        params=("align", "download.dataset"),
        code=("ferpipe/align", "ferpipe/shards.py"),
        inputs=("data/manifests/{dataset}.parquet", "data/raw/{dataset}"),
        outputs=("data/aligned/{dataset}", "reports/align/{dataset}.json"),
        runner="ferpipe.align.stage:run_align",
        flow="flows.align:align_flow",
        sharded=True,
    ),
    Stage(
        name="prior-nets",
        params=("prior_nets",),
        code=("ferpipe/priors/nets.py", "ferpipe/priors/data.py", "ferpipe/priors/training.py",
              "ferpipe/priors/conventions.py", "ferpipe/sources/synthetic", "ferpipe/align/warp.py"),
        inputs=(),
        outputs=_PRIOR_NETS,
        metrics=("models/prior_nets/metrics.json",),
        runner="ferpipe.priors.training:run_prior_nets",
        flow="flows.prior_nets:prior_nets_flow",
    ),
    Stage(
        name="priors",
        params=("priors", "download.dataset"),
        code=("ferpipe/priors", "ferpipe/shards.py"),
        inputs=("data/aligned/{dataset}", *_PRIOR_NETS),
        outputs=("data/priors/{dataset}", "reports/priors/{dataset}.json"),
        runner="ferpipe.priors.stage:run_priors",
        flow="flows.priors:priors_flow",
        sharded=True,
    ),
    Stage(
        name="occlusion",
        params=("download.dataset", "occlusion", "priors"),
        code=("ferpipe/occlusion", "ferpipe/priors"),
        inputs=("data/priors/{dataset}", *_PRIOR_NETS),
        outputs=("data/occlusion/{dataset}", "reports/occlusion/{dataset}.json"),
        runner="ferpipe.occlusion.stage:run_occlusion",
        flow="flows.occlusion:occlusion_flow",
        sharded=True,
    ),
    Stage(
        name="train",
        params=("train", "download.dataset"),
        code=("ferpipe/train", "ferpipe/models", "ferpipe/losses"),
        inputs=("data/priors/{dataset}",),
        outputs=("models/train/{dataset}", "reports/train/history.json", "reports/train/test_confusion.json"),
        metrics=("reports/train/metrics.json",),
        plots=("reports/train/live/plots/metrics", "reports/train/curves.png"),
        runner="ferpipe.train.stage:run_train",
        flow="flows.train:train_flow",
    ),
    Stage(
        name="evaluate",
        params=("download.dataset", "evaluate"),
        code=("ferpipe/evaluate", "ferpipe/train/data.py"),
        inputs=("data/priors/{dataset}", "data/occlusion/{dataset}", "models/train/{dataset}/best.pt"),
        outputs=("reports/evaluate/{dataset}.json",),
        metrics=("reports/metrics.json",),
        plots=("reports/plots/clean_predictions.csv", "reports/plots/synthetic-occlusion_predictions.csv",
               "reports/plots/robustness.csv", "reports/plots/by_occluder.csv", "reports/plots/by_region.csv"),
        runner="ferpipe.evaluate.stage:run_evaluate",
        flow="flows.evaluate:evaluate_flow",
    ),
)

# Every stage above, in order, as one command (``ferpipe pipeline``); not a dvc.yaml stage.
PIPELINE = Stage(name="pipeline", params=(), code=(), inputs=(), outputs=(),
                 runner="ferpipe.pipeline:run_pipeline", flow="flows.pipeline:pipeline_flow")

NAMES: tuple[str, ...] = tuple(s.name for s in STAGES)
SHARDED: frozenset[str] = frozenset(s.name for s in STAGES if s.sharded)


def get(name: str) -> Stage:
    for stage in (*STAGES, PIPELINE):
        if stage.name == name:
            return stage
    raise ConfigError(f"unknown stage {name!r}; the stages are {', '.join(NAMES)}")


def cli_table() -> dict[str, tuple[str, str, str]]:
    """stage name → (flow module, flow function, library runner): what ``ferpipe <stage>`` runs."""
    return {s.name: (*s.flow.split(":"), s.runner) for s in (*STAGES, PIPELINE)}

