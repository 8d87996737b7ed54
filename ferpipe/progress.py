"""How a stage reports its progress: one small interface, whoever is watching.

A stage's ``run(params, layout, progress)`` calls ``progress.start(total, desc)`` when it knows
how much work there is (shards, epochs), ``advance(n)`` as it gets done, ``message(text)`` for a
line worth reading (what was rendered, an epoch's metrics) and ``close()`` at the end. The CLI
passes :class:`TqdmProgress` (a bar on a terminal, log lines otherwise), tests and library calls
:class:`NullProgress`, a Prefect flow one that writes to the run's log (``flows/_stage.py``):
the library never knows which.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol, runtime_checkable

log = logging.getLogger("ferpipe")


@runtime_checkable
class Progress(Protocol):
    def start(self, total: int, desc: str) -> None: ...

    def advance(self, n: int = 1, **postfix: Any) -> None: ...

    def message(self, text: str) -> None: ...

    def close(self) -> None: ...


class NullProgress:
    """Reports nothing (library calls, tests)."""

    def start(self, total: int, desc: str) -> None:
        pass

    def advance(self, n: int = 1, **postfix: Any) -> None:
        pass

    def message(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


class TqdmProgress:
    """A tqdm bar (on stderr; tqdm shows it only on a terminal it can draw on) and messages to the
    ``ferpipe`` logger. One bar at a time: ``start`` closes the previous one."""

    def __init__(self, unit: str = "it"):
        self.unit, self._bar = unit, None

    def start(self, total: int, desc: str) -> None:
        from tqdm.auto import tqdm  # noqa: PLC0415

        self.close()
        self._bar = tqdm(total=total, desc=desc, unit=self.unit)

    def advance(self, n: int = 1, **postfix: Any) -> None:
        if self._bar is not None:
            self._bar.update(n)
            if postfix:
                self._bar.set_postfix(**postfix)

    def message(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(text)
        else:
            log.info("%s", text)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def as_progress(progress: Progress | bool | None) -> Progress:
    """``progress`` itself, or for the older ``progress=True/False`` flags a tqdm bar / nothing."""
    if progress is True:
        return TqdmProgress(unit="shard")
    if progress is None or progress is False:
        return NullProgress()
    return progress
