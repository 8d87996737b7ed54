"""The whole pipeline, stage after stage, in dvc.yaml's order (``ferpipe pipeline --no-flow``).

``flows/pipeline.py`` runs the same stages as Prefect subflows. Unlike ``dvc repro`` this does not
skip up-to-date stages: every stage runs (the sharded ones resume their done shards).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ferpipe.config import Params
from ferpipe.errors import ConfigError
from ferpipe.stages import NAMES as STAGES
from ferpipe.stages import get as get_stage


def select_stages(stages: Sequence[str] | None) -> list[str]:
    """``stages`` (any order, a subset) in pipeline order; None: all of them."""
    if not stages:
        return list(STAGES)
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        raise ConfigError(f"unknown stage(s) {', '.join(unknown)}; the stages are {', '.join(STAGES)}")
    return [s for s in STAGES if s in set(stages)]


@dataclass
class PipelineReport:
    reports: dict[str, Any] = field(default_factory=dict)  # stage → that stage's report, in order

    def summary(self) -> str:
        lines = []
        for stage, report in self.reports.items():
            s = getattr(report, "summary", None)
            lines.append(f"== {stage}\n{s() if callable(s) else report}")
        return "\n".join(lines)


class PipelineStage:
    """``ferpipe pipeline --no-flow``: every stage's entry, in order, with the same progress."""

    name = "pipeline"

    def run(self, params: Params, layout, progress=None, stages: Sequence[str] | None = None,
            declared: Params | None = None, overwrite: bool = False) -> PipelineReport:
        """``declared``/``overwrite``: passed to the train stage (see ferpipe.train.stage.check_replacement)."""
        report = PipelineReport()
        selected = select_stages(stages)
        if "train" in selected and declared is not None and not overwrite:
            from ferpipe.train.stage import check_pipeline_replacement  # noqa: PLC0415

            check_pipeline_replacement(params, declared, layout.root)
        for stage in selected:
            extra = {"declared": declared, "overwrite": overwrite} if stage == "train" else {}
            report.reports[stage] = get_stage(stage).load().run(params, layout, progress, **extra)
        return report


PIPELINE = PipelineStage()


def run_pipeline(params: Params, root: str | Path = ".", stages: Sequence[str] | None = None,
                 declared: Params | None = None, overwrite: bool = False) -> PipelineReport:
    """:data:`PIPELINE` from a project root (for scripts and tests)."""
    from ferpipe.layout import Layout  # noqa: PLC0415

    return PIPELINE.run(params, Layout(Path(root)), None, stages, declared, overwrite)
