"""Films → ROI rows, one path for training and indexing (:mod:`regionmir.film_rows`), and the one
policy for films that cannot be read (:mod:`regionmir.bad_films`), checked without Ray."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from regionmir.anatomy import STANDARD_29_IDS
from regionmir.bad_films import BadFilms
from regionmir.errors import DatasetError, ImageReadError, StorageError
from regionmir.film_rows import FILM_COLUMN, film_rows
from regionmir.roi_crop import CropConfig, roi_crop


@pytest.fixture
def films(tmp_path):
    from regionmir.dataset import films_by_split
    from regionmir.synth.dataset_writer import write_phantom_dataset

    write_phantom_dataset(str(tmp_path / "phantoms"), images=4, size=128, seed=5, progress=False)
    records, _ = films_by_split(str(tmp_path / "phantoms"), None, ("train", "valid", "test"))
    return [film for split in records.values() for film in split]


def _batch(rows: list[dict]) -> dict[str, np.ndarray]:
    return {FILM_COLUMN: np.asarray([r[FILM_COLUMN] for r in rows], dtype=object)}


def test_film_rows_keep_the_wanted_regions_or_every_film():
    from regionmir.boxes import Box
    from regionmir.region_record import ImageRecord, RegionRecord

    a = ImageRecord("a.png", "a", "train", "p" * 16, "s" * 16, "PA", (RegionRecord("a.png", "a", 3, Box(0, 0, 4, 4)),))
    b = ImageRecord("b.png", "b", "test")
    assert [json.loads(r[FILM_COLUMN])["image_id"] for r in film_rows([a, b])] == ["a", "b"]
    [row] = film_rows([a, b], anatomy_ids=[3])
    assert json.loads(row[FILM_COLUMN]) == {
        "image_uri": "a.png",
        "image_id": "a",
        "split": "train",
        "view": "PA",
        "patient_hash": "p" * 16,
        "study_hash": "s" * 16,
        "box_source": "label",
        "regions": [[3, 0.0, 0.0, 4.0, 4.0]],
    }
    assert film_rows([a, b], anatomy_ids=[4]) == []
    # a film without labelled regions is kept for the localiser only when asked
    rows = [json.loads(r[FILM_COLUMN]) for r in film_rows([a, b], anatomy_ids=[3], localise_unlabelled=True)]
    assert [(r["image_id"], r["box_source"], r["regions"]) for r in rows] == [
        ("a", "label", [[3, 0.0, 0.0, 4.0, 4.0]]),
        ("b", "localiser", []),
    ]


def test_the_index_cropper_cuts_the_regions_the_training_cropper_cuts(films, tmp_path, caplog):
    from indexing.roi_embedding import RegionCropper
    from training.roi_pipeline import ContextCropper, RoiPipelineConfig

    config = RoiPipelineConfig(crop=CropConfig(size=16), anatomy_ids=tuple(STANDARD_29_IDS))
    with open(films[0].image_uri, "wb") as broken:  # unreadable: one placeholder row with its reason
        broken.write(b"not an image")
    rows = film_rows(films, config.anatomy_ids)
    clamped = json.loads(rows[1][FILM_COLUMN])
    clamped["regions"][0][1:] = [127.5, 127.5, 128.0, 128.0]  # under a pixel inside: dropped, no placeholder
    rows[1] = {FILM_COLUMN: json.dumps(clamped)}

    with caplog.at_level(logging.WARNING, logger="regionmir.indexing"):
        indexed = RegionCropper({"size": 16, "margin": 0.15, "pad_value": 0.0})(_batch(rows))
    assert f"skipping film {films[0].image_id}: unsupported_media_type" in caplog.text
    assert str(films[0].image_uri) not in caplog.text  # logged by image id, never the path
    bad = indexed["anatomy_id"] < 0
    assert list(indexed["image_id"][bad]) == [films[0].image_id]
    assert list(indexed["skip_reason"][bad]) == ["unsupported_media_type"] and set(indexed["skip_reason"][~bad]) == {""}
    labelled = sum(len(json.loads(r[FILM_COLUMN])["regions"]) for r in rows[1:])
    assert int((~bad).sum()) == labelled - 1
    first = np.flatnonzero(~bad)[0]
    film = next(f for f in films if f.image_id == indexed["image_id"][first])
    region = film.region(int(indexed["anatomy_id"][first]))
    np.testing.assert_array_equal(indexed["crop"][first], roi_crop(np.asarray(_pixels(film)), region.box, config.crop))
    assert indexed["patient_hash"][first] == film.patient_hash and indexed["view"][first] == film.view

    trained = ContextCropper(config, None)(_batch(rows))  # the same films: the same regions cut
    pairs = sorted(zip(trained["image_id"], trained["anatomy_id"]))
    assert pairs == sorted(zip(indexed["image_id"][~bad], indexed["anatomy_id"][~bad]))


def _pixels(film):
    from regionmir.image_reader import read_image

    return read_image(film.image_uri).pixels


def test_bad_films_where_films_are_read_count_and_stop_past_the_fraction():
    log = logging.getLogger("test")
    policy = BadFilms("data", None, 0.25, min_films=4)
    for i in range(3):
        policy.tried()
        policy.failed(f"film-{i}", ImageReadError("x", "bad bytes"), log)  # under min_films: goes on
    assert policy.count == 3 and policy.by_reason == {"unreadable_image": 3}
    policy.tried()
    with pytest.raises(DatasetError, match=r"4 of 4 films were unreadable \(over the allowed 25%\)"):
        policy.failed("film-3", ImageReadError("x", "bad bytes"), log)

    down = StorageError("s3://bucket/film.png", "after 4 attempt(s): connection reset")
    policy = BadFilms("data", None, 0.25)
    policy.tried()
    with pytest.raises(StorageError) as err:  # storage down: raised as it is, not counted
        policy.failed("film-0", down, log)
    assert err.value is down and policy.count == 0
