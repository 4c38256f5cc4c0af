"""Anatomy-only localisation measured by ``evaluate`` (no Ray, no Milvus): phantom films, a model
directory, the atlas learned from the training films or read from ``MODEL/atlas.json``."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from indexing.localization_eval import localization_report, model_atlas
from regionmir.anatomy import STANDARD_29_IDS
from regionmir.anatomy_atlas import AnatomyAtlas
from regionmir.dataset import open_dataset
from regionmir.encoder import RegionEncoder, load_preset
from regionmir.model_contract import ModelContract, save_model
from regionmir.synth.dataset_writer import write_phantom_dataset


@pytest.fixture(scope="module")
def films(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantoms")
    # generator 1 films (the classic preset): the thresholds below were set on them
    write_phantom_dataset(str(root), images=12, size=160, seed=5, progress=False, preset="classic")
    records = list(open_dataset(str(root)).iter_images())
    return root, [r for r in records if r.split == "train"], [r for r in records if r.split != "train"]


def _model(directory: Path, class_ids=tuple(STANDARD_29_IDS)) -> str:
    torch.manual_seed(0)
    config = replace(load_preset("resnet10-cpu"), num_classes=len(class_ids))
    contract = ModelContract(
        stage="finetune",
        encoder=config.to_dict(),
        class_anatomy_ids=tuple(class_ids),
        crop={"size": config.crop_size, "margin": 0.15},
        training={"seed": 0},
    )
    save_model(str(directory), RegionEncoder(config), contract)
    return str(directory)


def test_every_region_is_localised_and_scored_against_its_box(films, tmp_path):
    root, train, held_out = films
    model = _model(tmp_path / "model")
    atlas = model_atlas(model, train, None, source="train")
    assert atlas.images == len(train)
    report = localization_report(atlas, held_out[:2], model, candidates=8, rounds=1)
    assert report["localization_regions"] == sum(
        1 for r in held_out[:2] for region in r.regions if region.anatomy_id in STANDARD_29_IDS
    )
    assert report["localization_films"] == 2
    assert 0.0 <= report["localization_miou"] <= 1.0
    # Phantom anatomy sits where the training boxes put it: the prior box alone overlaps well.
    assert report["localization_prior_miou"] > 0.4
    assert len(report["localization_per_anatomy"]) == len(STANDARD_29_IDS)


def test_the_models_own_atlas_wins_over_the_training_boxes(films, tmp_path):
    root, train, held_out = films
    model = _model(tmp_path / "model")
    own = AnatomyAtlas.fit_records(train[:3], source="three films")
    own.save(model)
    assert model_atlas(model, train, None, source="train").source == "three films"


def test_regions_the_model_does_not_classify_are_left_out(films, tmp_path):
    root, train, held_out = films
    model = _model(tmp_path / "model", class_ids=tuple(STANDARD_29_IDS[:5]))
    atlas = model_atlas(model, train, None, source="train")
    report = localization_report(atlas, held_out[:1], model, candidates=4, rounds=1)
    assert report["localization_regions"] == sum(1 for r in held_out[0].regions if r.anatomy_id in STANDARD_29_IDS[:5])
