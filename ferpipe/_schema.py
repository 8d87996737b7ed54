"""Base class for the typed, validated parameter sections of params.yaml.

Every stage declares its own section as a subclass of :class:`StrictModel` (in its own package),
and :mod:`ferpipe.config` composes them. Unknown keys and wrong types are errors; the error
messages are rewritten by :mod:`ferpipe.config` to name the full dotted key.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    # extra="forbid": a typo in params.yaml must be an error, never silently ignored.
    # strict-ish numbers: YAML "1e-4" is a string to PyYAML, so floats allow str coercion only
    # through pydantic's lax mode for numbers; bools are not accepted where ints are wanted.
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)
