from pathlib import Path

import pytest

from ferpipe.config import Params, load_params, parse_override
from ferpipe.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_params_validate_and_equal_the_defaults():
    params = load_params(ROOT / "params.yaml")
    assert params.download == Params().download


def test_override_parses_yaml_values(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("download:\n  val_fraction: 0.1\n")
    params = load_params(p, ["download.val_fraction=0.25", "params.yaml:download.synthetic.size=128",
                             "download.sha256=null"])
    assert params.download.val_fraction == 0.25
    assert params.download.synthetic.size == 128
    assert params.download.sha256 is None


@pytest.mark.parametrize(
    "override, needle",
    [
        ("download.val_fraction=1.5", "download.val_fraction"),
        ("download.valfraction=0.2", "download.valfraction: unknown key; allowed here:"),
        ("download.synthetic.size=big", "download.synthetic.size"),
        ("download.format=coco", "download.format"),
        ("trian.lr=0.1", "trian: unknown key"),
        ("download.source=ftp://x/y.zip", "download.source"),
        ("download.sha256=abc", "download.sha256"),
    ],
)
def test_bad_values_name_the_key(tmp_path, override, needle):
    p = tmp_path / "params.yaml"
    p.write_text("{}\n")
    with pytest.raises(ConfigError) as err:
        load_params(p, [override])
    assert needle in str(err.value)


def test_unknown_key_lists_allowed_keys(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("download:\n  synthetic:\n    n_per_klass: 3\n")
    with pytest.raises(ConfigError) as err:
        load_params(p)
    assert "download.synthetic.n_per_klass" in str(err.value)
    assert "n_per_class" in str(err.value)


def test_override_syntax_errors():
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("download.seed")
    with pytest.raises(ConfigError, match="only params.yaml"):
        parse_override("other.yaml:download.seed=1")


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("download: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)
