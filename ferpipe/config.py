"""params.yaml → typed, validated :class:`Params`.

This module is the only code that reads params.yaml. Each stage owns its section (a
:class:`~ferpipe._schema.StrictModel` in its own package); :class:`Params` composes them.
Overrides use the syntax of ``dvc exp run -S``: ``[params.yaml:]dotted.key=value``, where the
value is parsed as YAML (so ``-S train.lr=1e-4`` is a float and ``-S download.sha256=null`` is None).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import yaml
from pydantic import ValidationError

from ferpipe._schema import StrictModel
from ferpipe.align.params import AlignParams
from ferpipe.errors import ConfigError
from ferpipe.evaluate.params import EvaluateParams
from ferpipe.flows_params import FlowsParams
from ferpipe.occlusion.params import OcclusionParams
from ferpipe.priors.params import PriorNetsParams, PriorsParams
from ferpipe.sources.params import DownloadParams
from ferpipe.train.params import TrainParams

DEFAULT_PARAMS_FILE = "params.yaml"


class Params(StrictModel):
    """All of params.yaml. Sections are namespaced per stage."""

    download: DownloadParams = DownloadParams()
    align: AlignParams = AlignParams()
    prior_nets: PriorNetsParams = PriorNetsParams()
    priors: PriorsParams = PriorsParams()
    occlusion: OcclusionParams = OcclusionParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    flows: FlowsParams = FlowsParams()  # task runner of the Prefect flows; changes no output


def load_params(path: str | Path = DEFAULT_PARAMS_FILE, overrides: Iterable[str] = ()) -> Params:
    """Read ``path``, apply ``-S``-style overrides, validate. Raises :class:`ConfigError`."""
    path = Path(path)
    if path.exists():
        raw = _read_yaml(path) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: top level must be a mapping of stage sections, got {type(raw).__name__}")
    else:
        raise ConfigError(f"{path}: params file not found (run from the project root, or pass --params)")
    for item in overrides:
        key, value = parse_override(item, params_file=path.name)
        _set_dotted(raw, key, value)
    return params_from_dict(raw, source=str(path))


class _DuplicateKey(yaml.YAMLError):
    pass


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last one,
    silently: a second ``lr:`` further down would win unseen)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node.start_mark)
            except TypeError:
                continue  # an unhashable key: the base class reports it
            if first is not key_node.start_mark:
                raise _DuplicateKey(f"key {key!r} is given twice, on lines {first.line + 1} and "
                                    f"{key_node.start_mark.line + 1}; remove one (PyYAML would silently "
                                    f"keep the last)")
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: Path) -> Any:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the params file ({exc.strerror or exc})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line}); "
                          f"save the params file as UTF-8") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except _DuplicateKey as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None


def params_from_dict(raw: dict[str, Any], source: str = "params") -> Params:
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, source)) from None


def parse_override(item: str, params_file: str = DEFAULT_PARAMS_FILE) -> tuple[str, Any]:
    """``[file:]a.b.c=value`` → (``a.b.c``, parsed value)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected key=value, as in `dvc exp run -S train.lr=1e-4`")
    key, text = item.split("=", 1)
    if ":" in key:
        file, key = key.split(":", 1)
        if Path(file).name != params_file:
            raise ConfigError(f"override {item!r}: only {params_file} is a params file here, not {file!r}")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r}: empty key segment")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {item!r}: value is not valid YAML: {exc}") from None
    return key, value


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    node = tree
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            raise ConfigError(f"override {key}: {'.'.join(parts[: i + 1])} is a value, not a section")
        node = child
    node[parts[-1]] = value


def _explain(exc: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid parameters"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            allowed = _allowed_keys(err["loc"][:-1])
            lines.append(f"  {loc}: unknown key; allowed here: {', '.join(allowed)}")
            continue
        got = err.get("input")
        shown = "" if isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"  {loc}: {err['msg']}{shown}")
    return "\n".join(lines)


def _allowed_keys(loc: tuple) -> list[str]:
    model: type[StrictModel] | None = Params
    for part in loc:
        if model is None or not isinstance(part, str):
            return []
        field = model.model_fields.get(part)
        ann = field.annotation if field else None
        model = ann if isinstance(ann, type) and issubclass(ann, StrictModel) else None
    return sorted(model.model_fields) if model else []


def to_dict(params: Params) -> dict[str, Any]:
    """Plain, JSON-serialisable dict (recorded in reports and checkpoints)."""
    return params.model_dump(mode="json")
