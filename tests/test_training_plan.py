"""The training plan the driver builds, checked without starting Ray."""

from __future__ import annotations

import pytest

from training.ablate import ARMS, ablation_phases, markdown_table
from training.run import Phase, TrainOptions, run_phases


def test_every_arm_gets_the_same_number_of_passes_over_the_training_crops():
    plan = dict(ablation_phases(3, 2, "abcd"))
    assert set(plan) == set(ARMS) == {"a", "b", "c", "d"}
    for arm, phases in plan.items():
        assert sum(p.epochs for p in phases) == 5, arm
        assert phases[-1].stage == "finetune", "every arm ends in a classifier the test split can score"
    assert [p.objective for p in plan["b"]][0] == "simclr" and plan["c"][0].objective == "supcon"
    # the pretrained arms fine-tune from their own pretraining, the baselines start from nothing
    assert plan["b"][1].init == "phase:b-simclr-pretrain" and plan["c"][1].init == "phase:c-supcon-pretrain"
    assert plan["a"][0].init is None and plan["d"][0].init is None and plan["d"][0].cotrain
    assert [arm for arm, _ in ablation_phases(1, 1, "ca")] == ["c", "a"]
    with pytest.raises(ValueError, match="unknown arm"):
        ablation_phases(1, 1, "ax")


def test_a_phase_refuses_nonsense():
    with pytest.raises(ValueError, match="stage"):
        Phase("x", "distill", 1)
    with pytest.raises(ValueError, match="epochs"):
        Phase("x", "finetune", 0)


@pytest.mark.parametrize(
    "phases, message",
    [
        ([Phase("a", "finetune", 1), Phase("a", "pretrain", 1)], "unique"),
        ([Phase("ft", "finetune", 1, init="phase:pre"), Phase("pre", "pretrain", 1)], "not an earlier phase"),
    ],
)
def test_a_run_refuses_a_plan_that_cannot_be_trained_before_starting_ray(tmp_path, phases, message):
    options = TrainOptions(data=str(tmp_path / "data"), out=str(tmp_path / "out"))
    with pytest.raises(ValueError, match=message):
        run_phases(options, phases)
    assert not (tmp_path / "out").exists()


def test_the_markdown_table_has_every_arm_the_paper_and_every_anatomy():
    rows = [
        {
            "arm": arm,
            "name": ARMS[arm],
            "test_accuracy": acc,
            "balanced_accuracy": acc,
            "val_accuracy": 0.9,
            "per_anatomy": {"left lung": acc, "right lung": 1.0},
            "train_minutes": 1.5,
            "epochs": {f"{arm}-1": 2},
            "val_accuracy_by_epoch": [] if arm == "a" else [0.4, 0.975],
        }
        for arm, acc in (("a", 0.5), ("c", 0.975))
    ]
    table = markdown_table(
        {
            "rows": rows,
            "paper": {"region pretraining (paper)": 94.12},
            "data": "D",
            "train_films": 70,
            "train_crops": 2030,
            "test_films": 20,
            "preset": "p",
            "workers": 2,
            "minutes": 12.5,
        }
    )
    assert "| a | supervised from scratch | 2 | – | 90.00 % | 50.00 % |" in table
    assert "| c | SupCon region pretraining + fine-tune | 2 | 40.0 → 97.5 | 90.00 % | 97.50 % |" in table
    assert "94.12 %" in table and "70 training films" in table
    assert "| left lung | 50.0 | 97.5 |" in table and "| right lung | 100.0 | 100.0 |" in table


def test_the_placement_choices_of_the_command_are_the_ones_a_run_accepts(tmp_path):
    import argparse

    from training.cli import _common
    from training.run import PLACEMENTS

    parser = argparse.ArgumentParser()
    _common(parser, "pretrain")
    choices = next(a.choices for a in parser._actions if a.dest == "placement")
    assert set(choices) == set(PLACEMENTS)
    assert parser.parse_args(["--data", "d", "--out", "o"]).placement == "PACK"
    with pytest.raises(SystemExit):
        parser.parse_args(["--data", "d", "--out", "o", "--placement", "EVERYWHERE"])
    with pytest.raises(ValueError, match="placement must be one of"):
        run_phases(
            TrainOptions(data=str(tmp_path), out=str(tmp_path / "o"), placement="EVERYWHERE"),
            [Phase("pretrain", "pretrain", 1)],
        )


def test_a_models_contract_records_where_it_started_as_a_uri_not_the_plan_encoding():
    from training.run import _init_provenance

    assert _init_provenance(None, "s3://runs/x") is None
    assert _init_provenance("dir:s3://runs/pretrain", "s3://runs/x") == "s3://runs/pretrain"
    assert _init_provenance("phase:c-supcon-pretrain", "s3://runs/x") == "s3://runs/x/c-supcon-pretrain/final"
