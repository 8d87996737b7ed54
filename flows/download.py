"""Prefect flow for the download stage: runs the library stage, publishes what it found (counts per
split and class, the rejected files); see flows/_stage.py."""

from flows._stage import stage_flow

download_flow, download_task = stage_flow("download")
