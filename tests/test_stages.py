"""The stage registry (ferpipe/stages.py) against dvc.yaml, the CLI and the pipeline, and the cost
of validating params (no torch, no scikit-learn)."""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from pathlib import Path

import yaml

from ferpipe import stages
from ferpipe.stages import STAGES

ROOT = Path(__file__).resolve().parents[1]
_INTERP = re.compile(r"\$\{([^}]*)\}")


def _template(path: str) -> str:
    """dvc.yaml's ``${download.dataset}`` as the registry writes it, ``{dataset}``."""
    def sub(m: re.Match) -> str:
        if m.group(1).strip() != "download.dataset":
            raise AssertionError(f"dvc.yaml interpolates {m.group(0)}; the registry templates only the dataset")
        return "{dataset}"
    return _INTERP.sub(sub, path)


def _paths(entries) -> list[str]:
    # an entry is a path, or {path: options}
    return sorted(_template(e if isinstance(e, str) else next(iter(e))) for e in entries or [])


def dvc_disagreements(dvc: dict, registry=STAGES) -> list[str]:
    """Every way dvc.yaml's stages differ from the registry's, one line each."""
    problems = []
    dvc_stages = dvc.get("stages") or {}
    names = [s.name for s in registry]
    if list(dvc_stages) != names:
        problems.append(f"stages: dvc.yaml has {list(dvc_stages)}, the registry {names}")
    for stage in registry:
        d = dvc_stages.get(stage.name)
        if d is None:
            continue
        expected = {
            "cmd": stage.command,
            "params": sorted(stage.params),
            "deps": sorted((*stage.code, *stage.inputs)),
            "outs": sorted(stage.outputs),
            "metrics": sorted(stage.metrics),
            "plots": sorted(stage.plots),
        }
        found = {"cmd": d.get("cmd"), "params": sorted(d.get("params") or []),
                 **{k: _paths(d.get(k)) for k in ("deps", "outs", "metrics", "plots")}}
        problems += [f"{stage.name}.{k}: dvc.yaml {found[k]!r} != registry {v!r}"
                     for k, v in expected.items() if found[k] != v]
    return problems


def _dvc() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())


def test_dvc_yaml_agrees_with_the_registry():
    assert dvc_disagreements(_dvc()) == []


def test_a_disagreement_is_named():
    base = _dvc()
    edits = {
        "align.outs": lambda d: d["stages"]["align"]["outs"].pop(),
        "priors.deps": lambda d: d["stages"]["priors"]["deps"].append("ferpipe/labels.py"),
        "train.cmd": lambda d: d["stages"]["train"].update(cmd="python -m ferpipe.train"),
        "evaluate.params": lambda d: d["stages"]["evaluate"]["params"].remove("evaluate"),
        "download.outs": lambda d: d["stages"]["download"]["outs"].__setitem__(0, "data/raw/synthetic"),
        "prior-nets.metrics": lambda d: d["stages"]["prior-nets"].pop("metrics"),
        "stages": lambda d: d["stages"].pop("occlusion"),
    }
    for where, edit in edits.items():
        dvc = copy.deepcopy(base)
        edit(dvc)
        problems = dvc_disagreements(dvc)
        assert problems and all(p.startswith(where) for p in problems), (where, problems)
    extra = copy.deepcopy(base)
    extra["stages"]["export"] = {"cmd": "ferpipe export"}
    assert dvc_disagreements(extra)[0].startswith("stages:")


def test_cli_pipeline_and_flows_derive_from_the_registry():
    from ferpipe import cli, pipeline

    names = [s.name for s in STAGES]
    assert list(cli._STAGES) == [*names, "pipeline"]
    assert list(pipeline.STAGES) == names
    for stage in STAGES:
        flow_module, flow_name, runner = cli._STAGES[stage.name]
        assert f"{flow_module}:{flow_name}" == stage.flow and runner == stage.entry
        assert callable(stage.load().run)
    sub = cli.build_parser()._subparsers._group_actions[0].choices  # noqa: SLF001
    assert set(names) <= set(sub)
    assert stages.get("priors").paths("outputs", "rafdb") == ["data/priors/rafdb", "reports/priors/rafdb.json"]


def test_stage_flows_are_the_registered_flows():
    from flows._common import SHARDED_FLOWS
    from flows.pipeline import STAGE_FLOWS

    assert list(STAGE_FLOWS) == [s.name for s in STAGES]
    for stage in STAGES:
        assert STAGE_FLOWS[stage.name].name == stage.name  # the Prefect flow's own name
    assert SHARDED_FLOWS == {"align", "priors", "occlusion"}


def test_params_command_imports_neither_torch_nor_sklearn():
    code = (
        "import sys, io, contextlib\n"
        "import ferpipe.config\n"
        "from ferpipe.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        f"    rc = main(['params', '--params', {str(ROOT / 'params.yaml')!r}, '-S', 'train.lr=0.001'])\n"
        "assert rc == 0 and '\"lr\": 0.001' in out.getvalue()\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'sklearn', 'torchvision', 'timm'))\n"
        "print(' '.join(heavy[:10]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"ferpipe params imported: {out.stdout}"
