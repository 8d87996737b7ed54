"""Seeds as an axis: N seeds of a configuration as DVC experiments, summarised; two configurations compared.

``ferpipe seeds -n 3 [-S key=value ...]`` runs ``dvc exp run --temp -S train.seed=<s> ...`` once per
seed (the workspace stays as it is; ``dvc exp show`` lists every run), then reads each
experiment's metrics file (``reports/metrics.json``) and writes a table of mean ± sd and the 95%
interval of the mean per metric. ``--compare key=value ...`` adds a second configuration run
over the same seeds and a paired comparison: per seed the difference B − A, its mean, the 95%
interval of that mean and a paired t-test (two-sided). The difference is called larger than the
seed spread when that interval excludes 0 (p < 0.05).

Intervals are Student t intervals over seeds, mean ± t(0.975, n−1)·sd/√n (sd with n−1): they
describe how much the metric moves between seeds of this code on this machine, not between
machines or datasets.

Experiment names are ``<name>-s<seed>``, where ``<name>`` defaults to ``seeds-`` and a hash of
the configuration's overrides: an experiment of that name already listed by ``dvc exp show`` for
the current commit is reused (``--rerun`` runs it again), so adding seeds or a comparison reruns
only what is missing. Uncommitted changes are part of an experiment but not of its name: after
changing code, commit it or pass ``--rerun``.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ferpipe.config import load_params, parse_override
from ferpipe.errors import ConfigError, FerpipeError
from ferpipe.experiments import flatten_numbers, run_experiment, show_experiments

DEFAULT_METRICS_FILE = "reports/metrics.json"
SEED_KEY = "train.seed"
METHOD = ("95% interval of the mean over seeds: Student t, mean ± t(0.975, n−1)·sd/√n (sd with n−1). "
          "Comparison: paired over the same seeds, d = B − A per seed, 95% t interval of mean(d) and "
          "two-sided paired t-test (scipy.stats.ttest_rel); 'beyond seed spread' when the interval excludes 0.")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass
class Config:
    """One configuration: its ``-S`` overrides and the experiment name prefix."""

    overrides: list[str]
    name: str = ""
    experiments: dict[int, str] = field(default_factory=dict)   # seed -> experiment name
    metrics: dict[int, dict[str, float]] = field(default_factory=dict)  # seed -> flattened metrics

    def __post_init__(self):
        if not self.name:
            digest = hashlib.sha256(json.dumps(sorted(self.overrides)).encode()).hexdigest()[:8]
            self.name = f"seeds-{digest}"
        if not _NAME.match(self.name):
            raise ConfigError(f"experiment name {self.name!r}: use letters, digits, '.', '_' and '-'")

    def experiment(self, seed: int) -> str:
        return f"{self.name}-s{seed}"


# --- statistics ---------------------------------------------------------------------------------------


def summarize(values: Sequence[float]) -> dict[str, Any]:
    """n, mean, sd (n−1), the 95% t interval of the mean, min, max."""
    from scipy import stats

    n = len(values)
    mean = math.fsum(values) / n if n else math.nan
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else math.nan
    half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n) if n > 1 else math.nan
    return {"n": n, "mean": mean, "sd": sd, "ci95": [mean - half, mean + half], "min": min(values, default=math.nan),
            "max": max(values, default=math.nan)}


def paired(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """Paired comparison of ``b`` against ``a`` (same seeds, same order): d = b − a."""
    from scipy import stats

    d = [y - x for x, y in zip(a, b)]
    out = summarize(d)
    if len(d) > 1 and out["sd"] > 0:
        out["t"], out["p"] = (float(v) for v in stats.ttest_rel(b, a))
    else:  # identical differences: no spread to test against
        out["t"], out["p"] = math.nan, math.nan
    lo, hi = out["ci95"]
    if len(d) < 2 or math.isnan(lo):
        out["verdict"] = "needs at least 2 seeds"
    elif lo > 0 or hi < 0:
        out["verdict"] = f"beyond seed spread ({'B higher' if lo > 0 else 'A higher'})"
    else:
        out["verdict"] = "within seed spread"
    return out


# --- running ------------------------------------------------------------------------------------------


def seed_list(n: int | None, seeds: Sequence[int] | None) -> list[int]:
    if seeds:
        if len(set(seeds)) != len(seeds):
            raise ConfigError(f"--seeds: repeated seed in {list(seeds)}")
        return list(seeds)
    if not n or n < 1:
        raise ConfigError("give -n N (seeds 0..N-1) or --seeds")
    return list(range(n))


def _check_overrides(root: Path, overrides: Sequence[str], seed_key: str) -> None:
    for item in overrides:
        if parse_override(item)[0] == seed_key:
            raise ConfigError(f"{item!r}: {seed_key} is the seed axis; choose seeds with -n or --seeds")
    load_params(root / "params.yaml", list(overrides) + [f"{seed_key}=0"])  # a wrong key fails before any run


def run_seeds(root: str | Path, configs: Sequence[Config], seeds: Sequence[int], *, seed_key: str = SEED_KEY,
              metrics_file: str = DEFAULT_METRICS_FILE, rerun: bool = False,
              on_line: Callable[[str], None] = print) -> None:
    """Run (or reuse) one experiment per config and seed, then read each one's metrics."""
    root = Path(root)
    for cfg in configs:
        _check_overrides(root, cfg.overrides, seed_key)
    existing = {} if rerun else show_experiments(root)
    for seed in seeds:
        for cfg in configs:
            name = cfg.experiment(seed)
            cfg.experiments[seed] = name
            if name in existing and not existing[name].get("error") and existing[name]["metrics"].get(metrics_file):
                on_line(f"ferpipe seeds: reusing experiment {name} (listed by `dvc exp show`; --rerun runs it again)")
                continue
            on_line(f"ferpipe seeds: running experiment {name} ({seed_key}={seed})")
            overrides = [*cfg.overrides, f"{seed_key}={seed}"]
            run_experiment(root, overrides, name, on_line=on_line, force=rerun or name in existing)
    shown = show_experiments(root)
    ran = {name for cfg in configs for name in cfg.experiments.values()}
    if ran - set(shown):  # a commit made while they ran moved HEAD off their baseline
        shown = {**show_experiments(root, all_commits=True), **shown}
    for cfg in configs:
        for seed, name in cfg.experiments.items():
            exp = shown.get(name)
            if exp is None or metrics_file not in exp["metrics"]:
                raise FerpipeError(f"experiment {name}: no {metrics_file} in `dvc exp show` (is it a metrics file "
                                   f"in dvc.yaml?)")
            cfg.metrics[seed] = flatten_numbers(exp["metrics"][metrics_file])


