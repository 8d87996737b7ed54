"""Progress within a training epoch: the cadence of bar / log lines / callbacks, the loop's step
callbacks, and `ferpipe train` on a pseudo-terminal drawing its bar before the first step ends."""

from __future__ import annotations

import dataclasses
import fcntl
import io
import logging
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import textwrap
import time
from pathlib import Path

import pytest
import torch

from ferpipe.train import data as D
from ferpipe.train import presets
from ferpipe.train.fixtures import write_random_priors
from ferpipe.train.loop import RunOptions, fit
from ferpipe.train.progress import EpochProgress, describe, format_eta, steps_per_epoch

pytestmark = pytest.mark.usefixtures("one_thread_module")

TINY = {"depth": 1, "embed_dim": 32, "num_heads": 2, "ir_widths": (8, 8, 16), "ir_units": (1, 1, 1),
        "ir_stem_width": 8, "ir_input_size": None, "spade_hidden": 8, "encoder_widths": (8, 8, 16),
        "drop_path_rate": 0.1}
SIZE = 56


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_steps_per_epoch_and_eta_text():
    assert steps_per_epoch(100, 32) == 4 and steps_per_epoch(100, 32, drop_last=True) == 3
    assert steps_per_epoch(100, 32, max_steps=2) == 2
    assert format_eta(75) == "01:15" and format_eta(3725) == "1:02:05" and format_eta(None) == "?"


def test_log_lines_and_callbacks_keep_their_own_cadence(caplog):
    clock, seen = Clock(), []
    p = EpochProgress(2, 5, steps=10, bar=False, log_every_s=30, callbacks=[seen.append], callback_every_s=10,
                      clock=clock)
    with caplog.at_level(logging.INFO, logger="ferpipe.train.progress"):
        for i in range(10):
            clock.t += 4.0                      # a step every 4 s
            p.update(8, torch.tensor(2.0 * 8 * (i + 1), dtype=torch.float64))  # running loss 2.0
    # callbacks: first step, then every >= 10 s (steps 1, 4, 7, 10); logs: first step, then >= 30 s
    assert [s["step"] for s in seen] == [1, 4, 7, 10]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and lines[0].startswith("epoch 2/5 step 1/10: running loss 2.0000")
    last = seen[-1]
    assert last["steps_per_s"] == pytest.approx(0.25) and last["samples_per_s"] == pytest.approx(2.0)
    assert seen[1]["eta_s"] == pytest.approx(6 / 0.25)  # 6 steps left at 0.25 steps/s
    assert last["progress"] == pytest.approx((1 + 1.0) / 5)
    assert "steps/s" in describe(last) and "ETA" in describe(last)


def test_bar_is_drawn_before_the_first_step_and_shows_the_loss():
    out = io.StringIO()
    p = EpochProgress(1, 3, steps=4, bar=True, stream=out)
    assert "epoch 1/3" in out.getvalue() and "0/4" in out.getvalue()  # drawn at once, before any batch
    for i in range(5):  # one step more than estimated: the total grows, nothing breaks
        p.update(8, float(1.5 * 8 * (i + 1)))
    p.bar.refresh()
    text = out.getvalue()
    assert "loss=1.5000" in text and "step/s" in text and "5/5" in text
    p.close()


def test_fit_calls_step_callbacks_within_the_epoch(tmp_path):
    ss = D.probe_shards(write_random_priors(tmp_path / "s", "features", counts=(64, 14, 14), size=SIZE,
                                            samples_per_shard=32))
    cfg = dataclasses.replace(presets.get_preset("orsanet-cpu"), model_kwargs=TINY, img_size=SIZE, batch_size=16,
                              eval_batch_size=32, epochs=2, shuffle_buffer=32, scheduler="none", warmup_epochs=0)
    events = []
    opts = RunOptions(num_workers=0, progress=False, step_callback_every_s=0.0,
                      step_callbacks=[lambda i: events.append(("step", i["epoch"], i["step"], i["steps"]))],
                      callbacks=[lambda i: events.append(("epoch", i["epoch"]))])
    fit(cfg, ss, tmp_path / "m", opts)
    assert events == [("step", 1, s, 4) for s in range(1, 5)] + [("epoch", 1)] + \
        [("step", 2, s, 4) for s in range(1, 5)] + [("epoch", 2)]


