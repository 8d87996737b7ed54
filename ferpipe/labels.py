"""Canonical label spaces, and every supported dataset's native labels mapped onto them.

The canonical order is RAF-DB's, 0-based: ``surprise, fear, disgust, happiness, sadness, anger,
neutral``; the 8-class space appends ``contempt`` (index 7). RAF-DB's compound expressions have their own
space, ``compound11`` (RAF-DB's 1..11 order, 0-based); basic and compound labels never map into
each other's spaces. Every reader reports labels the way
its dataset writes them (``native_label``: RAF-DB ``"5"``, AffectNet ``"7"``, SFEW ``"Angry"``,
Occlu-FER ``"AN"`` ...) and names the :class:`NativeMap` that interprets them;
:func:`to_canonical` turns a native label into the index in a chosen :class:`LabelSpace`.

Index ``-1`` means "a real expression, but outside this space" (contempt in the 7-class space)
and also "not an expression at all" for the few native labels datasets define for that
(AffectNet 8-10, FERPlus unknown/NF); readers drop the latter and list them as problems, so they
never reach a manifest. A native label the map does not know is a :class:`DataError`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

from ferpipe.errors import DataError

__all__ = [
    "BASIC7",
    "BASIC8",
    "COMPOUND11",
    "LABEL_SPACES",
    "NATIVE_MAPS",
    "NUMERIC_MAPS",
    "LabelSpace",
    "NativeMap",
    "canonical_lookup",
    "get_label_space",
    "get_native_map",
    "label_space_record",
    "numeric_folder_map",
    "space_kind",
    "to_canonical",
]

_CLASSES7 = ("surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral")


@dataclass(frozen=True)
class LabelSpace:
    """A named, ordered set of class names; a class's index is its canonical label."""

    name: str
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", tuple(self.classes))
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"label space {self.name!r} repeats a class: {self.classes}")

    def __len__(self) -> int:
        return len(self.classes)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def index(self, class_name: str) -> int:
        """Index of ``class_name`` in this space, or -1 when the space does not hold it."""
        try:
            return self.classes.index(class_name)
        except ValueError:
            return -1

    def to_json(self) -> str:
        # sort_keys: the manifest metadata must be byte-identical across runs.
        return json.dumps({"name": self.name, "classes": list(self.classes)}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> "LabelSpace":
        try:
            obj = json.loads(text)
            return cls(name=str(obj["name"]), classes=tuple(str(c) for c in obj["classes"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError(
                f"invalid label-space JSON {text!r}: expected "
                f'{{"name": str, "classes": [str, ...]}} ({exc})'
            ) from None


BASIC7 = LabelSpace("basic7", _CLASSES7)
BASIC8 = LabelSpace("basic8", _CLASSES7 + ("contempt",))
# RAF-DB compound, in its own 1..11 order (0-based here). Compound classes are not basic ones:
# no map sends a compound label into basic7/basic8 or a basic label into compound11.
COMPOUND11 = LabelSpace("compound11", (
    "happily_surprised", "happily_disgusted", "sadly_fearful", "sadly_angry", "sadly_surprised",
    "sadly_disgusted", "fearfully_angry", "fearfully_surprised", "angrily_surprised",
    "angrily_disgusted", "disgustedly_surprised"))
LABEL_SPACES: Mapping[str, LabelSpace] = MappingProxyType(
    {"basic7": BASIC7, "basic8": BASIC8, "compound11": COMPOUND11})
_KNOWN_CLASSES = frozenset(BASIC8.classes) | frozenset(COMPOUND11.classes)


def get_label_space(name: str | int) -> LabelSpace:
    """``"basic7"``/``"basic8"``/``"compound11"``, or the class count 7/8/11."""
    if isinstance(name, int) and not isinstance(name, bool):
        name = {7: "basic7", 8: "basic8", 11: "compound11"}.get(name, str(name))
    try:
        return LABEL_SPACES[name]
    except KeyError:
        raise DataError(
            f"unknown label space {name!r}; choose one of {sorted(LABEL_SPACES)} (or 7 / 8 / 11)"
        ) from None


def label_space_record(space: object) -> dict | None:
    """``{"name", "classes"}`` of a label space as shards and checkpoints record it: a dict with
    ``classes``, its JSON text, or a space's name (``"basic7"``); None when it names no classes.
    An unknown name is a :class:`DataError`."""
    if isinstance(space, Mapping) and "classes" in space:
        return {"name": space.get("name", ""), "classes": list(space["classes"])}
    if not isinstance(space, str):
        return None
    if space.lstrip().startswith("{"):
        try:
            return label_space_record(json.loads(space))
        except ValueError:
            pass  # not JSON after all: get_label_space names the choices
    ls = get_label_space(space)
    return {"name": ls.name, "classes": list(ls.classes)}


def space_kind(space: LabelSpace) -> str:
    """"compound" or "basic": the family a label space's classes come from."""
    return "compound" if set(space.classes) <= set(COMPOUND11.classes) else "basic"


@dataclass(frozen=True)
class NativeMap:
    """How one dataset writes its labels.

    ``mapping`` goes from the native label (as the dataset writes it) to a canonical class name,
    or to ``None`` for native labels that are not expressions and are dropped.
    ``case_insensitive`` maps (folder names) compare labels lower-cased.
    """

    name: str
    mapping: Mapping[str, str | None]
    case_insensitive: bool = False
    description: str = ""
    # Native labels written as numbers compare by value ("06" == "6"): numeric class folders.
    numeric: bool = False
    _lookup: Mapping[str, str | None] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "mapping", MappingProxyType(dict(self.mapping)))
        lookup = {self._norm(k): v for k, v in self.mapping.items()}
        object.__setattr__(self, "_lookup", MappingProxyType(lookup))
        for v in self.mapping.values():
            if v is not None and v not in _KNOWN_CLASSES:
                raise ValueError(f"native map {self.name!r} maps onto unknown class {v!r}")

    def _norm(self, label: object) -> str:
        s = str(label).strip()
        if self.numeric:
            try:
                return str(int(s))
            except ValueError:
                return s
        return s.lower() if self.case_insensitive else s

    @property
    def kind(self) -> str:
        """"compound" when every class it names is a compound one, else "basic"."""
        named = {v for v in self.mapping.values() if v is not None}
        return "compound" if named and named <= set(COMPOUND11.classes) else "basic"

    @property
    def allowed(self) -> tuple[str, ...]:
        """The native labels this map accepts, as the dataset writes them."""
        return tuple(self.mapping)

    def knows(self, native_label: object) -> bool:
        return self._norm(native_label) in self._lookup

    def is_dropped(self, native_label: object) -> bool:
        """True for known labels that are not an expression (AffectNet 8-10, FERPlus unknown/NF)."""
        return self.canonical_name(native_label) is None

    def canonical_name(self, native_label: object) -> str | None:
        """The canonical class name, ``None`` for dropped labels; unknown labels raise."""
        key = self._norm(native_label)
        if key not in self._lookup:
            raise DataError(
                f"unknown {self.name} label {native_label!r}; allowed values: "
                f"{', '.join(self.allowed)}"
                + (" (case-insensitive)" if self.case_insensitive else "")
            )
        return self._lookup[key]


def _ordered(native: tuple[str, ...], classes: tuple[str | None, ...]) -> dict[str, str | None]:
    assert len(native) == len(classes)
    return dict(zip(native, classes))


_RAFDB = NativeMap(
    "rafdb",
    _ordered(("1", "2", "3", "4", "5", "6", "7"), _CLASSES7),
    description="RAF-DB basic, 1-based: 1 Surprise .. 7 Neutral (list_patition_label.txt)",
)

_RAFDB_COMPOUND = NativeMap(
    "rafdb_compound",
    _ordered(tuple(str(i) for i in range(1, 12)), COMPOUND11.classes),
    description="RAF-DB compound, 1-based: 1 Happily Surprised .. 11 Disgustedly Surprised",
)

_AFFECTNET = NativeMap(
    "affectnet",
    _ordered(
        tuple(str(i) for i in range(11)),
        ("neutral", "happiness", "sadness", "surprise", "fear", "disgust", "anger", "contempt",
         None, None, None),
    ),
    description="AffectNet expression codes 0-10; 8 None, 9 Uncertain, 10 Non-face are dropped",
)

_FERPLUS = NativeMap(
    "ferplus",
    {
        "neutral": "neutral", "happiness": "happiness", "surprise": "surprise",
        "sadness": "sadness", "anger": "anger", "disgust": "disgust", "fear": "fear",
        "contempt": "contempt", "unknown": None, "NF": None,
    },
    case_insensitive=True,
    description="FERPlus vote columns (neutral .. contempt); unknown and NF (not a face) dropped",
)

# FER2013's 0..6 order, which ExpW reuses.
_FER2013_ORDER = _ordered(
    tuple(str(i) for i in range(7)),
    ("anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral"),
)

_FER2013 = NativeMap(
    "fer2013",
    _FER2013_ORDER,
    description="original FER2013 'emotion' column: 0 Angry .. 6 Neutral",
)

_EXPW = NativeMap(
    "expw",
    _FER2013_ORDER,
    description="ExpW label.lst: 0 angry, 1 disgust, 2 fear, 3 happy, 4 sad, 5 surprise, 6 neutral",
)

_CKPLUS = NativeMap(
    "ckplus",
    _ordered(
        tuple(str(i) for i in range(8)),
        ("neutral", "anger", "contempt", "disgust", "fear", "happiness", "sadness", "surprise"),
    ),
    description="CK+ Emotion codes: 0 neutral, 1 anger, 2 contempt, 3 disgust, 4 fear, 5 happy, "
                "6 sadness, 7 surprise",
)

_SFEW = NativeMap(
    "sfew",
    {
        "Angry": "anger", "Disgust": "disgust", "Fear": "fear", "Happy": "happiness",
        "Neutral": "neutral", "Sad": "sadness", "Surprise": "surprise",
    },
    case_insensitive=True,
    description="SFEW 2.0 class folder names",
)

_OCCLUFER = NativeMap(
    "occlufer",
    {
        "AN": "anger", "CO": "contempt", "DI": "disgust", "FE": "fear", "HA": "happiness",
        "NE": "neutral", "SA": "sadness", "SU": "surprise",
    },
    case_insensitive=True,
    description="Occlu-FER class folder codes (CO, contempt, is absent from some releases)",
)

_IMAGEFOLDER = NativeMap(
    "imagefolder",
    {
        "surprise": "surprise", "surprised": "surprise",
        "fear": "fear", "fearful": "fear", "afraid": "fear",
        "disgust": "disgust", "disgusted": "disgust",
        "happiness": "happiness", "happy": "happiness",
        "sadness": "sadness", "sad": "sadness",
        "anger": "anger", "angry": "anger",
        "neutral": "neutral",
        "contempt": "contempt", "contemptuous": "contempt",
    },
    case_insensitive=True,
    description="generic ImageFolder: class folder names and common synonyms, any case",
)

NATIVE_MAPS: Mapping[str, NativeMap] = MappingProxyType(
    {m.name: m for m in (_RAFDB, _RAFDB_COMPOUND, _AFFECTNET, _FERPLUS, _FER2013, _EXPW, _CKPLUS,
                         _SFEW, _OCCLUFER, _IMAGEFOLDER)}
)
# Native maps whose labels are numbers: a numeric ImageFolder tree can be read through one.
NUMERIC_MAPS = ("rafdb", "rafdb_compound", "affectnet", "fer2013", "expw", "ckplus")


def numeric_folder_map(class_order: str | list[str] | Mapping[int | str, str]) -> NativeMap:
    """How numbered class folders (``0``..``6``, ``00``..``06``, ``1``..``7``) read.

    ``class_order`` is a numeric native map's name (``rafdb``: 1 surprise .. 7 neutral,
    ``fer2013``: 0 anger .. 6 neutral, ...), a list of class names for folders 0, 1, 2 ..., or a
    mapping ``{number: class name}``. Folder names compare by value, so ``06`` is ``6``.
    """
    if isinstance(class_order, str):
        if class_order not in NUMERIC_MAPS:
            raise DataError(
                f"download.class_order {class_order!r} is not a numbered dataset; give one of "
                f"{', '.join(NUMERIC_MAPS)}, a list of class names for folders 0, 1, ..., or a "
                f"mapping {{number: class}}")
        base = NATIVE_MAPS[class_order]
        return NativeMap(f"numeric_{class_order}", dict(base.mapping), numeric=True,
                         description=f"numbered class folders read as {base.description}")
    items = (list(enumerate(class_order)) if isinstance(class_order, (list, tuple))
             else list(class_order.items()))
    mapping: dict[str, str | None] = {}
    for num, cls in items:
        try:
            key = str(int(str(num)))
        except ValueError:
            raise DataError(f"download.class_order: key {num!r} is not a folder number") from None
        name = str(cls).strip().lower()
        name = _IMAGEFOLDER.mapping.get(name, name)
        if name not in _KNOWN_CLASSES:
            raise DataError(
                f"download.class_order: {cls!r} (folder {key}) is not a class name; use one of "
                f"{', '.join(BASIC8.classes)} (or {', '.join(COMPOUND11.classes)})")
        if key in mapping:
            raise DataError(f"download.class_order: folder number {key} is given twice")
        mapping[key] = name
    if len(set(mapping.values())) != len(mapping):
        raise DataError(f"download.class_order: two folder numbers name one class: {mapping}")
    return NativeMap("numeric_custom", mapping, numeric=True,
                     description="numbered class folders: " + ", ".join(
                         f"{k} {v}" for k, v in mapping.items()))


def get_native_map(name: str | NativeMap) -> NativeMap:
    if isinstance(name, NativeMap):
        return name
    try:
        return NATIVE_MAPS[name]
    except KeyError:
        raise DataError(
            f"unknown native label map {name!r}; choose one of {sorted(NATIVE_MAPS)}"
        ) from None


def to_canonical(
    native_label: object, native_map: str | NativeMap, space: str | int | LabelSpace
) -> int:
    """Canonical index of ``native_label`` in ``space``.

    -1 when the class is outside the space (contempt in ``basic7``) or the native label is a
    known non-expression (AffectNet 8-10, FERPlus unknown/NF). A label the map does not know
    raises :class:`DataError` naming it and the allowed values.
    """
    nmap = get_native_map(native_map)
    lspace = space if isinstance(space, LabelSpace) else get_label_space(space)
    name = nmap.canonical_name(native_label)
    return -1 if name is None else lspace.index(name)


def canonical_lookup(native_map: str | NativeMap, space: str | int | LabelSpace) -> dict[str, int]:
    """``{native label as written: canonical index}`` for a whole map (for vectorised use)."""
    nmap = get_native_map(native_map)
    return {k: to_canonical(k, nmap, space) for k in nmap.allowed}
