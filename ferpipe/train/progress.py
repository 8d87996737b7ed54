"""Progress within a training epoch: steps/s, ETA and the running loss.

Three consumers, each at its own pace, so a long epoch is never silent:

- a terminal gets a tqdm bar (on stderr, when it is a TTY);
- logs get one line every ``log_every_s`` seconds otherwise (and a first one after the first
  step, so a log shows within seconds that training started);
- step callbacks (a Prefect flow's progress artifact) get a dict every ``callback_every_s``.

The running loss is a device tensor; it is read back (a sync on CUDA) only when something is
shown, never every step.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from typing import Any, Callable, Sequence

log = logging.getLogger(__name__)
StepCallback = Callable[[dict[str, Any]], None]


def steps_per_epoch(samples: int, batch_size: int, drop_last: bool = False,
                    max_steps: int | None = None) -> int:
    """Optimiser steps an epoch of ``samples`` takes (an estimate when loader workers batch
    their own streams: each worker's last batch may be partial)."""
    steps = samples // batch_size if drop_last else math.ceil(samples / batch_size)
    return min(steps, max_steps) if max_steps else steps


def format_eta(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def describe(info: dict[str, Any]) -> str:
    """One line for logs and the Prefect progress artifact."""
    head = f"epoch {info['epoch']}/{info['epochs']} step {info['step']}/{info['steps']}"
    if info.get("loss") is None:
        return f"{head}: starting"
    return (f"{head}: running loss {info['loss']:.4f}, {info['steps_per_s']:.2f} steps/s "
            f"({info['samples_per_s']:.1f} img/s), epoch ETA {format_eta(info['eta_s'])}")


class EpochProgress:
    """Reports one epoch's steps to a bar, to logs and to callbacks (see the module doc)."""

    def __init__(self, epoch: int, epochs: int, steps: int, *, bar: bool | None = None, log_every_s: float = 30.0,
                 callbacks: Sequence[StepCallback] = (), callback_every_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic, stream=None):
        self.epoch, self.epochs, self.steps = epoch, epochs, max(int(steps), 1)
        self._clock, self._callbacks = clock, list(callbacks)
        self._log_every, self._cb_every = log_every_s, callback_every_s
        self._start = clock()
        self._last_log = self._last_cb = self._last_postfix = None
        self.step = self.samples = 0
        stream = stream if stream is not None else sys.stderr
        self._bar = None
        if bar if bar is not None else _isatty(stream):
            from tqdm.auto import tqdm

            # Drawn at once (before the first batch arrives), then at most ~10 times a second.
            self._bar = tqdm(total=self.steps, desc=f"epoch {epoch}/{epochs}", unit="step", file=stream,
                             dynamic_ncols=True, leave=False, mininterval=0.1)

    @property
    def bar(self):
        return self._bar

    def info(self, loss: float | None) -> dict[str, Any]:
        elapsed = max(self._clock() - self._start, 1e-9)
        rate = self.step / elapsed
        remaining = max(self.steps - self.step, 0)
        return {"epoch": self.epoch, "epochs": self.epochs, "step": self.step, "steps": self.steps,
                "samples": self.samples, "loss": loss, "elapsed_s": elapsed, "steps_per_s": rate,
                "samples_per_s": self.samples / elapsed, "eta_s": remaining / rate if rate > 0 else None,
                "progress": ((self.epoch - 1) + min(self.step / self.steps, 1.0)) / self.epochs}

    def update(self, samples: int, loss_sum: Any) -> None:
        """After a step of ``samples`` images; ``loss_sum`` (tensor or float) sums the epoch's
        per-sample losses so far."""
        self.step += 1
        self.samples += samples
        now = self._clock()
        if self._bar is not None:
            if self.step > self._bar.total:  # the estimate was short (several loader workers)
                self._bar.total = self.step
            self._bar.update(1)
        show_log = self._bar is None and self._due(self._last_log, self._log_every, now)
        show_cb = bool(self._callbacks) and self._due(self._last_cb, self._cb_every, now)
        show_postfix = self._bar is not None and self._due(self._last_postfix, 1.0, now)
        if not (show_log or show_cb or show_postfix):
            return
        info = self.info(float(loss_sum) / max(self.samples, 1))
        if show_postfix:
            self._last_postfix = now
            self._bar.set_postfix(loss=f"{info['loss']:.4f}", refresh=False)
        if show_log:
            self._last_log = now
            log.info("%s", describe(info))
        if show_cb:
            self._last_cb = now
            for cb in self._callbacks:
                cb(info)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    @staticmethod
    def _due(last: float | None, every: float, now: float) -> bool:
        # The first step always reports: a run shows it has started within one step.
        return last is None or now - last >= every


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
