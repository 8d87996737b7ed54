"""The ``pipeline`` flow: every stage flow in dvc.yaml's order, as subflows of one run.

Each stage appears in the Prefect UI nested under the pipeline run, with its own tasks and
artifacts; all get the same params file, overrides and root. The sharded stages (align, priors,
occlusion) use the task runner ``flows.*`` asks for. Unlike ``dvc repro`` nothing is skipped:
every stage runs (sharded ones resume their done shards). A failing stage fails the pipeline run
and the later stages do not start.
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from ferpipe.pipeline import PipelineReport, select_stages
from ferpipe.stages import STAGES
from ferpipe.train.stage import check_pipeline_replacement
from flows._common import params_for, stage_run_name, with_task_runner

STAGE_FLOWS = {stage.name: stage.load_flow() for stage in STAGES}


@flow(name="pipeline", flow_run_name=stage_run_name("pipeline"), log_prints=True)
def pipeline_flow(params_path: str = "params.yaml", overrides: list[str] | None = None, root: str = ".",
                  stages: list[str] | None = None, overwrite: bool = False) -> PipelineReport:
    params = params_for(params_path, overrides)  # an invalid value fails here, before any stage starts
    logger = get_run_logger()
    report = PipelineReport()
    selected = select_stages(stages)
    if "train" in selected and overrides and not overwrite:  # refuse before the first stage, not at train
        check_pipeline_replacement(params, params_for(params_path, None), root)
    for stage in selected:
        logger.info("stage %s", stage)
        stage_flow = with_task_runner(STAGE_FLOWS[stage], params)
        extra = {"overwrite": True} if stage == "train" and overwrite else {}  # see train_flow
        report.reports[stage] = stage_flow(params_path=params_path, overrides=list(overrides or []), root=root,
                                           **extra)
    logger.info("pipeline done: %s", ", ".join(report.reports))
    return report
