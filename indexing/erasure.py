"""``regionmir delete``: erase one patient's, study's or image's rows from the index and the crop caches.

    regionmir delete --milvus URI (--patient ID | --study UID | --image ID) [--crop-cache DIR ...]

An erasure request names a patient (or a study, or one image) in the clear; the index holds only
salted hashes (:mod:`regionmir.identifiers`), so the ID is hashed here with ``REGIONMIR_ID_SALT``
— the salt the index was built with — and never printed or logged. Every collection on the server
(or in the milvus-lite file) loses the matching rows, whatever model version or alias they serve;
each crop cache given loses the crops of the same images (its shards rewritten, its
``_COMPLETE.json`` row count updated). Running it again deletes nothing and says so: the
command is idempotent and prints what it removed as one JSON object.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from regionmir import storage
from regionmir.command_help import command_parser
from regionmir.console import configure_command_logging
from regionmir.crop_cache_layout import COMPLETE_MARKER, SHARD_GLOB
from regionmir.errors import RegionMIRError
from regionmir.identifiers import SALT_ENV, hash_identifier

from .region_index import RegionIndex


def erase(
    milvus: str,
    *,
    patient: str | None = None,
    study: str | None = None,
    image: str | None = None,
    crop_caches: Sequence[str] = (),
    default_salt: bool = False,
) -> dict:
    """Delete the selected rows everywhere; returns what was removed (hashes, never raw ids).

    Order, so that a run stopped half-way can simply be run again: check the crop caches and
    the salt; find the selected images in every collection; erase their crops; then delete the
    rows, collection by collection (a collection that fails is reported, the others go on).
    """
    given = [v for v in (patient, study, image) if v]
    if len(given) != 1:
        raise ValueError("give exactly one of --patient, --study, --image")
    if (patient or study) and not os.environ.get(SALT_ENV) and not default_salt:
        raise ValueError(
            f"{SALT_ENV} is not set: the id would be hashed with the public default salt and match "
            "nothing in an index built with your salt. Set it (the index's salt), or pass "
            "--default-salt for an index built without one (a demo)"
        )
    roots = [Path(cache) for cache in crop_caches]
    for root in roots:
        if "://" in str(root) or not root.is_dir():
            raise FileNotFoundError(f"crop cache {root}: no such local folder")
    selector = (
        {"patient_hash": hash_identifier(patient)}
        if patient
        else {"study_hash": hash_identifier(study)}
        if study
        else {"image_id": str(image).strip()}
    )
    index = RegionIndex(milvus)
    rows_deleted: dict[str, int] = {}
    failed: dict[str, str] = {}
    try:
        collections = index.collections()
        images: set[str] = {selector["image_id"]} if "image_id" in selector else set()
        for collection in collections:
            try:
                images.update(index.images_of(collection, **selector))
            except RegionMIRError as exc:
                failed[collection] = exc.message
        crops_deleted = {str(root): _erase_from_crop_cache(root, images) for root in roots}
        for collection in collections:
            if collection in failed:
                continue
            try:
                before = index.count_all(collection)
                index.delete_rows(collection, **selector)
                rows_deleted[collection] = before - index.count_all(collection)
            except RegionMIRError as exc:
                failed[collection] = exc.message
    finally:
        index.close()
    what, value = next(iter(selector.items()))
    return {
        "selector": what,
        "value": value,
        "images": len(images),
        "rows_deleted": rows_deleted,
        "rows_deleted_total": sum(rows_deleted.values()),
        "crop_rows_deleted": crops_deleted,
        "failed": failed,
    }


def _erase_from_crop_cache(root: Path, images: set[str]) -> int:
    """Rewrite every Parquet shard under ``root`` without the crops of ``images``; returns how
    many crops were removed. A split's ``_COMPLETE.json`` row count follows."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    if not images:
        return 0
    wanted = pa.array(sorted(images))
    removed = 0
    for marker in sorted(root.rglob(COMPLETE_MARKER)):
        split_removed = 0
        for shard in sorted(marker.parent.glob(SHARD_GLOB)):
            table = pq.read_table(shard)
            kept = table.filter(pc.invert(pc.is_in(table["image_id"], value_set=wanted)))
            if kept.num_rows != table.num_rows:
                split_removed += table.num_rows - kept.num_rows
                buffer = pa.BufferOutputStream()
                pq.write_table(kept, buffer)
                storage.write_bytes(str(shard), buffer.getvalue().to_pybytes())  # whole or not at all
        if split_removed:
            info = json.loads(marker.read_text())
            info["rows"] = int(info.get("rows", 0)) - split_removed
            storage.write_text(str(marker), json.dumps(info, indent=1))
        removed += split_removed
    return removed


def delete_main(argv: Sequence[str]) -> int:
    parser = command_parser(prog="regionmir delete", description=__doc__.splitlines()[0])
    parser.add_argument("--milvus", required=True, help="PATH.db (milvus-lite) or http(s)://host:port")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--patient", help="patient id as in the data (hashed here with REGIONMIR_ID_SALT)")
    which.add_argument("--study", help="study id / StudyInstanceUID as in the data (hashed likewise)")
    which.add_argument("--image", help="image id (dicom_id) as in the index")
    parser.add_argument(
        "--crop-cache",
        action="append",
        default=[],
        metavar="DIR",
        help="a local crop cache folder to erase the same images from (repeatable)",
    )
    parser.add_argument(
        "--default-salt",
        action="store_true",
        help="hash with the public default salt (an index built without REGIONMIR_ID_SALT: demos)",
    )
    args = parser.parse_args(list(argv))
    configure_command_logging("delete", args)
    try:
        summary = erase(
            args.milvus,
            patient=args.patient,
            study=args.study,
            image=args.image,
            crop_caches=args.crop_cache,
            default_salt=args.default_salt,
        )
    except (RegionMIRError, ValueError, FileNotFoundError) as exc:
        print(f"regionmir delete: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=1))
    if summary["failed"]:
        print(
            f"regionmir delete: {len(summary['failed'])} collection(s) could not be erased (see 'failed'); "
            "run the same command again once they are reachable",
            file=sys.stderr,
        )
        return 1
    if not summary["rows_deleted_total"] and not any(summary["crop_rows_deleted"].values()):
        print("regionmir delete: nothing matched (already erased, or another salt/id)", file=sys.stderr)
    return 0
