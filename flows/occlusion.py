"""Prefect flow for the occlusion stage: one task per source shard (retried) builds the
synthetic-occlusion set, then the indexes, the metadata parquet, the real subsets, a per-shard
stats table and a gallery (original | occluded)."""

from __future__ import annotations

import time
from pathlib import Path

from prefect import flow, get_run_logger, task, unmapped
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from ferpipe import shards
from ferpipe.occlusion.params import OcclusionParams
from ferpipe.occlusion.placement import PlacementSource, placement_source
from ferpipe.occlusion.stage import STAGE, default_recompute, maybe_build_subsets, occlusion_paths
from ferpipe.occlusion.synthetic import (
    SET_NAME,
    OcclusionReport,
    finalize_occlusion,
    gallery_markdown,
    occlusion_shard,
    plan_occlusion,
)
from flows._common import artifact_key, markdown_table, params_for, run_shard, stage_run_name

STATS_COLUMNS = ["shard", "items", "written", "skipped", "seconds", "items_per_second", "bytes", "resumed"]


@task(retries=2, retry_delay_seconds=5, task_run_name="occlusion-{spec.index}")
def occlusion_shard_task(spec: shards.ShardSpec, source_dir: str, out_dir: str, params: OcclusionParams,
                         recompute, placement: PlacementSource) -> dict:
    return run_shard(occlusion_shard, spec, source_dir, out_dir, params, recompute, True, placement)


# One shard at a time by default (the prior backend uses every core through torch).
@flow(name="occlusion", flow_run_name=stage_run_name("occlusion"), log_prints=True,
      task_runner=ThreadPoolTaskRunner(max_workers=1))
def occlusion_flow(params_path: str = "params.yaml", overrides: list[str] | None = None,
                   root: str = ".") -> OcclusionReport:
    t0 = time.perf_counter()
    params = params_for(params_path, overrides)
    logger = get_run_logger()
    layout, dataset, source_dir, out_dir = occlusion_paths(params, Path(root))
    p: OcclusionParams = params.occlusion
    recompute = default_recompute(params, layout, source_dir, p.split)
    plans = plan_occlusion(source_dir, p.split, p.variants)
    specs = plans[SET_NAME]
    results = occlusion_shard_task.map(specs, unmapped(str(source_dir)), unmapped(str(out_dir)), unmapped(p),
                                       unmapped(recompute),
                                       unmapped(placement_source(layout, dataset))).result()
    report = finalize_occlusion(out_dir, source_dir, plans, {SET_NAME: list(results)}, dataset,
                                time.perf_counter() - t0)
    report.subsets = maybe_build_subsets(params, layout, dataset, out_dir)
    from ferpipe.timings import write_report  # noqa: PLC0415

    write_report(layout.stage_report(STAGE, dataset), report.to_dict())
    occluders = sorted({k for r in report.shard_stats for k in r if k.startswith("n_")})
    create_table_artifact(key=artifact_key("occlusion", dataset, "shards"),
                          table=[{c: r.get(c, 0) for c in STATS_COLUMNS + occluders} for r in report.shard_stats],
                          description=f"{dataset}: {SET_NAME} per shard (occluder counts n_*)")
    md = [f"# {dataset}: {SET_NAME}", "",
          f"{report.samples} samples, mean occluded fraction {report.mean_occluded_fraction:.3f}; occluders "
          f"placed from the data alone, never a network: "
          + ", ".join(f"{n} on {k}" for k, n in report.by_placement.items()), "",
          markdown_table([{"occluder": k, "samples": v} for k, v in report.by_occluder.items()],
                         ["occluder", "samples"]), "",
          markdown_table([{"region": k, "samples": v} for k, v in report.by_region.items()], ["region", "samples"]),
          ""]
    if report.failures:
        md += [markdown_table(report.failures[:200], ["shard", "key", "reason", "detail"]), ""]
    if report.subsets:
        md += ["## Real subsets", "",
               markdown_table(list(report.subsets["subsets"].values()),
                              ["subset", "format", "keys", "duplicates", "problems", "codes"]), ""]
        if report.subsets["problems"]:
            md += [markdown_table(report.subsets["problems"][:200], ["subset", "stem", "problem", "detail"]), ""]
    if p.gallery_size:
        md.append(gallery_markdown(out_dir, source_dir, p.split, limit=p.gallery_size))
    create_markdown_artifact(key=artifact_key("occlusion", dataset, "gallery"), markdown="\n".join(md),
                             description=f"{dataset}: {SET_NAME} gallery, counts and subset problems")
    logger.info(report.summary())
    return report