def select_metrics(configs: Sequence[Config], patterns: Sequence[str] = ()) -> tuple[list[str], list[str]]:
    """The metrics to tabulate: those matching ``patterns`` (globs), else every metric at most two
    levels deep (``clean.accuracy``) that varies; returns (chosen, constant ones left out)."""
    keys = sorted(set().union(*(m.keys() for c in configs for m in c.metrics.values())))
    common = [k for k in keys if all(k in m for c in configs for m in c.metrics.values())]
    if patterns:
        return [k for k in common if any(fnmatch.fnmatchcase(k, p) for p in patterns)], []
    shallow = [k for k in common if k.count(".") <= 1]
    constant = [k for k in shallow if len({m[k] for c in configs for m in c.metrics.values()}) == 1]
    return [k for k in shallow if k not in constant], constant


def seed_table(configs: Sequence[Config], seeds: Sequence[int], metric_patterns: Sequence[str] = (),
               seed_key: str = SEED_KEY, metrics_file: str = DEFAULT_METRICS_FILE) -> dict[str, Any]:
    """The summary of every config (and the paired comparison of the second against the first)."""
    metrics, constant = select_metrics(configs, metric_patterns)
    if not metrics:
        raise FerpipeError(f"no metric to tabulate in {metrics_file}"
                           + (f" matching {list(metric_patterns)}" if metric_patterns else " that varies"))
    out: dict[str, Any] = {"method": METHOD, "metrics_file": metrics_file, "seed_key": seed_key, "seeds": list(seeds),
                           "configs": [], "constant_metrics_omitted": constant}
    for cfg in configs:
        out["configs"].append({
            "name": cfg.name, "overrides": cfg.overrides, "experiments": [cfg.experiments[s] for s in seeds],
            "metrics": {k: {**summarize([cfg.metrics[s][k] for s in seeds]),
                            "values": [cfg.metrics[s][k] for s in seeds]} for k in metrics}})
    if len(configs) == 2:
        a, b = configs
        out["comparison"] = {"a": a.name, "b": b.name, "metrics": {
            k: paired([a.metrics[s][k] for s in seeds], [b.metrics[s][k] for s in seeds]) for k in metrics}}
    return out


