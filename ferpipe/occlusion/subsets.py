"""Real occlusion and pose subsets of an ingested test split, from RAN's challenge lists
(kaiwang960112/Challenge-condition-FER-dataset). They are evaluation subsets: lists of manifest keys plus a subset name
and, for occlusion lists, the (undocumented) occlusion-type code of each image.

Formats (one entry per line; blank lines ignored):

=========================  ===========================================  ========================
format                     line                                         code
=========================  ===========================================  ========================
ran-rafdb-occlusion        ``test_XXXX_aligned <label0-6> <code 1-4>``  ``code_<N>``
ran-rafdb-pose             ``<label0-6>/test_XXXX_aligned.jpg``          none
ran-ferplus-occlusion      ``<label>_ferNNNNNNN.png 8 <code>``          ``code_<N>``
ran-ferplus-pose           ``<label0-7>/ferNNNNNNN.jpg``                 none
ran-affectnet-occlusion    ``val/<label0-7>/<hash>/``                    none
ran-affectnet-pose         ``<label0-7>/<hash>[/...].jpg``               none
=========================  ===========================================  ========================

Pose lists may come with a ``_label.txt`` whose first line is ``<count> <classes>`` (e.g.
"1247 7"), optionally followed by one label per entry; both are checked against the list.

A duplicate line is de-duplicated (first kept) and reported; an entry whose image is not in the
test split (absent, in another split, or unusable) is listed as a problem, never dropped
silently. A malformed line is a :class:`~ferpipe.errors.DataError` naming file and line.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from ferpipe.errors import DataError

FORMATS = ("ran-rafdb-occlusion", "ran-rafdb-pose", "ran-ferplus-occlusion", "ran-ferplus-pose",
           "ran-affectnet-occlusion", "ran-affectnet-pose")
_EXT = re.compile(r"\.(jpe?g|png|bmp)$", re.IGNORECASE)


@dataclass(frozen=True)
class SubsetEntry:
    stem: str            # image name without extension and without RAF-DB's "_aligned"
    label: str           # the list's label, as written
    code: str | None     # "code_<N>" for occlusion lists
    line: int


@dataclass
class SubsetList:
    name: str
    format: str
    path: str
    entries: list[SubsetEntry]
    duplicates: list[dict[str, Any]] = field(default_factory=list)
    problems: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class ResolvedSubset:
    name: str
    format: str
    keys: list[str]
    codes: dict[str, str | None]
    list_labels: dict[str, str]
    duplicates: list[dict[str, Any]]
    problems: list[dict[str, Any]]

    def summary_row(self) -> dict[str, Any]:
        codes: dict[str, int] = {}
        for c in self.codes.values():
            if c is not None:
                codes[c] = codes.get(c, 0) + 1
        return {"subset": self.name, "format": self.format, "keys": len(self.keys),
                "duplicates": len(self.duplicates), "problems": len(self.problems),
                "codes": dict(sorted(codes.items()))}


def normalize_stem(name: str) -> str:
    """``test_0001_aligned.jpg`` -> ``test_0001``; ``fer0032222.png`` -> ``fer0032222``."""
    stem = _EXT.sub("", name.strip().rstrip("/").split("/")[-1])
    return stem[: -len("_aligned")] if stem.endswith("_aligned") else stem


def _bad(path: str, line: int, text: str, expected: str) -> DataError:
    return DataError(f"{path}:{line}: {text!r} is not {expected}")


def _parse_line(fmt: str, text: str, path: str, n: int) -> SubsetEntry:
    parts = text.split()
    if fmt == "ran-rafdb-occlusion":
        if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit() or not parts[0].startswith("test_"):
            raise _bad(path, n, text, "'test_XXXX_aligned <label0-6> <code>'")
        if not 0 <= int(parts[1]) <= 6:
            raise _bad(path, n, text, "a line with a RAF-DB label 0-6")
        return SubsetEntry(normalize_stem(parts[0]), parts[1], f"code_{int(parts[2])}", n)
    if fmt == "ran-ferplus-occlusion":
        m = re.fullmatch(r"(\d+)_(fer\d+)(\.\w+)?", parts[0]) if parts else None
        if len(parts) != 3 or m is None or not parts[2].lstrip("-").isdigit():
            raise _bad(path, n, text, "'<label>_ferNNNNNNN.png 8 <code>'")
        return SubsetEntry(m.group(2), m.group(1), f"code_{int(parts[2])}", n)
    if fmt == "ran-affectnet-occlusion":
        segs = [s for s in text.strip().split("/") if s]
        if len(parts) != 1 or len(segs) != 3 or segs[0] != "val" or not segs[1].isdigit():
            raise _bad(path, n, text, "'val/<label0-7>/<hash>/'")
        return SubsetEntry(normalize_stem(segs[2]), segs[1], None, n)
    # pose lists: <label>/<name>[/...]
    segs = [s for s in text.strip().split("/") if s]
    if len(parts) != 1 or len(segs) < 2 or not segs[0].isdigit():
        raise _bad(path, n, text, "'<label>/<image name>'")
    return SubsetEntry(normalize_stem(segs[1]), segs[0], None, n)


def parse_subset_list(path: str | os.PathLike, fmt: str, name: str,
                      label_file: str | os.PathLike | None = None) -> SubsetList:
    """Parse one list file into entries (duplicates removed and reported)."""
    if fmt not in FORMATS:
        raise DataError(f"{path}: unknown subset list format {fmt!r}; known: {', '.join(FORMATS)}")
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except FileNotFoundError:
        raise DataError(f"subset list {path} not found (subset {name!r})") from None
    out = SubsetList(name=name, format=fmt, path=str(path), entries=[])
    first: dict[str, SubsetEntry] = {}
    for n, raw in enumerate(lines, 1):
        text = raw.strip()
        if not text:
            continue
        e = _parse_line(fmt, text, str(path), n)
        if e.stem in first:
            f = first[e.stem]
            out.duplicates.append({"subset": name, "stem": e.stem, "line": n, "first_line": f.line,
                                   "same": (f.label, f.code) == (e.label, e.code)})
            continue
        first[e.stem] = e
        out.entries.append(e)
    if label_file is not None:
        out.problems.extend(_check_label_file(Path(label_file), out, len(lines)))
    return out


def _check_label_file(path: Path, sub: SubsetList, n_lines: int) -> list[dict[str, Any]]:
    try:
        rows = [r.split() for r in path.read_text(encoding="utf-8-sig").splitlines() if r.strip()]
    except FileNotFoundError:
        raise DataError(f"label file {path} not found (subset {sub.name!r})") from None
    if not rows or len(rows[0]) != 2 or not all(t.isdigit() for t in rows[0]):
        raise DataError(f"{path}:1: expected a header '<count> <classes>' (e.g. '1247 7')")
    count, classes = int(rows[0][0]), int(rows[0][1])
    problems = []
    listed = len(sub.entries) + len(sub.duplicates)
    if count != listed:
        problems.append({"subset": sub.name, "stem": "", "problem": "count_mismatch",
                         "detail": f"{path.name} header says {count} entries, {sub.path} has {listed}"})
    labels = rows[1:]
    bad = [e for e in sub.entries if not 0 <= int(e.label) < classes]
    for e in bad:
        problems.append({"subset": sub.name, "stem": e.stem, "problem": "label_out_of_range",
                         "detail": f"line {e.line}: label {e.label} not below {classes}"})
    if labels and len(labels) == listed:
        for e in sub.entries:
            lab = labels[e.line - 1][0] if e.line - 1 < len(labels) else None
            if lab is not None and lab != e.label:
                problems.append({"subset": sub.name, "stem": e.stem, "problem": "label_file_mismatch",
                                 "detail": f"list says {e.label}, {path.name} says {lab}"})
    return problems


def resolve_subset(sub: SubsetList, frame, split: str = "test") -> ResolvedSubset:
    """Map entries onto manifest keys of ``split`` (a manifest DataFrame: key, split, path, status,
    label). Entries are matched by the normalised file stem of the manifest ``path`` or the key.
    RAF-DB lists' labels (0-6, RAF order = the canonical order) are checked against the manifest."""
    by_stem: dict[str, list[Mapping[str, Any]]] = {}
    for row in frame[["key", "split", "path", "status", "label"]].to_dict("records"):
        for s in {normalize_stem(str(row["path"])), str(row["key"])}:
            by_stem.setdefault(s, []).append(row)
    keys, codes, labels, problems = [], {}, {}, list(sub.problems)
    for e in sub.entries:
        rows = by_stem.get(e.stem, [])
        in_split = [r for r in rows if r["split"] == split]
        if not in_split:
            where = sorted({r["split"] for r in rows})
            problems.append({"subset": sub.name, "stem": e.stem, "problem": "missing",
                             "detail": f"line {e.line}: not in the {split} split"
                                       + (f" (found in {', '.join(where)})" if where else " (not in the manifest)")})
            continue
        row = in_split[0]
        if row["status"] != "ok":
            problems.append({"subset": sub.name, "stem": e.stem, "problem": "unusable",
                             "detail": f"line {e.line}: manifest status {row['status']!r}"})
            continue
        if sub.format.startswith("ran-rafdb") and int(row["label"]) != int(e.label):
            problems.append({"subset": sub.name, "stem": e.stem, "problem": "label_mismatch",
                             "detail": f"line {e.line}: list label {e.label}, manifest label {row['label']}"})
        key = str(row["key"])
        if key in codes:
            continue
        keys.append(key)
        codes[key] = e.code
        labels[key] = e.label
    return ResolvedSubset(sub.name, sub.format, sorted(keys), codes, labels, list(sub.duplicates), problems)


