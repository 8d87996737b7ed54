"""The one registry shape behind models, dataset readers, losses and presets."""

from __future__ import annotations

import pytest

from ferpipe._registry import Registry
from ferpipe.errors import ConfigError, DataError


def test_register_list_and_lookup():
    reg: Registry[int] = Registry("widget", DataError, "x.widget")
    assert reg.register("b", 2) == 2 and reg.register("a", 1) == 1
    one = object()
    reg.register("c", one)
    reg.register("c", one)  # the same entry again: harmless
    with pytest.raises(ValueError, match="widget 'c' is registered twice"):
        reg.register("c", object())
    assert reg.names() == ["a", "b", "c"] and reg.names("[ab]") == ["a", "b"]
    assert reg.lookup("a") == 1 and "a" in reg
    with pytest.raises(DataError, match=r"^x\.widget: unknown widget 'z'; known: a, b, c$"):
        reg.lookup("z")


def test_every_registry_has_the_shape():
    from ferpipe.losses.criterion import _CRITERIA, create_criterion
    from ferpipe.models._registry import _MODELS
    from ferpipe.sources.readers import READERS, get_reader
    from ferpipe.train.presets import _PRESETS, get_preset

    for reg in (_MODELS, READERS, _CRITERIA, _PRESETS):
        assert isinstance(reg, Registry) and reg.names()
    with pytest.raises(DataError, match="download.format: unknown dataset format 'raf'; known: affectnet"):
        get_reader("raf")
    with pytest.raises(ConfigError, match="train.loss: unknown loss 'nope'"):
        create_criterion("nope", 7)
    with pytest.raises(ConfigError, match="train.preset: unknown preset 'nope'"):
        get_preset("nope")
