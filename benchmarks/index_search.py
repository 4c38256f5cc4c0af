"""Index and search benchmark: is indexing as fast as the encoder, and is Milvus search exact enough?

Measured side by side in one run:

* ``encoder_rois_per_s``: the model embedding in-memory crops of the same films (one torch thread,
  as each encoder actor of ``regionmir index`` has);
* ``index_rois_per_s``: ``regionmir index`` end to end — Ray Data decoding and cropping the films,
  the encoder actor, and the driver upserting into milvus-lite — in steady state (from its first
  written batch; ``index_rois_per_s_total`` includes Ray start-up) and ``ratio_to_encoder``;
  ``--index-into milvus-lite,milvus-standalone`` also indexes into a Milvus standalone server, where
  the Ray workers upsert (``index`` holds each target's figures);
* ``search``: per backend (milvus-lite file, Milvus standalone server), database size (10k,
  100k rows; ``--million`` adds 1M on the server), index type (each backend's default for that size
  unless ``--index-types``: a milvus-lite file is FLAT and searched exactly from memory, a server
  FLAT up to 1M rows and HNSW M=16 efConstruction=200 beyond, searched once its index is built) and HNSW search list size (``--ef``,
  default the service's and 512), plain and filtered by anatomy as the service searches:
  single-query latency p50/p99 (k=10) and ``recall_at_10`` against exact NumPy search (for a
  filtered search, the exact nearest of that anatomy). The vectors are synthetic: 29 anatomy clusters on
  the unit sphere with spread like the fine-tuned embeddings', not random noise (uniform random
  128-d vectors have no neighbourhood structure for any index to use).

Run: ``.venv/bin/python benchmarks/index_search.py`` (``--sizes 10000`` for a quick run). The last
line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from indexing.region_index import DEFAULT_SEARCH_EF  # noqa: E402
from regionmir.anatomy import ANATOMY_NAMES, STANDARD_29_IDS  # noqa: E402
from regionmir.dataset import open_dataset  # noqa: E402
from regionmir.encoder import RegionEncoder, load_preset  # noqa: E402
from regionmir.image_reader import read_image  # noqa: E402
from regionmir.model_contract import ModelContract, load_model, save_model  # noqa: E402
from regionmir.retrieval_metrics import exact_knn  # noqa: E402
from regionmir.roi_crop import CropConfig, roi_crop  # noqa: E402


def make_model(directory: str) -> str:
    torch.manual_seed(0)
    config = load_preset("resnet10-cpu")
    contract = ModelContract(
        stage="finetune",
        encoder=config.to_dict(),
        class_anatomy_ids=tuple(STANDARD_29_IDS),
        crop=asdict(CropConfig(size=config.crop_size)),
        training={"benchmark": True},
    )
    save_model(directory, RegionEncoder(config), contract)
    return directory


def encoder_rate(data: str, model_dir: str, batch_size: int = 256) -> tuple[float, int]:
    model, contract = load_model(model_dir)
    model.eval()
    torch.set_num_threads(1)
    crops = []
    for record in open_dataset(data).iter_images():
        if record.split != "train":
            continue
        pixels = read_image(record.image_uri).pixels
        crops += [
            roi_crop(pixels, r.box, contract.crop_config)
            for r in record.regions
            if r.anatomy_id in contract.class_anatomy_ids
        ]
    x = torch.from_numpy(np.stack(crops))[:, None]
    with torch.no_grad():
        model.embed(x[:batch_size])  # warm-up
        started = time.perf_counter()
        for start in range(0, len(x), batch_size):
            model.embed(x[start : start + batch_size])
    return len(x) / (time.perf_counter() - started), len(x)


def clustered_vectors(
    n: int, dim: int, rng: np.random.Generator, spread: float = 0.35
) -> tuple[np.ndarray, np.ndarray]:
    centres = rng.normal(size=(len(STANDARD_29_IDS), dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = rng.integers(0, len(STANDARD_29_IDS), size=n)
    vectors = centres[labels] + rng.normal(scale=spread / np.sqrt(dim), size=(n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors.astype(np.float32), np.asarray(STANDARD_29_IDS)[labels]


def search_levels(
    backend: str,
    uri: str,
    n: int,
    dim: int,
    queries: int,
    efs: list[int],
    rng: np.random.Generator,
    consistency: str = "Bounded",
    index_type: str = "AUTO",
) -> list[dict]:
    from indexing.index_rows import RegionRow
    from indexing.region_index import RegionIndex

    database, anatomy_ids = clustered_vectors(n, dim, rng)
    probes, probe_anatomy = clustered_vectors(queries, dim, rng)
    index = RegionIndex(uri)
    if index_type == "AUTO":
        index_type = index.default_index_type(n)
    name = f"bench_{n}"
    index.drop(name, missing_ok=True)
    index.create_collection(name, dim, index_type=index_type)
    started = time.perf_counter()
    chunk = 5000
    for start in range(0, n, chunk):
        index.upsert(
            name,
            [
                RegionRow(
                    image_id=f"img-{i}",
                    anatomy_id=int(anatomy_ids[i]),
                    anatomy=ANATOMY_NAMES[int(anatomy_ids[i])],
                    image_uri=f"bench/{i}.png",
                    box=(0.0, 0.0, 10.0, 10.0),
                    view="PA",
                    split="train",
                    patient_hash="",
                    study_hash="",
                    model_version="bench",
                    vector=database[i],
                )
                for i in range(start, min(n, start + chunk))
            ],
        )
    index.flush(name)
    index.wait_until_indexed(name)  # a server searches a temporary index until its build ends
    index.verify(name, n)  # counted with Strong consistency
    insert_s = time.perf_counter() - started
    # Searched at the service's level: "Strong" makes a Milvus server wait for its next time tick
    # (~200 ms) on every search.
    index.consistency_level = consistency
    exact, _ = exact_knn(probes, database, 10)
    # the service's searches filter by the query's anatomy: their truth is the nearest of that anatomy
    exact_same_anatomy = []
    for q in range(queries):
        rows = np.flatnonzero(anatomy_ids == probe_anatomy[q])
        nearest, _ = exact_knn(probes[q : q + 1], database[rows], 10)
        exact_same_anatomy.append(rows[nearest[0]])
    index.search(name, probes[:1], 10)  # warm-up (load)
    levels = []
    for ef, filtered in [(ef, filtered) for ef in efs for filtered in (False, True)]:
        latencies, recalls = [], []
        for q in range(queries):
            anatomy = int(probe_anatomy[q]) if filtered else None
            t0 = time.perf_counter()
            hits = index.search(name, probes[q : q + 1], 10, ef=ef, anatomy=anatomy)[0]
            latencies.append((time.perf_counter() - t0) * 1000)
            found = {int(h.image_id.split("-")[1]) for h in hits}
            truth = exact_same_anatomy[q] if filtered else exact[q]
            recalls.append(len(found & set(truth.tolist())) / 10)
        levels.append(
            {
                "backend": backend,
                "index_type": index_type,
                "searched": "in memory, exact" if index.resident_search else "by Milvus",
                "vectors": n,
                "filter": "anatomy" if filtered else None,
                "ef": ef,
                "consistency": consistency,
                "p50_ms": round(float(np.percentile(latencies, 50)), 2),
                "p99_ms": round(float(np.percentile(latencies, 99)), 2),
                "recall_at_10": round(float(np.mean(recalls)), 4),
                "insert_rows_per_s": round(n / insert_s, 1),
                "queries": queries,
            }
        )
    index.drop(name)
    index.close()
    return levels


@contextlib.contextmanager
def backend_uri(backend: str, folder: str) -> Iterator[str]:
    """The URI of ``backend`` with its data in ``folder``: a milvus-lite file, or a Milvus
    standalone / milvus-lite server started here and stopped afterwards."""
    from indexing.local_milvus import MilvusLiteServer, MilvusStandaloneServer

    if backend == "milvus-lite":
        yield os.path.join(folder, "regions.db")
        return
    kinds = {"milvus-standalone": MilvusStandaloneServer, "milvus-lite-server": MilvusLiteServer}
    if backend not in kinds:
        raise SystemExit(f"unknown backend {backend} (choose from milvus-lite, {', '.join(kinds)})")
    server = kinds[backend](os.path.join(folder, "data"), log_dir=folder)
    server.start()
    try:
        yield server.uri
    finally:
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--films", type=int, default=200, help="phantom films for the indexing measurement")
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument(
        "--ef",
        default=f"{DEFAULT_SEARCH_EF},512",
        help="HNSW search list sizes to measure (the service's default first)",
    )
    parser.add_argument("--skip-index", action="store_true", help="search levels only")
    parser.add_argument(
        "--consistency",
        default="Bounded",
        choices=("Strong", "Bounded", "Eventually"),
        help="consistency level of the timed searches (the service uses Bounded)",
    )
    parser.add_argument("--backends", default="milvus-lite,milvus-standalone")
    parser.add_argument(
        "--index-into",
        default="milvus-lite",
        help="where the indexing measurement writes (comma-separated): milvus-lite (this process upserts) "
        "and/or milvus-standalone (a server: the Ray workers upsert)",
    )
    parser.add_argument(
        "--index-types",
        default="AUTO",
        help="vector index types to measure (comma-separated; AUTO: the backend's default for the size, "
        "see RegionIndex.default_index_type)",
    )
    parser.add_argument(
        "--million",
        action="store_true",
        help="add a 1,000,000-row level for the Milvus server (opt-in: ~10 minutes of inserts and index build)",
    )
    args = parser.parse_args()
    from indexing.build import index_data
    from indexing.jobs import IndexJob
    from regionmir.synth.dataset_writer import write_phantom_dataset

    work = tempfile.mkdtemp(prefix="regionmir-index-bench-")
    data = os.path.join(work, "data")
    if not args.skip_index:
        print(f"[bench] synthesising {args.films} phantom films into {data}", flush=True)
        write_phantom_dataset(data, images=args.films, size=256, seed=0, progress=False)
    result: dict = {"search": []}
    if not args.skip_index:
        model_dir = make_model(os.path.join(work, "model"))
        encoder_rois_per_s, rois = encoder_rate(data, model_dir)
        print(f"[bench] encoder alone: {encoder_rois_per_s:.0f} ROIs/s over {rois} ROIs", flush=True)
        result["encoder_rois_per_s"] = round(encoder_rois_per_s, 1)
        for target in [t for t in args.index_into.split(",") if t]:
            with backend_uri(target, os.path.join(work, f"index-{target}")) as uri:
                summary = index_data(IndexJob(data, model_dir, uri, collection="regions"))
            measured = {
                "index_rois_per_s": summary["rows_per_s_steady"],
                "index_rois_per_s_total": summary["rows_per_s"],
                "ratio_to_encoder": round(summary["rows_per_s_steady"] / encoder_rois_per_s, 3),
                "index_rows": summary["rows"],
                "upserts_from": summary["upserts_from"],
            }
            result.setdefault("index", {})[target] = measured
            if target == "milvus-lite":  # the headline figures, as before
                result.update(measured)
            print(
                f"[bench] regionmir index into {target} (upserts from the {summary['upserts_from']}): "
                f"{summary['rows_per_s_steady']} ROIs/s steady, {summary['rows_per_s']} with start-up; "
                f"ratio to the encoder {measured['ratio_to_encoder']}",
                flush=True,
            )
    sizes = [int(s) for s in args.sizes.split(",") if s]
    efs = [int(e) for e in args.ef.split(",") if e]
    for backend in [b for b in args.backends.split(",") if b]:  # --backends '': the indexing measurement only
        with backend_uri(backend, os.path.join(work, f"search-{backend}")) as uri:
            backend_sizes = sizes + ([1_000_000] if args.million and backend == "milvus-standalone" else [])
            for n, index_type in [(n, t) for n in backend_sizes for t in args.index_types.split(",") if t]:
                same_vectors = np.random.default_rng(n)  # every index type and backend searches the same data
                levels = search_levels(
                    backend, uri, n, 128, args.queries, efs, same_vectors, args.consistency, index_type
                )
                for level in levels:
                    print(
                        f"[bench] {backend} {index_type} {n} vectors{' filtered by anatomy' if level['filter'] else ''}, "
                        f"ef {level['ef']}: p50 {level['p50_ms']} ms, "
                        f"p99 {level['p99_ms']} ms, recall@10 {level['recall_at_10']} "
                        f"(inserted at {level['insert_rows_per_s']} rows/s)",
                        flush=True,
                    )
                    result["search"].append(level)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
