"""What every stage flow shares: params loading, artifact keys, markdown tables."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable, Sequence

from ferpipe.config import Params, load_params


def params_for(params_path: str | Path, overrides: Sequence[str] | None) -> Params:
    return load_params(params_path, list(overrides or []))


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    key = "-".join(parts).lower()
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", key)).strip("-")


def markdown_table(rows: Iterable[dict[str, Any]], columns: Sequence[str]) -> str:
    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def shard_stats_rows(stats: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One table row per shard from the shards' `_stats.json` contents (any sharded stage)."""
    rows = []
    for split, sts in stats.items():
        for st in sts:
            c = st["counts"]
            rows.append({"split": split, "shard": st["shard"], "items": c["items"], "written": c["written"],
                         "skipped": c["skipped"], "noted": c["noted"], "seconds": st.get("seconds"),
                         "items_per_second": st.get("items_per_second"), "bytes": st.get("bytes"),
                         "resumed": bool(st.get("resumed"))})
    return rows
