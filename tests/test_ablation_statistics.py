"""``ablate --seeds/--label-fraction`` without Ray: which films fine-tuning may label, the paired
bootstrap, and the summary tables built from finished runs."""

from __future__ import annotations

import argparse
import math

import numpy as np
import pytest

from regionmir.paired_bootstrap import mean_and_sd, paired_bootstrap
from regionmir.region_record import ImageRecord
from training.ablate import _fractions, ablate_main, summarise_runs, summary_markdown
from training.run import labelled_films


def films(n: int) -> list[ImageRecord]:
    return [ImageRecord(image_uri=f"/data/{i:03d}.png", image_id=f"img{i:03d}", split="train") for i in range(n)]


@pytest.mark.parametrize(
    "n, fraction, expected", [(70, 0.05, 4), (70, 0.2, 14), (70, 1.0, 70), (3, 0.05, 1), (10, 0.31, 4)]
)
def test_labelled_films_round_up_to_whole_films_and_keep_at_least_one(n, fraction, expected):
    chosen = labelled_films(films(n), fraction, seed=0)
    assert len(chosen) == expected == max(1, math.ceil(fraction * n))
    assert len({f.image_id for f in chosen}) == expected


def test_labelled_films_are_reproducible_nested_and_seeded():
    pool = films(100)
    small, large = labelled_films(pool, 0.05, seed=1), labelled_films(pool, 0.2, seed=1)
    assert [f.image_id for f in small] == [f.image_id for f in labelled_films(list(reversed(pool)), 0.05, seed=1)]
    assert {f.image_id for f in small} <= {f.image_id for f in large}  # a larger fraction adds films
    assert {f.image_id for f in small} != {f.image_id for f in labelled_films(pool, 0.05, seed=2)}
    with pytest.raises(ValueError, match="label fraction"):
        labelled_films(pool, 0.0, seed=0)


def test_paired_bootstrap_of_identical_arms_is_zero_and_of_a_sure_win_is_one():
    rng = np.random.default_rng(0)
    scores = (rng.random((3, 200)) < 0.9).astype(float)
    same = paired_bootstrap(scores, scores)
    assert (same.mean, same.low, same.high) == (0.0, 0.0, 0.0) and not same.excludes_zero
    win = paired_bootstrap(np.ones(50), np.zeros(50))
    assert (win.mean, win.low, win.high) == (1.0, 1.0, 1.0) and win.excludes_zero


def test_paired_bootstrap_interval_matches_the_normal_approximation():
    # 1000 crops; arm 1 right on 92 %, arm 2 on 90 %, disagreeing on 6 % of crops: the paired
    # difference d_i ∈ {-1, 0, 1} has mean 0.02 and sd ≈ 0.245 → 95 % ≈ 0.02 ± 1.96·0.245/√1000.
    n = 1000
    first, second = np.ones(n), np.ones(n)
    first[:80] = 0  # arm 1 wrong on 80
    second[40:140] = 0  # arm 2 wrong on 100 (40 shared)
    result = paired_bootstrap(first, second, resamples=4000, seed=1)
    d = first - second
    half_width = 1.96 * d.std(ddof=1) / math.sqrt(n)
    assert result.mean == pytest.approx(0.02)
    assert result.low == pytest.approx(0.02 - half_width, abs=0.004)
    assert result.high == pytest.approx(0.02 + half_width, abs=0.004)
    assert paired_bootstrap(first, second, resamples=500, seed=3) == paired_bootstrap(
        first, second, resamples=500, seed=3
    )


def test_paired_bootstrap_refuses_unpaired_input():
    with pytest.raises(ValueError, match="same shape"):
        paired_bootstrap(np.ones(5), np.ones(6))
    with pytest.raises(ValueError, match="level"):
        paired_bootstrap(np.ones(5), np.ones(5), level=1.0)
    assert mean_and_sd([0.9]) == (0.9, 0.0)
    assert mean_and_sd([0.9, 0.95, 1.0]) == pytest.approx((0.95, 0.05))


def run(seed: int, fraction: float, correct: dict[str, str], keys: list[str]) -> dict:
    """A finished run's ablation.json, as run_ablation writes it (keys sorted, bits in that order)."""
    rows = [
        {
            "arm": arm,
            "name": arm,
            "test_accuracy": bits.count("1") / len(bits),
            "val_accuracy": None,
            "train_minutes": 1.0,
            "test_keys": keys,
            "test_correct": bits,
        }
        for arm, bits in correct.items()
    ]
    return {
        "rows": rows,
        "seed": seed,
        "label_fraction": fraction,
        "labelled_train_films": 7 if fraction < 1 else 70,
        "train_films": 70,
        "data": "phantoms",
        "preset": "resnet10-cpu",
        "workers": 2,
        "pretrain_epochs": 3,
        "finetune_epochs": 3,
        "test_films": 2,
        "minutes": 10.0,
    }


