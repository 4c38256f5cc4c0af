from __future__ import annotations

import pytest

from regionmir.anatomy import (
    ANATOMY_NAMES,
    LEFT_RIGHT_PAIRS,
    MIRROR_IDS,
    NUM_ANATOMIES,
    STANDARD_29,
    STANDARD_29_IDS,
    anatomy_id,
    anatomy_name,
    mirror_id,
    side_of,
    suggest,
)
from regionmir.errors import UnknownAnatomyError


def test_vocabulary_is_the_36_chest_imagenome_names_with_stable_ids():
    assert NUM_ANATOMIES == 36 == len(set(ANATOMY_NAMES))
    # ids are positions and must never move: spot-check a few against their published order
    assert ANATOMY_NAMES[0] == "right lung"
    assert ANATOMY_NAMES[9] == "left lung"
    assert ANATOMY_NAMES[25] == "cardiac silhouette"
    assert ANATOMY_NAMES[35] == "left cardiophrenic angle"


def test_standard_29_drops_the_seven_regions():
    assert len(STANDARD_29) == 29
    dropped = set(ANATOMY_NAMES) - set(STANDARD_29)
    assert dropped == {
        "left cardiophrenic angle",
        "right cardiophrenic angle",
        "left cardiac silhouette",
        "right cardiac silhouette",
        "descending aorta",
        "left upper abdomen",
        "right upper abdomen",
    }
    assert [ANATOMY_NAMES[i] for i in STANDARD_29_IDS] == list(STANDARD_29)


@pytest.mark.parametrize(
    "typed, expected",
    [
        ("left lung", "left lung"),
        ("left_lung", "left lung"),
        ("Left-Lung", "left lung"),
        ("  LEFT   LUNG ", "left lung"),
        ("heart", "cardiac silhouette"),
        ("Heart", "cardiac silhouette"),
        ("left cp angle", "left costophrenic angle"),
        ("lcpa", "left costophrenic angle"),
        ("RUZ", "right upper lung zone"),
        ("r costophrenic angle", "right costophrenic angle"),
        ("superior vena cava", "svc"),
        ("aortic knob", "aortic arch"),
        (17, "trachea"),
        ("17", "trachea"),
    ],
)
def test_names_and_aliases(typed, expected):
    assert anatomy_name(typed) == expected


@pytest.mark.parametrize("typed", ["left lungg", "hart", "spleen", -1, 36, True])
def test_unknown_names_raise_with_close_matches(typed):
    with pytest.raises(UnknownAnatomyError) as info:
        anatomy_id(typed)
    assert info.value.reason == "unknown_anatomy"


def test_unknown_name_lists_close_matches():
    with pytest.raises(UnknownAnatomyError) as info:
        anatomy_id("left lungg")
    assert "left lung" in info.value.matches
    assert "left lung" in str(info.value)
    assert "cardiac silhouette" in suggest("cardiac silhouete")


def test_mirror_swaps_every_left_right_pair_and_keeps_midline():
    assert len(LEFT_RIGHT_PAIRS) == 12
    for left, right in LEFT_RIGHT_PAIRS:
        assert ANATOMY_NAMES[left].replace("left ", "") == ANATOMY_NAMES[right].replace("right ", "")
        assert mirror_id(left) == right and mirror_id(right) == left
    for name in ("trachea", "spine", "carina", "cardiac silhouette", "svc", "abdomen", "right atrium"):
        # right atrium has no left twin in the vocabulary: it keeps its id
        assert mirror_id(anatomy_id(name)) == anatomy_id(name)
    assert all(MIRROR_IDS[MIRROR_IDS[i]] == i for i in range(NUM_ANATOMIES))
    assert side_of("left clavicle") == "left" and side_of("spine") == "midline"


@pytest.mark.parametrize("text", ["²", "٣", "①", "1²"])
def test_unicode_digits_are_unknown_names_not_crashes(text):
    """str.isdigit() says yes to "²" but int() refuses it: such input is an unknown name (a 422)."""
    with pytest.raises(UnknownAnatomyError):
        anatomy_id(text)
