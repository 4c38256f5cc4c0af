"""``regionmir evaluate``: query the index the way the service will and measure retrieval.

Queries are the test-split ROIs, embedded by the model; the database is what the alias holds of
this model's version, restricted to the train split (the paper retrieves "images with similar
regions from training samples") and, by default, without the query's own patient; relevant = same
anatomy. Reports anatomy-classification accuracy (the model's classifier on the queries),
precision@1/5/10, standard mAP@k (AP divided by min(k, R), R = the relevant rows left after the
same exclusions as the ranking), nDCG@k, MRR@k and hit rate@k — overall and per anatomy — as
``metrics.json`` and ``report.md``, the ranked lists and R of every query as ``run.tsv`` and
``qrels.tsv`` (see :mod:`regionmir.retrieval_run`), with ``confusion_matrix.png`` and
``retrieval_examples.png`` (query crops beside their top results, framed green/red).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Sequence

import numpy as np

from regionmir import storage
from regionmir.anatomy import ANATOMY_NAMES
from regionmir.bad_films import BadFilms
from regionmir.boxes import Box
from regionmir.classification_metrics import classification_report, confusion_matrix, plot_confusion_matrix
from regionmir.command_help import command_parser
from regionmir.console import configure_command_logging
from regionmir.dataset import films_by_split
from regionmir.errors import DatasetError, RegionMIRError
from regionmir.image_reader import read_image
from regionmir.model_contract import read_contract
from regionmir.retrieval_grid import QueryRow, RetrievedCrop, retrieval_grid
from regionmir.retrieval_run import RankedHit, RetrievalRun
from regionmir.roi_crop import roi_crop
from regionmir.sealed_location import open_location
from regionmir.storage import S3Options

from .index_schema import row_key
from .jobs import EvaluationJob
from .region_index import RegionIndex

log = logging.getLogger(__name__)

KS = (1, 5, 10)


def evaluate(job: EvaluationJob, s3: S3Options | None = None) -> dict:
    """Run ``job`` (see :class:`~indexing.jobs.EvaluationJob`): embed the queries, search the index the way
    the service does, and write the report; returns the metrics (as ``metrics.json``)."""
    from .localization_eval import localization_report, model_atlas

    started = time.perf_counter()
    s3 = s3 or S3Options.from_env()
    model_dir, contract = read_contract(job.model, s3)
    records, _ = films_by_split(job.data, s3, tuple(dict.fromkeys((job.query_split, "train"))))
    if not records[job.query_split]:
        raise DatasetError(job.data, f"no films in the query split {job.query_split!r}")
    localization: dict = {}
    if job.localize_films > 0:
        atlas = model_atlas(model_dir, records["train"], s3, source=f"train split of {job.data}")
        films = records[job.query_split][: job.localize_films]
        log.info(
            f"localising every region of {len(films)} {job.query_split} films from the film alone "
            f"(atlas of {atlas.images} films + the model's classifier)",
        )
        localization = localization_report(atlas, films, model_dir, s3)
    index = RegionIndex(job.milvus)
    try:
        return _evaluate(index, job, model_dir, contract, records, s3, started, localization)
    finally:
        index.close()  # also on failure: milvus-lite admits one open client per file


def _evaluate(index, job: EvaluationJob, model_dir, contract, records, s3, started, localization) -> dict:
    from cluster.ray_runtime import start_ray

    from .roi_embedding import IN_PROCESS_MAX_FILMS, embedded_batches

    version = contract.version_id
    database_rows = index.count(job.collection, split=job.database_split, model_version=version)
    if database_rows == 0:
        raise DatasetError(
            job.collection,
            f"the index holds no rows of model {version} in the "
            f"{job.database_split or 'whole'} split: run `regionmir index` with this model first",
        )
    if job.k < max(KS):
        raise ValueError(f"k must be at least {max(KS)}, got {job.k}")
    if job.embed == "ray" or (job.embed == "auto" and len(records[job.query_split]) > IN_PROCESS_MAX_FILMS):
        start_ray(job.address)
        mode = "ray"
    else:
        mode = "local"
    log.info(
        f"embedding {len(records[job.query_split])} {job.query_split} films "
        f"{'with Ray Data' if mode == 'ray' else 'in this process'}",
    )
    queries: dict[str, list] = {
        "vector": [],
        "anatomy_id": [],
        "predicted_anatomy_id": [],
        "crop": [],
        "confidence": [],
        "image_id": [],
        "patient_hash": [],
    }
    skipped = BadFilms(job.data, len(records[job.query_split]), job.max_bad_fraction)
    for batch in embedded_batches(
        records[job.query_split], model_dir, contract.crop_config, contract.class_anatomy_ids, s3, mode=mode
    ):
        batch = skipped.filter(batch)
        for name in queries:
            queries[name].extend(batch[name])
    vectors = np.stack(queries["vector"]).astype(np.float32)
    truth = np.asarray(queries["anatomy_id"], dtype=np.int64)
    patients = [str(p) if job.exclude_same_patient else "" for p in queries["patient_hash"]]
    log.info(
        f"{len(truth)} {job.query_split} queries against {database_rows} rows of {job.collection} "
        f"(model {version}, database split: {job.database_split or 'all'}, "
        f"{'without' if job.exclude_same_patient else 'with'} the query's own patient)",
    )
    hits, latencies = search_queries(
        index, job.collection, vectors, patients, job.k, split=job.database_split, model_version=version
    )
    num_relevant = relevant_counts(
        index, job.collection, truth, patients, split=job.database_split, model_version=version
    )
    run = RetrievalRun()
    for q, row in enumerate(hits):
        run.add(
            row_key(str(queries["image_id"][q]), int(truth[q]), version),
            ANATOMY_NAMES[truth[q]],
            num_relevant[q],
            [RankedHit(h.key, h.anatomy, h.score) for h in row[: job.k]],
        )
    retrieval = run.report(KS)
    storage.write_text(storage.join(job.report_dir, "run.tsv"), run.run_tsv(), s3)
    storage.write_text(storage.join(job.report_dir, "qrels.tsv"), run.qrels_tsv(), s3)
    class_ids = list(contract.class_anatomy_ids)
    position = {a: i for i, a in enumerate(class_ids)}
    names = [ANATOMY_NAMES[a] for a in class_ids]
    y_true = np.asarray([position[a] for a in truth])
    y_pred = np.asarray([position[int(a)] for a in queries["predicted_anatomy_id"]])
    classification = classification_report(y_true, y_pred, names)
    per_anatomy = {}
    for name, entry in retrieval["per_anatomy"].items():
        per_anatomy[name] = {
            "queries": entry["num_queries"],
            "accuracy": classification["per_class"].get(name, {}).get("accuracy"),
            **{m: entry[m] for m in ("p@1", "p@5", "p@10", "map@10", "ndcg@10", "mrr@10", "hit@10")},
        }
    metrics = {
        "accuracy": classification["accuracy"],
        "balanced_accuracy": classification["balanced_accuracy"],
        **{m: retrieval[m] for m in retrieval if m.startswith(("p@", "map@", "ndcg@", "mrr@", "hit@"))},
        "macro": retrieval["macro"],
        "per_anatomy": per_anatomy,
        "top_confusions": classification["top_confusions"],
        "queries": int(len(truth)),
        "films_skipped": skipped.count,
        "database_rows": database_rows,
        "collection": job.collection,
        "database_split": job.database_split,
        "query_split": job.query_split,
        "model_version": version,
        "exclude_same_patient": job.exclude_same_patient,
        "files": {"run": storage.join(job.report_dir, "run.tsv"), "qrels": storage.join(job.report_dir, "qrels.tsv")},
        "search_ms_per_query_p50": round(float(np.median(latencies)), 3),
        "k": job.k,
        **localization,
        "seconds": round(time.perf_counter() - started, 1),
    }
    matrix = confusion_matrix(y_true, y_pred, len(names))
    with tempfile.TemporaryDirectory(prefix="regionmir-report-") as scratch:  # pictures are drawn locally,
        cm_local, examples_local = os.path.join(scratch, "cm.png"), os.path.join(scratch, "examples.png")
        plot_confusion_matrix(
            matrix,
            names,
            cm_local,
            title=f"Anatomy classification of {len(truth)} {job.query_split} regions "
            f"(accuracy {metrics['accuracy']:.1%})",
        )
        _draw_examples(queries, truth, hits, retrieval, job.examples, examples_local, contract.crop_config, s3)
        metrics["pictures"] = {}
        for name, local in (("confusion_matrix", cm_local), ("retrieval_examples", examples_local)):
            target = storage.join(job.report_dir, f"{name}.png")  # then copied to the report folder, local or s3://
            with open(local, "rb") as f:
                storage.write_bytes(target, f.read(), s3)
            metrics["pictures"][name] = target
    storage.write_text(storage.join(job.report_dir, "metrics.json"), json.dumps(metrics, indent=1), s3)
    storage.write_text(storage.join(job.report_dir, "report.md"), markdown_report(metrics), s3)
    return metrics


def search_queries(
    index: RegionIndex, collection: str, vectors: np.ndarray, patients: Sequence[str], k: int, **filters
) -> tuple[list, list[float]]:
    """Every query's top ``k`` (as the service searches), its own patient left out where
    ``patients[q]`` is a hash ("" keeps every row). Queries of one patient share a search call;
    returns the hits per query and the per-query milliseconds of each call."""
    hits: list = [None] * len(vectors)
    latencies: list[float] = []
    by_patient: dict[str, list[int]] = {}
    for q, patient in enumerate(patients):
        by_patient.setdefault(patient, []).append(q)
    for patient, members in by_patient.items():
        for start in range(0, len(members), 64):
            chunk = members[start : start + 64]
            t0 = time.perf_counter()
            found = index.search(collection, vectors[chunk], k, exclude_patient_hash=patient or None, **filters)
            latencies.append((time.perf_counter() - t0) * 1000 / len(chunk))
            for q, row in zip(chunk, found):
                hits[q] = row
    return hits, latencies


def relevant_counts(
    index: RegionIndex, collection: str, anatomies: np.ndarray, patients: Sequence[str], **filters
) -> np.ndarray:
    """(Q,) R of every query: the rows of its anatomy under ``filters``, less its own patient's
    rows when ``patients[q]`` is set — the same exclusions as :func:`search_queries`. One pass over
    the index (:meth:`RegionIndex.tally`), not a count per query."""
    tally = index.tally(collection, ("anatomy_id", "patient_hash"), **filters)
    per_anatomy: dict[int, int] = {}
    for (anatomy, _), n in tally.items():
        per_anatomy[int(anatomy)] = per_anatomy.get(int(anatomy), 0) + n
    return np.asarray(
        [per_anatomy.get(int(a), 0) - (tally.get((int(a), p), 0) if p else 0) for a, p in zip(anatomies, patients)],
        dtype=np.int64,
    )


def _draw_examples(queries, truth, hits, retrieval, count, path, crop, s3, per_row: int = 6) -> None:
    """One query from each of ``count`` anatomies: the worst by p@10 first, then spread over the rest."""
    by_anatomy = sorted(retrieval["per_anatomy"].items(), key=lambda kv: kv[1]["p@10"])
    chosen_names = [name for name, _ in by_anatomy[: count // 2]]
    rest = [name for name, _ in by_anatomy[count // 2 :]]
    chosen_names += rest[:: max(1, len(rest) // max(1, count - len(chosen_names)))][: count - len(chosen_names)]
    films: dict[str, np.ndarray] = {}
    rows = []
    for name in chosen_names:
        q = int(np.flatnonzero(truth == ANATOMY_NAMES.index(name))[0])
        results = []
        for hit in hits[q][:per_row]:
            if hit.image_uri not in films:  # the stored location is sealed (regionmir.sealed_location)
                films[hit.image_uri] = read_image(open_location(hit.image_uri, hit.image_id), s3=s3).pixels
            results.append(
                RetrievedCrop(
                    roi_crop(films[hit.image_uri], Box(*hit.box), crop),
                    hit.anatomy,
                    hit.score,
                    hit.anatomy_id == truth[q],
                )
            )
        rows.append(QueryRow(queries["crop"][q], name, results))
    retrieval_grid(rows, title="Test queries and their nearest training regions (green: same anatomy)").save(path)


def markdown_report(metrics: dict) -> str:
    lines = [
        f"# Retrieval evaluation — model {metrics['model_version']}",
        "",
        f"{metrics['queries']} {metrics['query_split']} queries against {metrics['database_rows']} rows of "
        f"`{metrics['collection']}` of model {metrics['model_version']} (database split: "
        f"{metrics['database_split'] or 'all'}; the query's own patient "
        f"{'excluded' if metrics.get('exclude_same_patient') else 'included'}); "
        "mAP@k is the standard AP@k (divided by min(k, R)); every ranked list and R are in `run.tsv` and "
        f"`qrels.tsv`; search p50 {metrics['search_ms_per_query_p50']} ms per query.",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    for name in (
        "accuracy",
        "balanced_accuracy",
        "p@1",
        "p@5",
        "p@10",
        "map@10",
        "ndcg@10",
        "mrr@10",
        "hit@1",
        "hit@5",
        "hit@10",
    ):
        if name in metrics:
            lines.append(f"| {name} | {metrics[name]:.4f} |")
    lines += [
        "",
        "| anatomy | queries | accuracy | p@1 | p@10 | mAP@10 | nDCG@10 | MRR@10 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, e in sorted(metrics["per_anatomy"].items(), key=lambda kv: kv[1]["p@10"]):
        accuracy = f"{e['accuracy']:.3f}" if e["accuracy"] is not None else "–"
        lines.append(
            f"| {name} | {e['queries']} | {accuracy} | {e['p@1']:.3f} | {e['p@10']:.3f} | "
            f"{e['map@10']:.3f} | {e['ndcg@10']:.3f} | {e['mrr@10']:.3f} |"
        )
    if metrics.get("localization_miou") is not None:
        lines += [
            "",
            f"Anatomy-only queries (no box): every region of {metrics['localization_films']} "
            f"{metrics['query_split']} films located from the film alone — mean IoU with the labelled "
            f"boxes {metrics['localization_miou']:.3f} (atlas prior alone "
            f"{metrics['localization_prior_miou']:.3f}; IoU ≥ 0.5 for "
            f"{metrics['localization_iou_at_0_5']:.1%} of {metrics['localization_regions']} regions).",
        ]
    lines += ["", "![confusion matrix](confusion_matrix.png)", "", "![retrieval examples](retrieval_examples.png)", ""]
    return "\n".join(lines)


def evaluate_main(argv: Sequence[str]) -> int:
    parser = command_parser(prog="regionmir evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--milvus", required=True)
    parser.add_argument("--collection", default=EvaluationJob.collection)
    parser.add_argument(
        "--report", required=True, help="folder for metrics.json, report.md, run.tsv, qrels.tsv and the pictures"
    )
    parser.add_argument("--query-split", default=EvaluationJob.query_split)
    parser.add_argument(
        "--database-split", default=EvaluationJob.database_split, help="'all' to search every indexed split"
    )
    parser.add_argument("--address")
    parser.add_argument(
        "--localize-films",
        type=int,
        default=EvaluationJob.localize_films,
        help="query films whose regions are localised without a box (0: skip)",
    )
    parser.add_argument(
        "--embed",
        choices=("auto", "ray", "local"),
        default=EvaluationJob.embed,
        help="embed the queries with Ray Data, in this process, or auto: in this process up to "
        "32 query films (default)",
    )
    parser.add_argument(
        "--include-same-patient",
        action="store_true",
        help="let a query retrieve its own patient's other films (default: excluded from the ranking and from R)",
    )
    args = parser.parse_args(list(argv))
    configure_command_logging("evaluate", args)
    try:
        metrics = evaluate(
            EvaluationJob(
                data=args.data,
                model=args.model,
                milvus=args.milvus,
                report_dir=args.report,
                collection=args.collection,
                query_split=args.query_split,
                database_split=None if args.database_split == "all" else args.database_split,
                address=args.address,
                localize_films=args.localize_films,
                embed=args.embed,
                exclude_same_patient=not args.include_same_patient,
            )
        )
    except RegionMIRError as exc:
        print(f"regionmir evaluate: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({k: v for k, v in metrics.items() if k not in ("per_anatomy", "top_confusions")}, indent=1))
    return 0
