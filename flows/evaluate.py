"""Prefect flow for the evaluate stage: runs it, then publishes the metric tables and the
confusion / robustness figures (markdown with inline PNGs: no external plotting library)."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from ferpipe.evaluate.markdown import METRICS_HEADER, metrics_rows
from ferpipe.evaluate.plots import image_data_uri
from ferpipe.evaluate.stage import EvaluateReport, run_evaluate
from flows._common import artifact_key, markdown_table, params_for, stage_run_name


@flow(name="evaluate", flow_run_name=stage_run_name("evaluate"), log_prints=True)
def evaluate_flow(params_path: str = "params.yaml", overrides: list[str] | None = None,
                  root: str = ".") -> EvaluateReport:
    params = params_for(params_path, overrides)
    logger = get_run_logger()
    dataset = params.download.dataset
    report = run_evaluate(params, Path(root))
    for name, rows in report.tables.items():
        if rows:
            create_table_artifact(key=artifact_key("evaluate", dataset, name), table=rows,
                                  description=f"{dataset}: {name.replace('_', ' ')}")
    md = [f"# {dataset}: evaluation", ""]
    if report.tables.get("metrics"):
        md += ["95% intervals: Wilson for accuracy, seeded bootstrap for mean class accuracy and macro-F1.", "",
               markdown_table(metrics_rows(report.tables["metrics"]), METRICS_HEADER), ""]
    for name, why in report.skipped_sets.items():
        md.append(f"- {name}: skipped ({why})")
    for name, path in sorted(report.images.items()):
        md += [f"## {name.replace('_', ' ')}", "", f'<img src="{image_data_uri(path)}" width="480"/>', ""]
    create_markdown_artifact(key=artifact_key("evaluate", dataset, "figures"), markdown="\n".join(md),
                             description=f"{dataset}: confusion matrices and robustness curves")
    logger.info(report.summary())
    return report
