"""Where each stage reads and writes, relative to a project root.

One place for the project's directory conventions, so dvc.yaml, the stages, the flows and
the tests agree. Every path is derived from the root and the dataset name.

Every path built from a param goes through :meth:`Layout.param_path` or the name-taking methods
here, which refuse anything that would land outside the project root (an absolute path
elsewhere, ``..``), naming the param: a run never writes outside its project.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ferpipe.errors import ConfigError


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


@dataclass(frozen=True)
class Layout:
    root: Path = Path(".")

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def downloads(self) -> Path:
        """Archives as fetched or rendered (kept between runs so a download resumes)."""
        return self.data / "downloads"

    def inside(self, key: str, path: str | os.PathLike) -> Path:
        """``path`` (relative paths are under the root) if it stays inside the root, else a
        :class:`ConfigError` naming ``key``. The check is lexical: ``..`` and absolute paths
        cannot leave the project, while a ``data/`` that is itself a symlink to a larger
        disk (as DVC setups often have) stays allowed."""
        root = os.path.abspath(self.root)
        full = os.path.normpath(os.path.join(root, os.fspath(path)))
        if not (_within(full, root) or _within(os.path.realpath(full), os.path.realpath(root))):
            # (the second form: an absolute path spelled through the root's real location)
            raise ConfigError(f"{key} = {os.fspath(path)!r} leads outside the project root {root} "
                              f"(to {full}); ferpipe only reads and writes inside the project. Give a path "
                              f"relative to the root, without '..'")
        return Path(full) if Path(path).is_absolute() else self.root / os.path.relpath(full, root)

    def param_path(self, key: str, value: str | os.PathLike | None, default: Path) -> Path:
        """A path param (``train.model_dir``, ``evaluate.checkpoint``, ...), or ``default``
        when it is unset; either way checked to stay inside the root."""
        return self.inside(key, default if value is None else value)

    def _named(self, what: str, name: str, path: Path) -> Path:
        if not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name:
            raise ConfigError(f"{what} {name!r} is not a plain name (no '/', '..' or empty names): it "
                              f"would put {path} outside the project's layout")
        return self.inside(what, path)

    def raw(self, dataset: str) -> Path:
        return self._named("dataset name", dataset, self.data / "raw" / dataset)

    def manifest(self, dataset: str) -> Path:
        return self._named("dataset name", dataset, self.data / "manifests" / f"{dataset}.parquet")

    def shards(self, stage: str, dataset: str) -> Path:
        self._named("stage name", stage, self.data / stage)
        return self._named("dataset name", dataset, self.data / stage / dataset)

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    def stage_report(self, stage: str, dataset: str) -> Path:
        self._named("stage name", stage, self.reports / stage)
        return self._named("dataset name", dataset, self.reports / stage / f"{dataset}.json")

    @property
    def models(self) -> Path:
        return self.root / "models"

    def ground_truth(self, dataset: str) -> Path:
        """A dataset's own ground truth (landmarks, parsing maps), when it ships one: kept inside
        the raw copy, a DVC out (the embedded synthetic set's is copied there by download)."""
        return self.raw(dataset) / "ferpipe-groundtruth.zip"
