"""Prefect flow for the priors stage: one task per aligned shard (retried), then the indexes,
a per-shard stats table and a gallery (image | parsing | landmarks, both views)."""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

from prefect import flow, get_run_logger, task, unmapped
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from ferpipe import shards
from ferpipe.layout import Layout
from ferpipe.priors.domain import check_domain, dataset_domain
from ferpipe.priors.params import PriorsParams
from ferpipe.priors.stage import (
    PriorsReport,
    build_report,
    plan_priors,
    priors_gallery,
    priors_shard,
)
from flows._common import artifact_key, markdown_table, params_for, run_shard, stage_run_name

@task(retries=2, retry_delay_seconds=5, task_run_name="priors-{spec.split}-{spec.index}")
def priors_shard_task(spec: shards.ShardSpec, aligned_dir: str, out_dir: str, params: PriorsParams,
                      models_dir: str, domain: dict | None = None) -> dict:
    return run_shard(partial(priors_shard, domain=domain), spec, aligned_dir, out_dir, params, models_dir)


# One shard at a time on one machine (a shard already uses every core through torch); a
# Dask/Ray task runner passed by a deployment runs shards in parallel instead.
@flow(name="priors", flow_run_name=stage_run_name("priors"), log_prints=True,
      task_runner=ThreadPoolTaskRunner(max_workers=1))
def priors_flow(params_path: str = "params.yaml", overrides: list[str] | None = None,
                root: str = ".") -> PriorsReport:
    t0 = time.perf_counter()
    params = params_for(params_path, overrides)
    logger = get_run_logger()
    layout = Layout(Path(root))
    dataset = params.download.dataset
    p: PriorsParams = params.priors
    aligned_dir, out_dir = layout.shards("aligned", dataset), layout.shards("priors", dataset)
    # Refuse before any shard starts (a DomainMismatchError names the ways out).
    domain = check_domain(p, layout.models, dataset_domain(params.download), dataset)
    plans = plan_priors(aligned_dir)
    specs = [s for plan in plans.values() for s in plan]
    futures = priors_shard_task.map(specs, unmapped(str(aligned_dir)), unmapped(str(out_dir)),
                                    unmapped(p), unmapped(str(layout.models)), unmapped(domain))
    results = futures.result()
    stats: dict[str, list[dict]] = {split: [] for split in plans}
    for spec, st in zip(specs, results):
        stats[spec.split].append(st)
    shards.finalize_stage(out_dir, plans, stats, time.perf_counter() - t0)
    report = build_report(stats, out_dir, p, dataset, time.perf_counter() - t0, domain)
    from ferpipe.timings import write_report  # noqa: PLC0415

    write_report(layout.stage_report("priors", dataset), report.to_dict())
    create_table_artifact(key=artifact_key("priors", dataset, "shards"), table=report.shard_stats,
                          description=f"{dataset}: priors ({p.kind}, {p.backend}) per shard")
    md = [f"# {dataset}: priors ({p.kind}, backend {p.backend})", "",
          f"{sum(c['written'] for c in report.splits.values())} samples, "
          f"{report.bytes_per_sample / 1024:.1f} KiB/sample, {report.samples_per_second:.1f} samples/s", ""]
    if report.failures:
        md += [markdown_table(report.failures[:200], ["split", "shard", "key", "reason", "detail"]), ""]
    if p.gallery_size:
        md.append(priors_gallery(out_dir, p.kind, limit=p.gallery_size))
    create_markdown_artifact(key=artifact_key("priors", dataset, "gallery"), markdown="\n".join(md),
                             description=f"{dataset}: priors gallery and skipped samples")
    logger.info(report.summary())
    return report
