"""Prefect flow for the align stage: one task per shard (retried), then the indexes, the report
and its artifacts (per-shard stats, a summary, a gallery of the failures); see flows/_stage.py."""

from flows._stage import sharded_stage_flow

# Prefect's default task runner: shards run side by side (each one's decode pool is its own).
align_flow, align_shard_task = sharded_stage_flow("align")