def test_summary_averages_seeds_and_compares_arms_crop_by_crop():
    keys = [f"img{i}#{a}" for i in range(2) for a in (0, 9)]  # 4 test crops
    runs = [
        run(0, 1.0, {"a": "1100", "c": "1111"}, keys),
        run(1, 1.0, {"a": "1000", "c": "1110"}, keys),
        run(0, 0.1, {"a": "0000", "c": "1100"}, keys),
    ]
    summary = summarise_runs(runs, ("a", "c"), resamples=200)
    full, tenth = summary["fractions"]
    assert (full["label_fraction"], tenth["label_fraction"]) == (1.0, 0.1)
    a, c = full["arms"]
    assert a["test_accuracy_by_seed"] == [0.5, 0.25] and a["test_accuracy_mean"] == pytest.approx(0.375)
    assert a["test_accuracy_sd"] == pytest.approx(np.std([0.5, 0.25], ddof=1))
    [difference] = full["differences"]
    assert difference["comparison"] == "c − a" and difference["mean"] == pytest.approx((0.5 + 0.5) / 2)
    assert difference["seeds"] == 2 and difference["items"] == 4
    assert tenth["differences"][0]["mean"] == pytest.approx(0.5) and tenth["labelled_train_films"] == 7
    table = summary_markdown(summary)
    assert "| 0.1 | 7 of 70 | 1 |" in table and "(c) − (a)" in table and "37.50 ± 17.68" in table


def test_summary_matches_crops_by_key_not_by_position():
    keys = ["x#0", "y#0", "z#0"]
    runs = [run(0, 1.0, {"a": "100", "b": "100"}, keys)]
    # the same crops listed in another order, with b's verdicts moved along: no difference
    runs[0]["rows"][1].update(test_keys=["z#0", "x#0", "y#0"], test_correct="010")
    summary = summarise_runs(runs, ("a", "b"), resamples=100)
    assert summary["fractions"][0]["differences"][0]["mean"] == 0.0


def test_label_fraction_and_seed_arguments_are_checked():
    assert _fractions("0.05, 0.2,1.0") == [0.05, 0.2, 1.0]
    for bad in ("0", "1.5", "a,b", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            _fractions(bad)
    with pytest.raises(SystemExit) as exit_info:
        ablate_main(["--data", "d", "--out", "o", "--label-fraction", "0"])
    assert exit_info.value.code == 2


def test_crop_retrieval_scores_each_test_crop_against_the_training_crops():
    from training.ablate import crop_retrieval

    database = {
        "y_true": [0, 0, 1, 1, 1],
        "embeddings": np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9], [0.2, 0.8]], dtype=np.float32),
    }
    queries = {"y_true": [0, 1, 1], "embeddings": np.array([[1, 0.05], [1, 0], [0.15, 0.85]], dtype=np.float32)}
    precision, average_precision = crop_retrieval(queries, database, 2)
    # q0 finds both label-0 crops (R = 2): P@2 1, AP 1; q1 (label 1) finds two label-0 crops: 0;
    # q2 finds two of the three label-1 crops at ranks 1, 2: AP = (1 + 1) / min(2, 3) = 1
    np.testing.assert_allclose(precision, [1.0, 0.0, 1.0])
    np.testing.assert_allclose(average_precision, [1.0, 0.0, 1.0])
    _, at_three = crop_retrieval(queries, database, 3)
    # q1 @3: two label-0 crops, then the nearest label-1 crop [0.2, 0.8] at rank 3: (1/3) / min(3, 3) = 1/9
    assert at_three[1] == pytest.approx(1 / 9)


def test_summary_compares_retrieval_too_when_the_runs_carry_it():
    keys = ["x#0", "y#0"]
    runs = [run(0, 1.0, {"a": "10", "b": "11"}, keys), run(1, 1.0, {"a": "10", "b": "11"}, keys)]
    for r in runs:
        r["rows"][0].update({"test_ap": [0.5, 0.1], "map@10": 0.3})
        r["rows"][1].update({"test_ap": [0.9, 0.5], "map@10": 0.7})
    summary = summarise_runs(runs, ("a", "b"), resamples=100)
    [difference] = summary["fractions"][0]["differences"]
    assert difference["map@10"]["mean"] == pytest.approx(0.4)
    assert summary["fractions"][0]["arms"][1]["map@10_mean"] == pytest.approx(0.7)
    assert "standard mAP@10" in summary_markdown(summary)
