"""The ``ferpipe`` command: one subcommand per stage, plus synth.

``ferpipe <stage> [-S key=value ...]`` is exactly what dvc.yaml's ``cmd`` runs. By default a
stage runs as its Prefect flow (visible in the Prefect UI when PREFECT_API_URL points at a
server; Prefect's ephemeral mode otherwise). ``--no-flow`` calls the library stage function
directly, without Prefect. This module is the one place in ``ferpipe/`` that reaches into
``flows/``, and only lazily, when a flow is asked for.
"""

from __future__ import annotations

import argparse
import gc
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
    # Prefect's ephemeral server gets 20 s to start by default: not enough on a loaded 2-core box.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


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
    p.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                   help="when another run holds the project's lock, wait this long for it (default: "
                        "stop at once, naming the holder)")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="show the Python traceback of an error")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ferpipe", description=__doc__.split("\n\n")[0])
    parser.add_argument("--debug", action="store_true", help="show the Python traceback of an error")
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

    weights = sub.add_parser("weights", help="list every weight file ferpipe can use, where it goes, who "
                                             "publishes it, and whether the file present is the right one")
    weights.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    weights.add_argument("--params", default="params.yaml")
    weights.add_argument("--root", default=".", help="project root holding models/ (default: .)")
    weights.add_argument("--json", action="store_true", help="print JSON instead of text")
    weights.add_argument("--no-sha256", action="store_true", help="skip hashing present files (faster)")
    _add_predict_export(sub)

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


# --- predict / export: using a trained model (ferpipe.predict) --------------------------------------


def _add_predict_export(sub: argparse._SubParsersAction) -> None:
    pr = sub.add_parser("predict", help="apply a trained model to photos, folders (recursive) and videos: "
                                        "one row per face")
    pr.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders, video files")
    pr.add_argument("--checkpoint", help="training checkpoint (default: models/train/<download.dataset>/best.pt "
                                         "from --params)")
    pr.add_argument("--model", help="an exported model.onnx (onnxruntime) or model.ts (TorchScript) with its "
                                    "model_card.json beside it, instead of a checkpoint")
    pr.add_argument("--out", help="table to write: .csv, .json or .parquet (default: print a summary only)")
    g = pr.add_mutually_exclusive_group()
    g.add_argument("--every", type=int, default=1, metavar="N", help="videos: every N-th frame (default 1)")
    g.add_argument("--fps", type=float, metavar="F", help="videos: F frames per second")
    pr.add_argument("--annotate", metavar="DIR", help="write annotated JPEGs (images) and mp4s (videos) here")
    pr.add_argument("--models-dir", help="where the prior nets are (default: the models/ dir of the checkpoint)")
    pr.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    pr.add_argument("--batch-size", type=int, default=16, help="frames per detector / model batch")
    pr.add_argument("--threads", type=int, default=0, help="torch / onnxruntime threads (0: default)")
    pr.add_argument("--overwrite", action="store_true", help="replace an existing --out / --annotate output")
    pr.add_argument("--no-progress", action="store_true")
    pr.add_argument("--flow", action="store_true", help="run as the Prefect `predict` flow (table + gallery "
                                                        "artifacts)")
    pr.add_argument("--params", default="params.yaml", help="params file, for the default --checkpoint")

    ex = sub.add_parser("export", help="export a trained model to ONNX or TorchScript, with a model card")
    ex.add_argument("--checkpoint", help="training checkpoint (default: models/train/<download.dataset>/best.pt)")
    ex.add_argument("--format", required=True, choices=["onnx", "torchscript"])
    ex.add_argument("--out", required=True, metavar="DIR", help="output directory")
    ex.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    ex.add_argument("--models-dir", help="where the prior nets are (default: the models/ dir of the checkpoint)")
    ex.add_argument("--overwrite", action="store_true")
    ex.add_argument("--params", default="params.yaml", help="params file, for the default --checkpoint")


