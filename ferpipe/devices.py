"""The torch device a ``device`` setting names (``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``)."""

from __future__ import annotations

from ferpipe.errors import ConfigError


def resolve_device(device: str, setting: str = "device"):
    """``torch.device`` for ``device``; ``auto`` is CUDA when torch sees one, else the CPU.
    Asking for CUDA without one is a ConfigError naming ``setting`` (the param or option)."""
    import torch  # noqa: PLC0415  (importing this module stays free)

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{setting} is 'cuda' but torch sees no CUDA device; use 'auto' or 'cpu'")
    return torch.device(device)
