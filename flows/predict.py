"""Prefect flow for ``ferpipe predict``: runs the library's :func:`ferpipe.predict.run.run_predict`,
then publishes the predictions (a table artifact: the first rows) and a gallery (a markdown
artifact: annotated thumbnails, top class and probability, and every error)."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from ferpipe.predict.run import PredictReport, gallery_markdown, run_predict
from flows._common import artifact_key

_TABLE_COLUMNS = ("source", "frame", "timestamp", "face", "status", "chosen", "score", "top_class", "top_prob")


@flow(name="predict", log_prints=True)
def predict_flow(paths: list[str], checkpoint: str | None = None, model: str | None = None, out: str | None = None,
                 every: int = 1, fps: float | None = None, annotate: str | None = None, device: str = "cpu",
                 batch_size: int = 16, models_dir: str | None = None, threads: int = 0, overwrite: bool = False,
                 progress: bool = False) -> PredictReport:
    logger = get_run_logger()
    report = run_predict(paths, checkpoint=checkpoint, model=model, out=out, every=every, fps=fps,
                         annotate=annotate, device=device, batch_size=batch_size, models_dir=models_dir,
                         threads=threads, overwrite=overwrite, progress=progress)
    name = Path(report.model).parent.name or "model"
    rows = [{c: r.get(c) for c in _TABLE_COLUMNS} for r in report.preview]
    if rows:
        create_table_artifact(key=artifact_key("predict", name, "table"), table=rows,
                              description=f"predictions of {report.model} (first {len(rows)} rows"
                                          + (f"; all in {report.out})" if report.out else ")"))
    create_markdown_artifact(key=artifact_key("predict", name, "gallery"), markdown=gallery_markdown(report),
                             description=f"{report.faces} faces, {report.no_face} without a face, "
                                         f"{len(report.errors)} errors")
    logger.info(report.summary())
    return report