def _default_checkpoint(args: argparse.Namespace) -> str:
    if args.checkpoint:
        return args.checkpoint
    from ferpipe.config import load_params

    if not Path(args.params).exists():
        raise FerpipeError("no --checkpoint given and no params.yaml here to find models/train/<dataset>/best.pt")
    return str(Path("models") / "train" / load_params(args.params).download.dataset / "best.pt")


def _run_predict(args: argparse.Namespace) -> int:
    kw = dict(paths=args.paths, checkpoint=None if args.model else _default_checkpoint(args), model=args.model,
              out=args.out, every=args.every, fps=args.fps, annotate=args.annotate, device=args.device,
              batch_size=args.batch_size, models_dir=args.models_dir, threads=args.threads,
              overwrite=args.overwrite, progress=not args.no_progress)
    if args.flow:
        report = importlib.import_module("flows.predict").predict_flow(**kw)
    else:
        from ferpipe.predict.run import run_predict

        report = run_predict(**kw)
    print(report.summary())
    if not args.out:
        for r in report.preview[:50]:
            where = "" if r["frame"] is None or r["kind"] == "image" else f" frame {r['frame']}"
            what = f"{r['top_class']} {r['top_prob']:.3f}" if r["status"] == "ok" else r["status"]
            print(f"{r['source']}{where} face {r['face'] if r['face'] is not None else '-'}: {what}")
    return 0


def _run_export(args: argparse.Namespace) -> int:
    from ferpipe.predict.export import export_model

    card = export_model(_default_checkpoint(args), args.format, args.out, opset=args.opset,
                        models_dir=args.models_dir, overwrite=args.overwrite)
    print(f"exported {card['model_name']} ({args.format}) -> {Path(args.out) / card['file']}; classes in order: "
          f"{', '.join(card['label_map'])}; max |logit - PyTorch| "
          f"{card['check']['max_abs_logit_diff_vs_pytorch']:.2e}")
    return 0


def _run_stage(args: argparse.Namespace) -> int:
    from ferpipe.config import load_params
    from ferpipe.lock import project_lock

    params = load_params(args.params, args.overrides)  # validate before anything starts
    flow_module, flow_name, entry = _STAGES[args.command]
    with project_lock(Path(args.root), args.command, wait_s=args.wait):  # one run per project at a time
        guard = {"overwrite": args.overwrite} if hasattr(args, "overwrite") else {}
        if args.no_flow:
            from ferpipe.layout import Layout
            from ferpipe.progress import TqdmProgress

            if guard:
                guard["declared"] = load_params(args.params)  # params.yaml without -S: the workspace's run
            _log_to_stderr()
            result = _resolve(entry).run(params, Layout(Path(args.root)), TqdmProgress(), **guard)
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


def _run_weights(args: argparse.Namespace) -> int:
    """Exit 1 when a present file is wrong or truncated (missing files are reported, not errors)."""
    from ferpipe.config import load_params
    from ferpipe.models.weights import check_weights, format_report

    params = load_params(args.params, args.overrides)
    rows = check_weights(params, Path(args.root), sha=not args.no_sha256)
    print(json.dumps([r.to_dict() for r in rows], indent=1) if args.json else format_report(rows))
    return int(any(r.status in ("wrong", "truncated") for r in rows))


def _run_serve(args: argparse.Namespace) -> int:
    import signal

    # A shell starts background jobs with SIGINT ignored, and Python keeps it so: Ctrl-C (or
    # `kill -INT`) would do nothing. Serving is interactive, so restore it; SIGTERM stops it too.
    def _stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _stop)
    try:
        return importlib.import_module("flows.deployments").serve_command(args.root)
    except Exception as exc:
        if type(exc).__module__.split(".")[0] not in ("httpx", "httpcore"):
            raise
        raise FerpipeError(f"cannot reach the Prefect API at {os.environ.get('PREFECT_API_URL', '?')} "
                           f"({type(exc).__name__}: {exc}); is `prefect server start` running there?") from None
    except KeyboardInterrupt:
        print("ferpipe serve: stopped (a run in progress, if any, is marked crashed by Prefect and can "
              "be started again)", file=sys.stderr)
        return 0


