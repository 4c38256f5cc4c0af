"""Test fixture: a small indexed service to test against without training anything.

:func:`build_random_model_index` writes phantom films (``DIR/data``), an encoder (``DIR/model``: the
given model, or a randomly initialised ``resnet10-cpu`` — its embeddings and classifier mean
nothing, but every code path runs), the anatomy atlas learned from the training films beside it
(``DIR/model/atlas.json``) and a milvus-lite index of every region of the training films
(``DIR/regions.db``, alias ``regions``), embedded in this process without Ray. Then::

    regionmir serve --model DIR/model --milvus DIR/regions.db --insecure-dev

:func:`build_random_model_index_subprocess` runs it as its own process (``python
tests/random_model_index.py --out DIR --json``): milvus-lite locks the ``.db`` file for the life
of the process that opened it, and the service's search replica must be the only one. The tests
and the service benchmarks use it; ``make demo`` is the real pipeline.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path

from regionmir.command_help import command_parser


def build_random_model_index(
    out: str,
    images: int = 10,
    size: int = 160,
    seed: int = 3,
    model: str | None = None,
    data: str | None = None,
    milvus: str | None = None,
) -> dict:
    from dataclasses import asdict

    import numpy as np
    import torch

    from indexing.index_rows import RegionRow
    from indexing.index_schema import model_collection_name
    from indexing.region_index import RegionIndex
    from regionmir.anatomy import ANATOMY_NAMES, STANDARD_29_IDS
    from regionmir.anatomy_atlas import AnatomyAtlas
    from regionmir.dataset import open_dataset
    from regionmir.encoder import RegionEncoder, load_preset
    from regionmir.image_reader import read_image
    from regionmir.inference import embed_crops
    from regionmir.model_contract import ModelContract, load_model, save_model
    from regionmir.roi_crop import CropConfig, roi_crops
    from regionmir.synth.dataset_writer import write_phantom_dataset

    started = time.perf_counter()
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    data_dir = data or str(root / "data")
    if data is None and not (root / "data" / "synth_info.json").exists():
        write_phantom_dataset(data_dir, images=images, size=size, seed=seed, progress=False)
    model_dir = model or str(root / "model")
    if model is None and not (root / "model" / "contract.json").exists():
        torch.manual_seed(seed)
        config = load_preset("resnet10-cpu")
        contract = ModelContract(
            stage="finetune",
            encoder=config.to_dict(),
            class_anatomy_ids=tuple(STANDARD_29_IDS),
            crop=asdict(CropConfig(size=config.crop_size)),
            training={"demo": "random init"},
        )
        save_model(model_dir, RegionEncoder(config), contract)
    encoder, contract = load_model(model_dir)
    encoder.eval()
    wanted = set(contract.class_anatomy_ids)

    records = list(open_dataset(data_dir).iter_images(split="train"))
    atlas = AnatomyAtlas.fit_records(records, source=f"train split of {data_dir}")
    atlas_path = atlas.save(model_dir)

    db = milvus or str(root / "regions.db")
    index = RegionIndex(db)
    collection = model_collection_name("regions", contract.version_id)  # as `regionmir index` names it
    index.create_collection(collection, contract.encoder_config.embedding_dim, exist_ok=True)
    rows = []
    for record in records:
        pixels = read_image(record.image_uri).pixels
        regions = [r for r in record.regions if r.anatomy_id in wanted]
        crops = roi_crops(pixels, [r.box for r in regions], contract.crop_config)
        vectors = embed_crops(encoder, crops).embeddings
        for region, vector in zip(regions, vectors):
            rows.append(
                RegionRow(
                    image_id=record.image_id,
                    anatomy_id=region.anatomy_id,
                    anatomy=ANATOMY_NAMES[region.anatomy_id],
                    image_uri=record.image_uri,
                    box=tuple(region.box.as_list()),
                    view=record.view or "PA",
                    split=record.split,
                    patient_hash=record.patient_hash,
                    study_hash=record.study_hash,
                    model_version=contract.version_id,
                    vector=np.asarray(vector, np.float32),
                )
            )
    index.upsert(collection, rows)
    index.flush(collection)
    index.verify(collection, len(rows))
    index.point_alias("regions", collection)
    index.close()
    films = [r.image_uri for r in open_dataset(data_dir).iter_images() if r.split != "train"]
    return {
        "data": data_dir,
        "model": model_dir,
        "atlas": atlas_path,
        "milvus": db,
        "collection": "regions",
        "rows": len(rows),
        "train_films": len(records),
        "query_films": films,
        "model_version": contract.version_id,
        "seconds": round(time.perf_counter() - started, 1),
    }


@contextlib.contextmanager
def in_process_service(root: Path, *, images: int, seed: int):
    """The query service's FastAPI app over a random-model index of ``images`` DICOM phantoms, in
    this process (no Ray, no HTTP server): a starlette ``TestClient`` carrying the parts the tests
    look at (``films``, ``encoder``, ``atlas``, ``contract``, ``settings``, ``search_runtime``) and
    ``build_app(**setting_overrides)`` for another app on the same backend."""
    from starlette.testclient import TestClient

    from regionmir.anatomy_atlas import AnatomyAtlas
    from regionmir.dataset import open_dataset
    from regionmir.model_contract import read_contract
    from regionmir.synth.dataset_writer import write_phantom_dataset
    from serving.api import create_app
    from serving.backends import local_backend
    from serving.config import ServeSettings
    from serving.runtime import EncoderRuntime, SearchRuntime

    write_phantom_dataset(str(root / "data"), images=images, size=160, seed=seed, fmt="dicom", progress=False)
    built = build_random_model_index(str(root / "built"), data=str(root / "data"))
    model_dir, contract = read_contract(built["model"])

    def settings(**overrides) -> ServeSettings:
        return ServeSettings.load(env={}, overrides={"model": model_dir, "milvus": built["milvus"], **overrides})

    encoder = EncoderRuntime(model_dir, threads=1)
    backend = local_backend(encoder, SearchRuntime(built["milvus"], "regions", contract.version_id))
    atlas = AnatomyAtlas.load(model_dir)
    try:
        with TestClient(create_app(settings(), backend, contract, atlas)) as client:
            client.films = list(open_dataset(str(root / "data")).iter_images())
            client.encoder, client.atlas, client.contract, client.settings = encoder, atlas, contract, settings()
            client.search_runtime = backend.index.runtime
            client.build_app = lambda **overrides: create_app(settings(**overrides), backend, contract, atlas)
            yield client
    finally:
        backend.index.runtime.close()


def build_random_model_index_subprocess(out: str, **kw) -> dict:
    """:func:`build_random_model_index` in a child process (so this process never locks the ``.db`` file)."""
    import subprocess

    args = [sys.executable, str(Path(__file__).resolve()), "--out", str(out), "--json"]
    for key, value in kw.items():
        if value is not None:
            args += [f"--{key}", str(value)]
    env = dict(os.environ)
    project = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = project + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    done = subprocess.run(args, capture_output=True, text=True, env=env, cwd=project, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"random_model_index failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = command_parser(prog="python tests/random_model_index.py", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--images", type=int, default=10)
    p.add_argument("--size", type=int, default=160)
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--model", help="serve this trained model instead of a random one")
    p.add_argument("--data", help="index this data set instead of writing phantoms")
    p.add_argument("--milvus", help="index into this Milvus (http://host:port or a .db) instead of OUT/regions.db")
    p.add_argument("--json", action="store_true", help="print only the summary as one JSON line")
    args = p.parse_args(argv)
    summary = build_random_model_index(
        args.out,
        images=args.images,
        size=args.size,
        seed=args.seed,
        model=args.model,
        data=args.data,
        milvus=args.milvus,
    )
    if args.json:
        print(json.dumps(summary))
    else:
        print(json.dumps(summary, indent=1))
        print(
            f"\nnow: regionmir serve --model {summary['model']} --milvus {summary['milvus']} --insecure-dev"
            "\n(a real deployment sets REGIONMIR_API_KEY and REGIONMIR_ID_SALT instead of --insecure-dev)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
