"""``ferpipe <stage>`` (the flow) and ``ferpipe <stage> --no-flow`` (the library entry) write the
same files: every output, metric and plot the registry declares for the stage, byte for byte,
except for the timing fields named here (in checkpoints and DVCLive's tables only: the JSON reports
hold none, :mod:`ferpipe.timings` splits them off).

:func:`flow_then_library` takes the outputs a flow run left, removes them, runs the stage's
library entry in the same project (same paths, so the reports' paths agree) and returns both
snapshots; the library's outputs stay, so a chain of stages goes on from them.
"""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path
from typing import Any

from ferpipe import stages

# What differs between two runs of the same stage with the same params: wall-clock durations and
# throughputs (a checkpoint's training record, a prior net's training record) and DVCLive's
# per-step wall-clock stamp.
TIMING_FIELDS = frozenset({"seconds", "elapsed_s", "timestamp", "images_per_s", "train_images_per_s",
                           "samples_per_second", "items_per_second", "seconds_by_part"})


def _strip(x: Any) -> Any:
    import torch

    if isinstance(x, dict):
        return {k: _strip(v) for k, v in x.items() if k not in TIMING_FIELDS}
    if isinstance(x, (list, tuple)):
        return [_strip(v) for v in x]
    if isinstance(x, torch.Tensor):
        return (str(x.dtype), tuple(x.shape), x.detach().cpu().contiguous().numpy().tobytes())
    return x


def _content(path: Path) -> Any:
    """A file as compared: its bytes; a checkpoint's contents and a DVCLive table's rows less the
    timing fields."""
    if path.suffix == ".pt":
        import torch

        return _strip(torch.load(path, map_location="cpu", weights_only=True))
    if path.suffix == ".tsv":
        rows = list(csv.DictReader(io.StringIO(path.read_text()), delimiter="\t"))
        return _strip(rows)
    return path.read_bytes()


def _declared(root: Path, stage: str, dataset: str) -> list[Path]:
    s = stages.get(stage)
    return [root / rel for kind in ("outputs", "metrics", "plots") for rel in s.paths(kind, dataset)]


def stage_files(root: Path, stage: str, dataset: str) -> dict[str, Any]:
    """Every file under the stage's declared outputs, metrics and plots, by path under ``root``."""
    files: dict[str, Any] = {}
    for p in _declared(root, stage, dataset):
        for f in [p] if p.is_file() else sorted(x for x in p.rglob("*") if x.is_file()):
            files[str(f.relative_to(root))] = _content(f)
    return files


def remove_outputs(root: Path, stage: str, dataset: str) -> None:
    for p in _declared(root, stage, dataset):
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def flow_then_library(root: Path, stage: str, dataset: str, params: Any, **options: Any
                      ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the flow's files, the library's files) for ``stage``, the flow having just run in ``root``."""
    from ferpipe.layout import Layout
    from ferpipe.progress import NullProgress

    by_flow = stage_files(root, stage, dataset)
    remove_outputs(root, stage, dataset)
    stages.get(stage).load().run(params, Layout(root), NullProgress(), **options)
    return by_flow, stage_files(root, stage, dataset)


def assert_same_files(by_flow: dict[str, Any], by_library: dict[str, Any]) -> None:
    assert by_flow, "the flow wrote none of the stage's declared outputs"
    assert sorted(by_library) == sorted(by_flow)
    differ = [name for name in by_flow if by_flow[name] != by_library[name]]
    assert not differ, f"flow and --no-flow wrote different {differ}"
