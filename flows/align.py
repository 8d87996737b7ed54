"""Prefect flow for the align stage: one task per shard (with retries), then the indexes."""

from __future__ import annotations

import time
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from ferpipe import shards
from ferpipe.align.stage import (
    AlignReport,
    align_shard,
    failure_gallery_markdown,
    failure_thumbnails,
    plan_align,
    summarize_align,
    write_report,
)
from ferpipe.layout import Layout
from flows._common import (artifact_key, markdown_table, params_for, run_shard, shard_stats_rows,
                           stage_run_name)

GALLERY_LIMIT = 48  # thumbnails inlined in the failure gallery (each ~3 KB of base64)


@task(name="align-shard", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def align_shard_task(spec, raw_root: str, out_dir: str, params, label_space) -> dict:
    return run_shard(align_shard, spec, raw_root, out_dir, params, label_space)


@flow(name="align", flow_run_name=stage_run_name("align"), log_prints=True)
def align_flow(params_path: str = "params.yaml", overrides: list[str] | None = None,
               root: str = ".") -> AlignReport:
    params = params_for(params_path, overrides)
    logger = get_run_logger()
    layout = Layout(Path(root))
    dataset = params.download.dataset
    raw_root, out_dir = layout.raw(dataset), layout.shards("aligned", dataset)
    start = time.perf_counter()
    plans, label_space = plan_align(layout.manifest(dataset), params.align)
    futures = {split: [align_shard_task.submit(spec, str(raw_root), str(out_dir), params.align, label_space)
                       for spec in plan] for split, plan in plans.items()}
    stats = {split: [f.result() for f in futs] for split, futs in futures.items()}
    run = shards.finalize_stage(out_dir, plans, stats, time.perf_counter() - start)
    report = summarize_align(run, plans, out_dir, params.align, run.seconds)
    write_report(report, layout.stage_report("align", dataset))

    create_table_artifact(key=artifact_key("align", dataset, "shards"), table=shard_stats_rows(stats),
                          description=f"{dataset}: per-shard alignment stats")
    create_markdown_artifact(key=artifact_key("align", dataset, "summary"), markdown=_summary_markdown(report),
                             description=f"{dataset}: throughput and skips")
    thumbs = failure_thumbnails(report.failures, raw_root, limit=GALLERY_LIMIT,
                                max_image_pixels=params.align.max_image_pixels)
    create_markdown_artifact(key=artifact_key("align", dataset, "failures"),
                             markdown=failure_gallery_markdown(thumbs, total=len(report.failures)),
                             description=f"{dataset}: images with no usable face, and fallbacks")
    logger.info(report.summary())
    return report


def _summary_markdown(report: AlignReport) -> str:
    rows = [{"split": s, **c} for s, c in report.splits.items()]
    reasons = [{"reason": r, "count": n} for r, n in report.skipped_by_reason.items()]
    return "\n".join([
        f"# align {report.dataset}",
        f"{report.images_processed} images in {report.seconds:.1f} s: "
        f"**{report.images_per_second:.1f} images/s**; {report.shards_resumed} shards resumed.", "",
        markdown_table(rows, ["split", "items", "written", "skipped", "noted", "shards", "shards_resumed"]), "",
        "## Skipped, by reason", "", markdown_table(reasons, ["reason", "count"]) if reasons else "None.",
    ])
