"""The anatomy vocabulary: the 36 Chest ImaGenome ``bbox_name`` regions with stable integer ids.

Every data set, model checkpoint and index row speaks this vocabulary. Ids are the position in
:data:`ANATOMY_NAMES` and never change (append, never reorder). Names are the patient's left and
right, as in Chest ImaGenome: on a PA film the patient's left lies on the image's right.

>>> anatomy_id("Heart"), anatomy_name(anatomy_id("left_lung"))
(25, 'left lung')
>>> anatomy_name(mirror_id(anatomy_id("left costophrenic angle")))
'right costophrenic angle'
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable

from .errors import UnknownAnatomyError

#: The 36 Chest ImaGenome regions; the index is the stable anatomy id.
ANATOMY_NAMES: tuple[str, ...] = (
    "right lung",
    "right upper lung zone",
    "right mid lung zone",
    "right lower lung zone",
    "right hilar structures",
    "right apical zone",
    "right costophrenic angle",
    "right cardiophrenic angle",
    "right hemidiaphragm",
    "left lung",
    "left upper lung zone",
    "left mid lung zone",
    "left lower lung zone",
    "left hilar structures",
    "left apical zone",
    "left costophrenic angle",
    "left hemidiaphragm",
    "trachea",
    "spine",
    "right clavicle",
    "left clavicle",
    "aortic arch",
    "mediastinum",
    "upper mediastinum",
    "svc",
    "cardiac silhouette",
    "left cardiac silhouette",
    "right cardiac silhouette",
    "cavoatrial junction",
    "right atrium",
    "descending aorta",
    "carina",
    "left upper abdomen",
    "right upper abdomen",
    "abdomen",
    "left cardiophrenic angle",
)
NUM_ANATOMIES = len(ANATOMY_NAMES)

#: Regions left out of the standard 29 used by region-guided report generation work.
_NOT_IN_STANDARD_29 = frozenset(
    {
        "left cardiophrenic angle",
        "right cardiophrenic angle",
        "left cardiac silhouette",
        "right cardiac silhouette",
        "descending aorta",
        "left upper abdomen",
        "right upper abdomen",
    }
)
#: The standard 29 regions, in vocabulary order.
STANDARD_29: tuple[str, ...] = tuple(n for n in ANATOMY_NAMES if n not in _NOT_IN_STANDARD_29)
STANDARD_29_IDS: tuple[int, ...] = tuple(ANATOMY_NAMES.index(n) for n in STANDARD_29)

_ID_BY_NAME = {name: i for i, name in enumerate(ANATOMY_NAMES)}


def _mirror_name(name: str) -> str:
    if name.startswith("left "):
        return "right " + name[len("left ") :]
    if name.startswith("right "):
        return "left " + name[len("right ") :]
    return name


#: (left id, right id) for every region that has a twin on the other side.
LEFT_RIGHT_PAIRS: tuple[tuple[int, int], ...] = tuple(
    (_ID_BY_NAME[n], _ID_BY_NAME[_mirror_name(n)])
    for n in ANATOMY_NAMES
    if n.startswith("left ") and _mirror_name(n) in _ID_BY_NAME
)

#: Maps every id to its mirror image under a horizontal flip (midline regions map to themselves).
MIRROR_IDS: tuple[int, ...] = tuple(_ID_BY_NAME.get(_mirror_name(n), i) for i, n in enumerate(ANATOMY_NAMES))

# Words users type for a region, after normalisation (lower case, '_'/'-' → space).
_ALIASES: dict[str, str] = {
    "heart": "cardiac silhouette",
    "cardiac": "cardiac silhouette",
    "heart shadow": "cardiac silhouette",
    "superior vena cava": "svc",
    "aortic knob": "aortic arch",
    "aorta": "descending aorta",
    "right atrium": "right atrium",
    "ra": "right atrium",
    "cp angle": "costophrenic angle",
    "vertebrae": "spine",
    "vertebral column": "spine",
    "windpipe": "trachea",
}
# Side-specific shorthands: "left cp angle", "lcpa", "rul" style abbreviations.
_SIDE_ABBREVIATIONS: dict[str, str] = {
    "l": "left",
    "lt": "left",
    "r": "right",
    "rt": "right",
}
_ZONE_ABBREVIATIONS: dict[str, str] = {
    "ruz": "right upper lung zone",
    "rmz": "right mid lung zone",
    "rlz": "right lower lung zone",
    "luz": "left upper lung zone",
    "lmz": "left mid lung zone",
    "llz": "left lower lung zone",
    "rcpa": "right costophrenic angle",
    "lcpa": "left costophrenic angle",
}


def normalise_name(text: str) -> str:
    """Lower case, ``_``/``-`` as spaces, runs of spaces collapsed."""
    return re.sub(r"\s+", " ", re.sub(r"[_\-]+", " ", str(text))).strip().lower()


def anatomy_id(name: str | int) -> int:
    """The stable id of a region given its name, an alias, or an id.

    Accepts the Chest ImaGenome name in any case with ``_`` or ``-`` for spaces (``left_lung``),
    common aliases (``heart`` → cardiac silhouette, ``left cp angle``, ``lcpa``) and ints.
    Raises :class:`UnknownAnatomyError` listing close matches otherwise.
    """
    if isinstance(name, bool):
        raise UnknownAnatomyError(str(name), [])
    if isinstance(name, int):
        if 0 <= name < NUM_ANATOMIES:
            return name
        raise UnknownAnatomyError(str(name), [], f"anatomy id {name} is outside 0..{NUM_ANATOMIES - 1}")
    key = normalise_name(name)
    if key.isascii() and key.isdigit():  # "²" and "٣" are digits to str.isdigit() but not to int()
        return anatomy_id(int(key))
    if key in _ID_BY_NAME:
        return _ID_BY_NAME[key]
    if key in _ZONE_ABBREVIATIONS:
        return _ID_BY_NAME[_ZONE_ABBREVIATIONS[key]]
    words = key.split(" ")
    if words and words[0] in _SIDE_ABBREVIATIONS:
        words[0] = _SIDE_ABBREVIATIONS[words[0]]
    side = words[0] if words and words[0] in ("left", "right") else ""
    rest = " ".join(words[1:]) if side else " ".join(words)
    rest = _ALIASES.get(rest, rest)
    candidate = f"{side} {rest}".strip()
    if candidate in _ID_BY_NAME:
        return _ID_BY_NAME[candidate]
    raise UnknownAnatomyError(str(name), suggest(str(name)))


def anatomy_name(anatomy: str | int) -> str:
    """The canonical Chest ImaGenome name of a region (id, name or alias)."""
    return ANATOMY_NAMES[anatomy_id(anatomy)]


def suggest(text: str, n: int = 3) -> list[str]:
    """Up to ``n`` vocabulary names closest to ``text``."""
    key = normalise_name(text)
    choices = list(ANATOMY_NAMES) + list(_ALIASES)
    close = difflib.get_close_matches(key, choices, n=n * 2, cutoff=0.5)
    names: list[str] = []
    for c in close:
        canonical = _ALIASES.get(c, c)
        if canonical in _ID_BY_NAME and canonical not in names:
            names.append(canonical)
    if not names:  # fall back to names sharing a word
        words = set(key.split())
        names = [n_ for n_ in ANATOMY_NAMES if words & set(n_.split())]
    return names[:n]


def mirror_id(anatomy: int) -> int:
    """The id a region takes after a horizontal flip (left ↔ right; midline unchanged)."""
    return MIRROR_IDS[anatomy_id(anatomy)]


def side_of(anatomy: str | int) -> str:
    """``"left"``, ``"right"`` or ``"midline"`` (the patient's side)."""
    name = anatomy_name(anatomy)
    if name.startswith("left "):
        return "left"
    if name.startswith("right "):
        return "right"
    return "midline"


def ids_for(names: Iterable[str | int]) -> list[int]:
    """Ids for a list of names; the first unknown name raises."""
    return [anatomy_id(n) for n in names]