def build_subsets(specs: Sequence[Any], manifest_path: str | os.PathLike, raw_dir: str | os.PathLike,
                  out_dir: str | os.PathLike, split: str = "test") -> dict[str, Any]:
    """Parse and resolve every subset named in ``occlusion.subsets``; write
    ``<out_dir>/subsets.parquet`` (subset, key, code, list_label) and ``subsets.json`` (counts,
    duplicates, problems). Returns the json's content."""
    import pyarrow as pa  # noqa: PLC0415
    import pyarrow.parquet as pq  # noqa: PLC0415

    from ferpipe import shards  # noqa: PLC0415
    from ferpipe.manifest import read_manifest  # noqa: PLC0415

    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    frame = read_manifest(manifest_path).frame
    rows, summary, problems, duplicates = [], {}, [], []
    for spec in specs:
        path = Path(spec.path) if Path(spec.path).is_absolute() else raw_dir / spec.path
        lf = None if spec.label_file is None else (
            Path(spec.label_file) if Path(spec.label_file).is_absolute() else raw_dir / spec.label_file)
        res = resolve_subset(parse_subset_list(path, spec.format, spec.name, lf), frame, split)
        for k in res.keys:
            rows.append({"subset": res.name, "key": k, "code": res.codes[k], "list_label": res.list_labels[k]})
        summary[res.name] = res.summary_row()
        problems.extend(res.problems)
        duplicates.extend(res.duplicates)
    schema = pa.schema([("subset", pa.string()), ("key", pa.string()), ("code", pa.string()),
                        ("list_label", pa.string())])
    rows.sort(key=lambda r: (r["subset"], r["key"]))
    table = pa.Table.from_pylist(rows, schema=schema)
    out_dir.mkdir(parents=True, exist_ok=True)
    with shards.atomic_file(out_dir / "subsets.parquet") as f:
        pq.write_table(table, f, compression="zstd")
    doc = {"split": split, "subsets": summary, "duplicates": duplicates, "problems": problems}
    shards.write_json_atomic(out_dir / "subsets.json", doc)
    return doc


def read_subsets(out_dir: str | os.PathLike):
    """The subsets parquet as a DataFrame (empty when no subsets were built)."""
    import pandas as pd  # noqa: PLC0415

    p = Path(out_dir) / "subsets.parquet"
    if not p.is_file():
        return pd.DataFrame(columns=["subset", "key", "code", "list_label"])
    return pd.read_parquet(p)
