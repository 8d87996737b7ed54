"""Prefect flow for the prior-nets stage: train ferpipe's parser and landmark net (one task,
retried once), publish the held-out metrics."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from ferpipe.layout import Layout
from ferpipe.priors.params import PriorNetsParams
from ferpipe.priors.training import PriorNetsReport, prior_nets_stage
from flows._common import artifact_key, markdown_table, stage_run_name


@task(retries=1, retry_delay_seconds=5)
def train_prior_nets_task(params: PriorNetsParams, out_dir: str, root: str) -> PriorNetsReport:
    logger = get_run_logger()
    return prior_nets_stage(params, out_dir, root=root, log=logger.info)


@flow(name="prior-nets", flow_run_name=stage_run_name("prior-nets"), log_prints=True)
def prior_nets_flow(params_path: str = "params.yaml", overrides: list[str] | None = None,
                    root: str = ".") -> PriorNetsReport:
    from flows._common import params_for  # noqa: PLC0415

    params = params_for(params_path, overrides)
    layout = Layout(Path(root))
    report = train_prior_nets_task(params.prior_nets, str(layout.models / "prior_nets"), str(layout.root))
    m = report.metrics
    rows = [{"metric": "mIoU", "clean": round(m["parser"]["miou"], 4),
             "occluded": round(m["parser_occluded"]["miou"], 4)},
            {"metric": "pixel accuracy", "clean": round(m["parser"]["pixel_accuracy"], 4),
             "occluded": round(m["parser_occluded"]["pixel_accuracy"], 4)},
            {"metric": "NME (inter-ocular)", "clean": round(m["landmarks"]["nme"], 4),
             "occluded": round(m["landmarks_occluded"]["nme"], 4)},
            {"metric": "landmark failures (NME > 0.10)", "clean": m["landmarks"]["failure_rate_0.10"],
             "occluded": m["landmarks_occluded"]["failure_rate_0.10"]}]
    create_table_artifact(key=artifact_key("prior-nets", "metrics"), table=rows,
                          description=f"held-out {report.source} faces ({report.n_test})")
    iou = [{"class": c, "iou": v, "iou_occluded": m["parser_occluded"]["iou"][c]}
           for c, v in m["parser"]["iou"].items()]
    create_markdown_artifact(key=artifact_key("prior-nets", "per-class-iou"),
                             markdown=f"# Prior parser: per-class IoU\n\n{markdown_table(iou, ['class', 'iou', 'iou_occluded'])}\n",
                             description="per-class IoU on held-out faces, clean and occluded")
    get_run_logger().info(report.summary())
    return report
