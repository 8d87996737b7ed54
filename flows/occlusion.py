"""Prefect flow for the occlusion stage: one task per source shard (retried) builds the
synthetic-occlusion set, then the indexes, the metadata parquet, the real subsets, the report and
its artifacts (a per-shard stats table, a gallery); see flows/_stage.py."""

from prefect.task_runners import ThreadPoolTaskRunner

from flows._stage import sharded_stage_flow

# One shard at a time by default (the prior backend uses every core through torch).
occlusion_flow, occlusion_shard_task = sharded_stage_flow("occlusion", ThreadPoolTaskRunner(max_workers=1))
