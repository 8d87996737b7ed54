"""Prefect flow for the evaluate stage: runs it, then publishes the metric tables and the
confusion / robustness figures (markdown with inline images); see flows/_stage.py."""

from flows._stage import stage_flow

evaluate_flow, evaluate_task = stage_flow("evaluate")
