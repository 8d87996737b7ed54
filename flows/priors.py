"""Prefect flow for the priors stage: one task per aligned shard (retried), then the indexes, the
report and its artifacts (a per-shard stats table, a gallery); see flows/_stage.py."""

from prefect.task_runners import ThreadPoolTaskRunner

from flows._stage import sharded_stage_flow

# One shard at a time on one machine (a shard already uses every core through torch); a
# Dask task runner (flows.task_runner=dask) runs shards in parallel instead.
priors_flow, priors_shard_task = sharded_stage_flow("priors", ThreadPoolTaskRunner(max_workers=1))
