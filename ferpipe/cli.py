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

# stage name → (flow module, flow function, library runner)
_STAGES: dict[str, tuple[str, str, str]] = {
    "download": ("flows.download", "download_flow", "ferpipe.sources.download:run_download"),
    "align": ("flows.align", "align_flow", "ferpipe.align.stage:run_align"),
    "prior-nets": ("flows.prior_nets", "prior_nets_flow", "ferpipe.priors.training:run_prior_nets"),
    "priors": ("flows.priors", "priors_flow", "ferpipe.priors.stage:run_priors"),
    "occlusion": ("flows.occlusion", "occlusion_flow", "ferpipe.occlusion.stage:run_occlusion"),
    "train": ("flows.train", "train_flow", "ferpipe.train.stage:run_train"),
    "evaluate": ("flows.evaluate", "evaluate_flow", "ferpipe.evaluate.stage:run_evaluate"),
    "pipeline": ("flows.pipeline", "pipeline_flow", "ferpipe.pipeline:run_pipeline"),  # all of the above, in order
}


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

    # A run whose -S overrides change what train computes never replaces the workspace's model
    # and reports silently: refused unless --overwrite (dvc repro / dvc exp run need no flag).
    for name in ("train", "pipeline"):
        sub.choices[name].add_argument(
            "--overwrite", action="store_true",
            help="replace models/train/<dataset> and reports/train even though -S changes the training run "
                 "(without it such a run is refused; run it as `dvc exp run --temp -S ...` instead)")

    seeds = sub.add_parser("seeds", help="run N seeds of a configuration as DVC experiments (dvc exp run --temp) "
                                         "and tabulate mean ± sd and 95%% intervals; --compare: paired over seeds")
    seeds.add_argument("-n", type=int, help="number of seeds: 0..N-1")
    seeds.add_argument("--seeds", type=lambda t: [int(x) for x in t.split(",")], metavar="S,S,...",
                       help="the seeds, instead of -n")
    seeds.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="an override of the configuration (A), as `dvc exp run -S` (repeatable)")
    seeds.add_argument("--compare", action="append", default=[], metavar="KEY=VALUE",
                       help="configuration B = A's overrides plus these (repeatable): B is run over the same "
                            "seeds and compared with A, paired")
    seeds.add_argument("--name", default="", help="experiment name prefix of A (default: seeds-<hash of -S>)")
    seeds.add_argument("--compare-name", default="", help="experiment name prefix of B")
    seeds.add_argument("--seed-key", default="train.seed", help="the param the seed sets (default: train.seed)")
    seeds.add_argument("--metrics-file", default="reports/metrics.json",
                       help="the metrics file read from each experiment (default: reports/metrics.json)")
    seeds.add_argument("--metric", action="append", default=[], metavar="GLOB",
                       help="metrics to tabulate, e.g. 'clean.*' (default: every varying metric at most two "
                            "levels deep, e.g. clean.accuracy)")
    seeds.add_argument("--out", default="reports/seeds", help="where the .md and .json tables go")
    seeds.add_argument("--rerun", action="store_true",
                       help="run every experiment again (default: reuse those `dvc exp show` lists by name)")
    seeds.add_argument("--root", default=".", help="project root holding dvc.yaml (default: .)")
    return parser


def _run_stage(args: argparse.Namespace) -> int:
    from ferpipe.config import load_params

    params = load_params(args.params, args.overrides)  # validate before anything starts
    flow_module, flow_name, runner = _STAGES[args.command]
    guard = {"overwrite": args.overwrite} if hasattr(args, "overwrite") else {}
    if args.no_flow:
        if guard:
            guard["declared"] = load_params(args.params)  # params.yaml without -S: the workspace's run
        _log_to_stderr()
        result = _resolve(runner)(params, root=Path(args.root), **guard)
    else:
        flow = getattr(importlib.import_module(flow_module), flow_name)
        # flows.task_runner, the run's tags (stage, dataset, experiment)
        result = importlib.import_module("flows._common").run_stage_flow(
            args.command, flow, params, params_path=args.params, overrides=list(args.overrides), root=args.root,
            **guard)
    summary = getattr(result, "summary", None)
    print(summary() if callable(summary) else result)
    return 0


def _log_to_stderr() -> None:
    # Without Prefect nothing shows ferpipe's INFO lines (epoch lines, progress in logs).
    import logging

    logger = logging.getLogger("ferpipe")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def _run_seeds(args: argparse.Namespace) -> int:
    import shlex

    from ferpipe import seeds as S

    root = Path(args.root)
    seeds = S.seed_list(args.n, args.seeds)
    configs = [S.Config(list(args.overrides), args.name)]
    if args.compare:
        configs.append(S.Config(list(args.overrides) + list(args.compare), args.compare_name))
    S.run_seeds(root, configs, seeds, seed_key=args.seed_key, metrics_file=args.metrics_file, rerun=args.rerun)
    table = S.seed_table(configs, seeds, args.metric, seed_key=args.seed_key, metrics_file=args.metrics_file)
    stem = configs[0].name if len(configs) == 1 else f"{configs[0].name}-vs-{configs[1].name}"
    parts = ["ferpipe", "seeds", *(["--seeds", ",".join(map(str, args.seeds))] if args.seeds else ["-n", str(args.n)])]
    parts += [x for o in args.overrides for x in ("-S", o)] + [x for o in args.compare for x in ("--compare", o)]
    parts += [x for m in args.metric for x in ("--metric", m)]
    for flag, value, default in (("--name", args.name, ""), ("--compare-name", args.compare_name, ""),
                                 ("--seed-key", args.seed_key, "train.seed"),
                                 ("--metrics-file", args.metrics_file, "reports/metrics.json"),
                                 ("--out", args.out, "reports/seeds")):
        parts += [flag, value] if value != default else []
    command = " ".join(shlex.quote(p) for p in parts)
    md, js = S.write_tables(table, root / args.out, stem, command)
    print(md.read_text())
    print(f"ferpipe seeds: wrote {md} and {js}")
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
        if args.command == "seeds":
            return _run_seeds(args)
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