# --- tables ------------------------------------------------------------------------------------------------


def _f(v: float, digits: int = 4) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _overrides_text(overrides: Sequence[str]) -> str:
    return " ".join(f"`-S {o}`" for o in overrides) or "params.yaml as it is"


def to_markdown(table: dict[str, Any], command: str = "") -> str:
    seeds = table["seeds"]
    lines = []
    for cfg in table["configs"]:
        lines += [f"### {cfg['name']}: {_overrides_text(cfg['overrides'])}", "",
                  f"{len(seeds)} seeds ({table['seed_key']} = {', '.join(map(str, seeds))}), experiments "
                  f"{', '.join(f'`{e}`' for e in cfg['experiments'])}; metrics from `{table['metrics_file']}`.", "",
                  "| metric | mean ± sd | 95% interval | min | max | " + " | ".join(f"seed {s}" for s in seeds) + " |",
                  "|---|---|---|---|---|" + "---|" * len(seeds)]
        for k, m in cfg["metrics"].items():
            lines.append(f"| {k} | {_f(m['mean'])} ± {_f(m['sd'])} | [{_f(m['ci95'][0])}, {_f(m['ci95'][1])}] | "
                         f"{_f(m['min'])} | {_f(m['max'])} | " + " | ".join(_f(v) for v in m["values"]) + " |")
        lines.append("")
    comp = table.get("comparison")
    if comp:
        lines += [f"### {comp['b']} (B) vs {comp['a']} (A), paired over the same seeds", "",
                  "| metric | A mean ± sd | B mean ± sd | B − A mean ± sd | 95% interval of B − A | t | p | verdict |",
                  "|---|---|---|---|---|---|---|---|"]
        a, b = table["configs"]
        for k, c in comp["metrics"].items():
            ma, mb = a["metrics"][k], b["metrics"][k]
            lines.append(f"| {k} | {_f(ma['mean'])} ± {_f(ma['sd'])} | {_f(mb['mean'])} ± {_f(mb['sd'])} | "
                         f"{_f(c['mean'])} ± {_f(c['sd'])} | [{_f(c['ci95'][0])}, {_f(c['ci95'][1])}] | "
                         f"{_f(c['t'], 2)} | {_f(c['p'], 3)} | {c['verdict']} |")
        lines.append("")
    if table.get("constant_metrics_omitted"):
        lines += [f"Constant over every run (left out): {', '.join(table['constant_metrics_omitted'])}.", ""]
    lines.append(table["method"])
    if command:
        lines += ["", f"Regenerate: `{command}`"]
    return "\n".join(lines) + "\n"


def _no_nan(v: Any) -> Any:
    # NaN (one seed: no sd) is not JSON: null instead.
    if isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, dict):
        return {k: _no_nan(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_no_nan(x) for x in v]
    return v


def write_tables(table: dict[str, Any], out_dir: str | Path, stem: str, command: str = "") -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    md, js = out_dir / f"{stem}.md", out_dir / f"{stem}.json"
    md.write_text(to_markdown(table, command))
    js.write_text(json.dumps(_no_nan({**table, "command": command}), indent=1) + "\n")
    return md, js
