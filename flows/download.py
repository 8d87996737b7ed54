"""Prefect flow for the download stage: runs the library stage, publishes what it found."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from ferpipe.layout import Layout
from ferpipe.sources.download import DownloadReport, download_stage
from flows._common import artifact_key, markdown_table, params_for, stage_run_name

MAX_LISTED = 500  # a rejected list longer than this is truncated in the UI (the JSON report has all)


@flow(name="download", flow_run_name=stage_run_name("download"), log_prints=True)
def download_flow(params_path: str = "params.yaml", overrides: list[str] | None = None,
                  root: str = ".") -> DownloadReport:
    params = params_for(params_path, overrides)
    logger = get_run_logger()
    report = download_stage(params.download, Layout(Path(root)), log=logger.info)
    dataset = params.download.dataset
    create_table_artifact(
        key=artifact_key("download", dataset, "counts"),
        table=report.counts,
        description=f"{dataset}: usable images per split and class ({report.label_space['name']})",
    )
    create_markdown_artifact(
        key=artifact_key("download", dataset, "rejected"),
        markdown=rejected_markdown(report),
        description=f"{dataset}: files skipped, with the reason",
    )
    logger.info(report.summary())
    return report


def rejected_markdown(report: DownloadReport) -> str:
    lines = [f"# {report.dataset}: rejected files ({len(report.rejected)})", ""]
    if not report.rejected:
        lines.append("None: every listed image decoded and has a label in the label space.")
    else:
        lines.append(markdown_table(report.rejected[:MAX_LISTED], ["path", "reason"]))
        if len(report.rejected) > MAX_LISTED:
            lines.append(f"\n… and {len(report.rejected) - MAX_LISTED} more in {report.manifest}'s report JSON.")
    if report.leakage:
        lines += ["", f"## Leakage: {len(report.leakage)} identical images across splits", ""]
        rows = [{"sha256": leak["sha256"][:16],
                 "samples": ", ".join(f"{s['split']}:{s['path']}" for s in leak["samples"])}
                for leak in report.leakage[:MAX_LISTED]]
        lines.append(markdown_table(rows, ["sha256", "samples"]))
    if report.val_split:
        lines += ["", f"Val split carved from train: {report.val_split['total']} images "
                      f"(fraction {report.val_split['fraction']}, seed {report.val_split['seed']})."]
    return "\n".join(lines)
