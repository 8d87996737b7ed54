"""Prefect flow for the prior-nets stage: train ferpipe's parser and landmark net (one task,
retried once), publish the held-out metrics; see flows/_stage.py."""

from flows._stage import stage_flow

prior_nets_flow, train_prior_nets_task = stage_flow("prior-nets", retries=1)
