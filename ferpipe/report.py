"""What a stage's report shows beyond its JSON file: artifacts as plain data.

Every stage report has ``summary()`` (the console line), ``to_dict()`` (the report file, less its
timings: :mod:`ferpipe.timings`) and ``artifacts()``: a list of :class:`Artifact`, tables and
markdown that a Prefect flow publishes as they are (``flows/_stage.py``) and anyone else can
print or save. Built here, in the library, so the flow and ``--no-flow`` agree on them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Literal, Mapping, Sequence


@dataclass(frozen=True)
class Artifact:
    kind: Literal["table", "markdown"]
    key: str                                     # lowercase letters, digits, dashes (Prefect's rule)
    content: list[dict[str, Any]] | str          # table rows, or markdown text
    description: str = ""


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    key = "-".join(parts).lower()
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", key)).strip("-")


def table(key_parts: Sequence[str], rows: list[dict[str, Any]], description: str) -> Artifact:
    return Artifact("table", artifact_key(*key_parts), rows, description)


def markdown(key_parts: Sequence[str], text: str, description: str) -> Artifact:
    return Artifact("markdown", artifact_key(*key_parts), text, description)


def markdown_table(rows: Iterable[Mapping[str, Any]], columns: Sequence[str],
                   headers: Sequence[str] | None = None) -> str:
    """A markdown table of ``rows``' ``columns`` (``headers``: other column titles); None is blank."""
    def cell(value: Any) -> str:
        return "" if value is None else str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(headers or columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)
