import pytest

from ferpipe.errors import DataError
from ferpipe.labels import (
    BASIC7,
    BASIC8,
    NATIVE_MAPS,
    LabelSpace,
    canonical_lookup,
    get_label_space,
    get_native_map,
    to_canonical,
)

RAF_ORDER = ["surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral"]


def test_canonical_spaces_follow_raf_order():
    assert list(BASIC7.classes) == RAF_ORDER
    assert list(BASIC8.classes) == RAF_ORDER + ["contempt"]
    assert BASIC8.index("contempt") == 7
    assert BASIC7.index("contempt") == -1
    assert get_label_space(7) is BASIC7 and get_label_space("basic8") is BASIC8


def test_label_space_json_roundtrip_and_frozen():
    text = BASIC8.to_json()
    assert LabelSpace.from_json(text) == BASIC8
    assert LabelSpace.from_json(text.encode()) == BASIC8
    assert text == BASIC8.to_json()  # deterministic
    with pytest.raises(Exception):
        BASIC7.name = "x"  # type: ignore[misc]
    with pytest.raises(DataError, match="label-space JSON"):
        LabelSpace.from_json('{"name": "x"}')


def test_unknown_space_is_clear():
    with pytest.raises(DataError, match="basic7"):
        get_label_space("basic9")


def test_rafdb_is_one_based():
    assert [to_canonical(str(i), "rafdb", 7) for i in range(1, 8)] == list(range(7))
    with pytest.raises(DataError, match=r"'0'.*allowed values: 1, 2, 3, 4, 5, 6, 7"):
        to_canonical("0", "rafdb", 7)


@pytest.mark.parametrize(
    "native,cls",
    [("0", "neutral"), ("1", "happiness"), ("2", "sadness"), ("3", "surprise"), ("4", "fear"),
     ("5", "disgust"), ("6", "anger"), ("7", "contempt")],
)
def test_affectnet(native, cls):
    assert to_canonical(native, "affectnet", "basic8") == BASIC8.index(cls)
    assert to_canonical(int(native), "affectnet", "basic8") == BASIC8.index(cls)


def test_affectnet_contempt_outside_7_and_dropped_codes():
    assert to_canonical("7", "affectnet", 7) == -1
    m = get_native_map("affectnet")
    for code in ("8", "9", "10"):
        assert m.is_dropped(code)
        assert to_canonical(code, m, 8) == -1
    with pytest.raises(DataError, match="11"):
        to_canonical("11", m, 8)


def test_ferplus_columns():
    order = ["neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt"]
    assert [to_canonical(c, "ferplus", 8) for c in order] == [BASIC8.index(c) for c in order]
    assert get_native_map("ferplus").is_dropped("unknown")
    assert get_native_map("ferplus").is_dropped("NF")


def test_sfew_folders():
    folders = ["Angry", "Disgust", "Fear", "Happy", "Neutral", "Sad", "Surprise"]
    got = [BASIC7.classes[to_canonical(f, "sfew", 7)] for f in folders]
    assert got == ["anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise"]
    with pytest.raises(DataError, match="Contempt"):
        to_canonical("Contempt", "sfew", 8)


def test_occlufer_codes():
    codes = {"AN": "anger", "CO": "contempt", "DI": "disgust", "FE": "fear", "HA": "happiness",
             "NE": "neutral", "SA": "sadness", "SU": "surprise"}
    for code, cls in codes.items():
        assert to_canonical(code, "occlufer", 8) == BASIC8.index(cls)
    assert to_canonical("CO", "occlufer", 7) == -1


@pytest.mark.parametrize(
    "folder,cls",
    [("Angry", "anger"), ("anger", "anger"), ("HAPPY", "happiness"), ("happiness", "happiness"),
     ("sad", "sadness"), ("Surprised", "surprise"), ("surprise", "surprise"),
     ("disgusted", "disgust"), ("fearful", "fear"), ("Fear", "fear"), ("neutral", "neutral"),
     ("contempt", "contempt")],
)
def test_imagefolder_synonyms(folder, cls):
    assert to_canonical(folder, "imagefolder", 8) == BASIC8.index(cls)


def test_imagefolder_unknown_names_allowed_values():
    with pytest.raises(DataError) as err:
        to_canonical("bored", "imagefolder", 7)
    assert "bored" in str(err.value) and "angry" in str(err.value)


def test_unknown_map_and_lookup_table():
    with pytest.raises(DataError, match="rafdb"):
        get_native_map("nope")
    assert canonical_lookup("rafdb", 7) == {str(i + 1): i for i in range(7)}
    assert set(NATIVE_MAPS) >= {"rafdb", "affectnet", "ferplus", "sfew", "occlufer", "imagefolder"}


def test_compound11_and_new_maps():
    from ferpipe.labels import COMPOUND11, numeric_folder_map, space_kind

    assert get_label_space(11) is COMPOUND11 and len(COMPOUND11) == 11
    assert to_canonical("1", "rafdb_compound", "compound11") == 0
    assert to_canonical("11", "rafdb_compound", "compound11") == 10
    assert to_canonical("9", "rafdb_compound", "basic8") == -1  # never remapped into basic
    assert to_canonical("5", "rafdb", "compound11") == -1
    assert space_kind(COMPOUND11) == "compound" and space_kind(BASIC7) == "basic"
    assert get_native_map("rafdb_compound").kind == "compound"
    assert get_native_map("rafdb").kind == "basic"
    # ExpW 0 angry .. 6 neutral; CK+ 0 neutral, 2 contempt (basic8 only)
    assert [to_canonical(str(i), "expw", 7) for i in range(7)] == [5, 2, 1, 3, 4, 0, 6]
    assert to_canonical("2", "ckplus", 7) == -1 and to_canonical("2", "ckplus", 8) == 7
    m = numeric_folder_map("fer2013")
    assert m.knows("06") and m.canonical_name("06") == "neutral"
    with pytest.raises(DataError, match="class_order 'raf' is not a numbered dataset"):
        numeric_folder_map("raf")
    with pytest.raises(DataError, match="two folder numbers name one class"):
        numeric_folder_map(["happy", "happiness"])