_SCRIPT = textwrap.dedent("""
    import dataclasses, sys
    from ferpipe.train import presets
    presets.register_preset("tiny-pty", dataclasses.replace(
        presets.get_preset("orsanet-cpu"), model_kwargs={tiny!r}, img_size={size}, batch_size=8,
        eval_batch_size=32, epochs=1, shuffle_buffer=32, scheduler="none", warmup_epochs=0))
    from ferpipe.cli import main
    sys.exit(main(["train", "--no-flow", "--root", {root!r}, "--params", {params!r}]))
""")


@pytest.mark.slow
def test_ferpipe_train_on_a_terminal_shows_a_bar_before_the_first_step(tmp_path):
    root = tmp_path / "project"
    write_random_priors(root / "data" / "priors" / "tiny", "features", counts=(64, 14, 14), size=SIZE,
                        samples_per_shard=32)
    params = root / "params.yaml"
    params.write_text("download:\n  dataset: tiny\ntrain:\n  preset: tiny-pty\n  num_workers: 0\n  threads: 1\n")
    script = _SCRIPT.format(tiny=TINY, size=SIZE, root=str(root), params=str(params))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # a 120-column terminal
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=follower, stdout=follower, stderr=follower,
                            env=env, close_fds=True)
    os.close(follower)
    out, stamps = b"", {}
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
            for mark in (b"epoch 1/1:", b"0/8", b"step/s", b"loss=", b"test acc"):
                if mark in out and mark not in stamps:
                    stamps[mark] = time.monotonic()
        elif proc.poll() is not None:
            break
    os.close(leader)
    assert proc.wait(timeout=60) == 0, out.decode(errors="replace")[-3000:]
    text = out.decode(errors="replace")
    # the bar (tqdm on the terminal) is drawn at the epoch's start, before its first step ends
    assert b"0/8" in stamps and b"epoch 1/1:" in stamps, text[-3000:]
    assert b"loss=" in stamps and b"step/s" in stamps, text[-3000:]
    assert stamps[b"0/8"] <= stamps[b"loss="] <= stamps[b"test acc"]
    assert (root / "models" / "train" / "tiny" / "best.pt").exists()
    if os.environ.get("FERPIPE_SHOW_TTY"):
        sys.stderr.write(text)


def test_prefect_progress_artifact_moves_within_the_epoch(monkeypatch):
    import flows.train as ft

    calls = []
    monkeypatch.setattr(ft, "create_progress_artifact",
                        lambda progress, key, description: calls.append(("create", progress, key, description)) or "id1")
    monkeypatch.setattr(ft, "update_progress_artifact",
                        lambda artifact_id, progress, description: calls.append(("update", progress, artifact_id,
                                                                                 description)))
    lines = []
    art = ft.ProgressArtifact("mini", lines.append)
    clock = Clock()
    p = EpochProgress(1, 2, steps=4, bar=False, log_every_s=1e9, callbacks=[art.on_step], callback_every_s=0,
                      clock=clock)
    for i in range(2):
        clock.t += 1.0
        p.update(8, 8.0 * (i + 1))
    art.on_epoch({"epoch": 1, "epochs": 2, "train_loss": 1.0, "val_acc": 0.5, "best_val_acc": 0.5, "best_epoch": 1})
    assert [c[:3] for c in calls] == [("create", 12.5, "train-mini-progress"), ("update", 25.0, "id1"),
                                      ("update", 50.0, "id1")]
    assert "step 2/4" in calls[1][3] and "steps/s" in calls[1][3] and "ETA" in calls[1][3]
    assert lines[1] == calls[1][3]  # the same line goes to the run's log