def _run_params(args: argparse.Namespace) -> int:
    from ferpipe.config import load_params, to_dict

    print(json.dumps(to_dict(load_params(args.params, args.overrides)), indent=2, sort_keys=True))
    return 0


# The subcommands that are not pipeline stages; every other one runs a stage.
_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "synth": _run_synth, "seeds": _run_seeds, "serve": _run_serve, "predict": _run_predict,
    "export": _run_export, "weights": _run_weights, "params": _run_params,
}


def _dispatch(args: argparse.Namespace) -> int:
    return _COMMANDS.get(args.command, _run_stage)(args)


def main(argv: Sequence[str] | None = None) -> int:
    _offline_defaults()
    args = build_parser().parse_args(argv)
    return _guarded(_dispatch, args)


# --- the one top-level error handler ---------------------------------------------------------------

_RESUME = ("Outputs are replaced only when complete, so nothing half-written was left in place: fix the "
           "cause and rerun the same command to resume (finished shards and checkpoints are kept).")


def _guarded(dispatch: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run ``dispatch(args)``; every error becomes one paragraph on stderr and exit code 2
    (1 for an unexpected one). ``--debug`` (or FERPIPE_DEBUG=1) adds the traceback."""
    debug = bool(getattr(args, "debug", False)) or os.environ.get("FERPIPE_DEBUG", "") not in ("", "0")
    try:
        return dispatch(args)
    except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - every kind is explained below
        if debug:
            import traceback

            traceback.print_exception(exc)
        message, code = _explain(exc, args)
        print(f"ferpipe {args.command}: error: {message}", file=sys.stderr)
        return code


def _explain(exc: BaseException, args: argparse.Namespace) -> tuple[str, int]:
    """(one-paragraph message, exit code) for an error that stopped a command."""
    if isinstance(exc, FerpipeError):
        message = str(exc)
        if args.command in _STAGES and type(exc).__name__ != "ProjectBusyError":
            message += (f"\n(ferpipe {args.command} stopped here; fix this and rerun the same command: outputs "
                        f"are replaced only when complete, and finished shards and checkpoints are kept.)")
        return message, 2
    if isinstance(exc, OSError):
        return f"{_describe_os_error(exc)}. {_RESUME}", 2
    if isinstance(exc, MemoryError):
        return f"out of memory. {_RESUME}", 2
    if isinstance(exc, KeyboardInterrupt):
        return f"interrupted. {_RESUME}", 130
    return (f"unexpected {type(exc).__name__}: {exc} (at {_innermost(exc)}). This is a ferpipe bug, not your "
            f"input: rerun with --debug for the traceback and report it. {_RESUME}"), 1


def _describe_os_error(exc: OSError) -> str:
    import errno

    what = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
            errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
            errno.EROFS: "the file system is read-only", errno.ENOENT: "no such file or directory",
            errno.EISDIR: "it is a directory", errno.ENOTDIR: "a path component is not a directory",
            errno.EIO: "an input/output error (a failing disk?)"}.get(exc.errno,
                                                                      exc.strerror or str(exc) or type(exc).__name__)
    files = " → ".join(f for f in (exc.filename, exc.filename2) if f)
    return f"{what}" + (f" on {files}" if files else f" ({exc})" if str(exc) and str(exc) != what else "")


def _innermost(exc: BaseException) -> str:
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}" if tb else "?"


def console_main() -> int:
    """The ``ferpipe`` command: :func:`main`, then an exit that skips the garbage collector's
    last passes. With torch and facenet-pytorch loaded, the interpreter's shutdown spent 1.1 of
    its 1.3 s collecting hundreds of thousands of objects that the process's end frees anyway;
    frozen, they are left out of those passes (module teardown, atexit handlers and the closing
    of files run as usual). Only for the process's own command: an in-process caller's objects
    stay collectable."""
    code = main()
    gc.freeze()
    return code


if __name__ == "__main__":
    sys.exit(console_main())
