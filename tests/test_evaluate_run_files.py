"""``regionmir evaluate`` writes run.tsv and qrels.tsv from which every figure can be recomputed,
and its exclusions (model version, the query's own patient) hold in the ranking and in R alike.

No Ray: the index is filled in this process (as ``tests/random_model_index.py`` does) and the queries are embedded
in this process (``embed="local"``); milvus-lite is a file in ``tmp_path``.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from regionmir.retrieval_run import RankedHit, RetrievalRun

pytestmark = pytest.mark.integration


def read_tsv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def recompute(report: Path, k: int = 10) -> dict[str, float]:
    """P@k, AP@k ÷ min(k, R) and nDCG@k from the two files alone, in plain Python."""
    ranked: dict[str, list[dict[str, str]]] = {}
    for line in read_tsv(report / "run.tsv"):
        ranked.setdefault(line["query_key"], []).append(line)
    precision, ap, ndcg = [], [], []
    for query in read_tsv(report / "qrels.tsv"):
        lines = sorted(ranked.get(query["query_key"], []), key=lambda line: int(line["rank"]))[:k]
        relevant = [line["hit_anatomy"] == query["query_anatomy"] for line in lines]
        r = int(query["num_relevant"])
        found, total = 0, 0.0
        for rank, is_relevant in enumerate(relevant, start=1):
            if is_relevant:
                found += 1
                total += found / rank
        precision.append(found / k)
        ap.append(total / min(k, r) if r else 0.0)
        dcg = sum(1 / np.log2(rank + 1) for rank, hit in enumerate(relevant, start=1) if hit)
        ideal = sum(1 / np.log2(rank + 1) for rank in range(1, min(k, r) + 1))
        ndcg.append(dcg / ideal if ideal else 0.0)
    return {f"p@{k}": float(np.mean(precision)), f"map@{k}": float(np.mean(ap)), f"ndcg@{k}": float(np.mean(ndcg))}


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    """10 phantom films, a random-init model, its train regions indexed; then the test films'
    regions added too, so a query can meet its own film in the index."""
    from random_model_index import build_random_model_index

    from indexing.index_rows import region_rows
    from indexing.region_index import RegionIndex
    from indexing.roi_embedding import embedded_batches
    from regionmir.dataset import open_dataset
    from regionmir.model_contract import read_contract

    demo = build_random_model_index(str(tmp_path_factory.mktemp("evaluate")), images=10, size=160, seed=3)
    _, contract = read_contract(demo["model"])
    test_films = list(open_dataset(demo["data"]).iter_images(split="test"))
    index = RegionIndex(demo["milvus"])
    added = 0
    for batch in embedded_batches(
        test_films, demo["model"], contract.crop_config, contract.class_anatomy_ids, None, mode="local"
    ):
        added += index.upsert("regions", region_rows(batch, contract.version_id)).rows
    index.flush("regions")
    index.close()
    return demo, added


def test_the_run_files_give_back_every_figure_of_metrics_json(tmp_path, indexed):
    from indexing.evaluate import evaluate
    from indexing.jobs import EvaluationJob

    demo, _ = indexed
    metrics = evaluate(
        EvaluationJob(
            demo["data"],
            demo["model"],
            demo["milvus"],
            str(tmp_path),
            collection="regions",
            embed="local",
            localize_films=0,
        )
    )
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["map@10"] == pytest.approx(metrics["map@10"], abs=1e-12)
    again = recompute(tmp_path)
    for name, value in again.items():
        assert saved[name] == pytest.approx(value, abs=1e-6), name
    # the library's reader gives the same report
    run = RetrievalRun.from_tsv((tmp_path / "run.tsv").read_text(), (tmp_path / "qrels.tsv").read_text())
    assert run.report((1, 5, 10))["map@10"] == pytest.approx(saved["map@10"], abs=1e-12)
    assert len(run) == saved["queries"] and saved["exclude_same_patient"] is True

    # R is the train rows of the query's anatomy (one film per phantom patient, the queries are test
    # films: nothing of theirs to exclude from the train split)
    qrels = read_tsv(tmp_path / "qrels.tsv")
    train_films = demo["train_films"]
    assert {int(q["num_relevant"]) for q in qrels} == {train_films}
    assert "ndcg@10" in saved and "| ndcg@10 |" in (tmp_path / "report.md").read_text()


def test_the_query_s_own_patient_leaves_the_ranking_and_r_together(tmp_path, indexed):
    from dataclasses import replace

    from indexing.evaluate import evaluate
    from indexing.jobs import EvaluationJob

    demo, _ = indexed
    excluded = EvaluationJob(
        demo["data"],
        demo["model"],
        demo["milvus"],
        str(tmp_path / "excluded"),
        collection="regions",
        database_split=None,
        embed="local",
        localize_films=0,
    )
    evaluate(excluded)
    included = evaluate(replace(excluded, report_dir=str(tmp_path / "included"), exclude_same_patient=False))
    ex_run = {q["query_key"]: q for q in read_tsv(tmp_path / "excluded" / "qrels.tsv")}
    in_run = {q["query_key"]: q for q in read_tsv(tmp_path / "included" / "qrels.tsv")}
    assert ex_run.keys() == in_run.keys()
    # with its own film in the index, each query's own region is one more relevant row...
    assert all(int(in_run[key]["num_relevant"]) == int(ex_run[key]["num_relevant"]) + 1 for key in ex_run)
    # ...and is found first (cosine 1 with itself); left out, it is nowhere in the ranking
    firsts = {
        line["query_key"]: line["hit_key"]
        for line in read_tsv(tmp_path / "included" / "run.tsv")
        if line["rank"] == "1"
    }
    assert all(firsts[key] == key for key in in_run)
    assert not any(line["hit_key"] == line["query_key"] for line in read_tsv(tmp_path / "excluded" / "run.tsv"))
    assert included["p@1"] == 1.0  # every query finds itself first
    for report in ("excluded", "included"):
        again = recompute(tmp_path / report)
        saved = json.loads((tmp_path / report / "metrics.json").read_text())
        assert saved["map@10"] == pytest.approx(again["map@10"], abs=1e-6)


def test_run_files_refuse_what_they_cannot_mean():
    run = RetrievalRun()
    run.add("q1", "left lung", 3, [RankedHit("h1", "left lung", 0.9), RankedHit("h2", "trachea", 0.5)])
    with pytest.raises(ValueError, match="tabs"):
        run.add("q\t2", "left lung", 1, [])
    with pytest.raises(ValueError, match="num_relevant"):
        run.add("q2", "left lung", -1, [])
    back = RetrievalRun.from_tsv(run.run_tsv(), run.qrels_tsv())
    assert back.hits == run.hits and back.num_relevant == [3]
    with pytest.raises(ValueError, match="header"):
        RetrievalRun.from_tsv("q1\tleft lung\t1\th1\tleft lung\t0.9\n", run.qrels_tsv())
    with pytest.raises(ValueError, match="not in qrels"):
        RetrievalRun.from_tsv(run.run_tsv().replace("q1\t", "q9\t"), run.qrels_tsv())
    with pytest.raises(ValueError, match="out of order"):
        lines = run.run_tsv().splitlines()
        RetrievalRun.from_tsv("\n".join([lines[0], lines[2], lines[1]]), run.qrels_tsv())
    with pytest.raises(ValueError, match="listed twice"):
        RetrievalRun.from_tsv(run.run_tsv(), run.qrels_tsv() + "q1\t3\tleft lung\n")
