"""The ``ferpipe`` command: one subcommand per stage, plus synth.

``ferpipe <stage> [-S key=value ...]`` is exactly what dvc.yaml's ``cmd`` runs. By default a
stage runs as its Prefect flow (visible in the Prefect UI when PREFECT_API_URL points at a
server; Prefect's ephemeral mode otherwise). ``--no-flow`` calls the library stage function
directly, without Prefect. This module is the one place in ``ferpipe/`` that reaches into
``flows/``, and only lazily, when a flow is asked for.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

from ferpipe.errors import FerpipeError
from ferpipe.stages import cli_table

# stage name → (flow module, flow function, library runner), derived from the one registry
_STAGES: dict[str, tuple[str, str, str]] = cli_table()


def _offline_defaults() -> None:
    # Offline machines: telemetry calls hang or spawn processes; never phone home.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")


def _resolve(spec: str) -> Callable:
    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)


def _add_stage(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(name, help=f"run the {name} stage")
    p.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a param, as `dvc exp run -S` (repeatable)")
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument("--root", default=".", help="project root holding data/ and reports/ (default: .)")
    p.add_argument("--no-flow", action="store_true", help="run the stage function without Prefect")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ferpipe", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in _STAGES:
        _add_stage(sub, name)

    synth = sub.add_parser("synth", help="render the embedded synthetic dataset (RAF-DB layout zip)")
    synth.add_argument("--out", required=True, help="output directory")
    synth.add_argument("--n", type=int, default=2100, help="total images, split evenly over 7 classes")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--size", type=int, default=256, help="image side in pixels")
    synth.add_argument("--workers", type=int, default=2)
    synth.add_argument("--difficulty", choices=["default", "hard"], default="default",
                       help="hard: weaker expressions, stronger pose, heavier noise (a held-out harder set)")
    synth.add_argument("--preview", help="also write a contact sheet PNG (one row per expression)")

    show = sub.add_parser("params", help="print the validated params (after -S overrides) as JSON")
    show.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    show.add_argument("--params", default="params.yaml")

    serve = sub.add_parser("serve", help="serve the train/train-orsanet and pipeline/repro deployments "
                                         "(needs PREFECT_API_URL; runs are serialised, one at a time)")
    serve.add_argument("--root", default=".", help="project root holding dvc.yaml (default: .)")
    return parser


def _run_stage(args: argparse.Namespace) -> int:
    from ferpipe.config import load_params

    params = load_params(args.params, args.overrides)  # validate before anything starts
    flow_module, flow_name, runner = _STAGES[args.command]
    if args.no_flow:
        result = _resolve(runner)(params, root=Path(args.root))
    else:
        flow = getattr(importlib.import_module(flow_module), flow_name)
        flow = importlib.import_module("flows._common").with_task_runner(flow, params)  # flows.task_runner
        result = flow(params_path=args.params, overrides=list(args.overrides), root=args.root)
    summary = getattr(result, "summary", None)
    print(summary() if callable(summary) else result)
    return 0


def _run_synth(args: argparse.Namespace) -> int:
    from ferpipe.sources.synthetic import synth_command

    synth_command(out=Path(args.out), n=args.n, seed=args.seed, size=args.size,
                  workers=args.workers, difficulty=args.difficulty,
                  preview=Path(args.preview) if args.preview else None)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    _offline_defaults()
    args = build_parser().parse_args(argv)
    try:
        if args.command == "synth":
            return _run_synth(args)
        if args.command == "serve":
            return importlib.import_module("flows.deployments").serve_command(args.root)
        if args.command == "params":
            from ferpipe.config import load_params, to_dict

            print(json.dumps(to_dict(load_params(args.params, args.overrides)), indent=2, sort_keys=True))
            return 0
        return _run_stage(args)
    except FerpipeError as exc:
        print(f"ferpipe {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
