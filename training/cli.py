"""``regionmir pretrain`` / ``finetune`` / ``ablate``: argument parsing for the Ray training layer.

Registered through the ``regionmir.commands`` entry-point group, so the pure library's CLI never
imports this layer.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from regionmir.command_help import command_parser
from regionmir.console import configure_command_logging
from regionmir.errors import RegionMIRError

from .run import PLACEMENTS, TrainOptions, run_training

SCALING_HELP = (
    "Defaults fit a 2-core laptop (resnet10-cpu preset, 32 px crops, 2 CPU workers). On a "
    "GPU cluster: --gpu --workers N --preset resnet18 --batch-size 256 --epochs 50."
)


def _common(parser: argparse.ArgumentParser, stage: str) -> None:
    """The flags both commands share; their defaults are those of :class:`~training.run.TrainOptions`."""
    parser.add_argument("--data", required=True, help="Chest ImaGenome root or manifest, local or s3://")
    parser.add_argument("--out", required=True, help="output folder or s3:// prefix (checkpoints, models)")
    parser.add_argument(
        "--workers", type=int, default=TrainOptions.workers, help=f"Ray Train workers (default {TrainOptions.workers})"
    )
    parser.add_argument("--gpu", action="store_true", help="one GPU per worker, NCCL, bf16 autocast")
    parser.add_argument("--epochs", type=int, default=TrainOptions.epochs, help=f"default {TrainOptions.epochs}")
    parser.add_argument("--batch-size", type=int, default=TrainOptions.batch_size, help="per worker")
    parser.add_argument("--lr", type=float, default=TrainOptions.lr)
    parser.add_argument(
        "--temperature", type=float, default=TrainOptions.temperature, help="contrastive loss temperature"
    )
    parser.add_argument("--seed", type=int, default=TrainOptions.seed)
    parser.add_argument("--preset", default=TrainOptions.preset, help="encoder preset (regionmir/presets)")
    parser.add_argument("--regions", choices=("standard29", "all36"), default=TrainOptions.regions)
    parser.add_argument(
        "--crop-cache",
        default=TrainOptions.crop_cache,
        help="auto (DATA/crop-cache), off (decode films every epoch), or a folder/URI",
    )
    parser.add_argument(
        "--max-failures", type=int, default=TrainOptions.max_failures, help="worker failures to recover from"
    )
    parser.add_argument(
        "--max-bad-fraction",
        type=float,
        default=TrainOptions.max_bad_fraction,
        help="stop when more than this fraction of films cannot be read",
    )
    parser.add_argument("--resume", action="store_true", help="continue the run already in --out")
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or a local Ray)")
    parser.add_argument(
        "--placement",
        choices=PLACEMENTS,
        default=TrainOptions.placement,
        help="where the workers go on a cluster: PACK (fewest nodes, default), SPREAD (across "
        "nodes, best effort), STRICT_SPREAD (one node per worker)",
    )


def _run(options: TrainOptions) -> int:
    try:
        summary = run_training(options)
    except RegionMIRError as exc:
        print(f"regionmir {options.stage}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=1, default=str))
    return 0


def pretrain_main(argv: Sequence[str]) -> int:
    parser = command_parser(
        prog="regionmir pretrain",
        epilog=SCALING_HELP,
        description="Region-contrastive pretraining on ROI crops (Ray Train).",
    )
    _common(parser, "pretrain")
    parser.add_argument(
        "--objective",
        choices=("simclr", "supcon"),
        default="supcon",
        help="supcon (supervised contrastive over the region names, default) or simclr (label-free)",
    )
    args = parser.parse_args(list(argv))
    configure_command_logging("pretrain", args)
    return _run(TrainOptions(stage="pretrain", objective=args.objective, **_shared(args)))


def finetune_main(argv: Sequence[str]) -> int:
    parser = command_parser(
        prog="regionmir finetune",
        epilog=SCALING_HELP,
        description="Anatomy fine-tuning from a pretrained model or from scratch.",
    )
    _common(parser, "finetune")
    parser.add_argument("--init", help="pretrained model folder (a pretrain --out, or its best/)")
    parser.add_argument("--cotrain", action="store_true", help="add the contrastive loss (co-training)")
    parser.add_argument(
        "--objective", choices=("simclr", "supcon"), default="simclr", help="contrastive loss used with --cotrain"
    )
    args = parser.parse_args(list(argv))
    configure_command_logging("finetune", args)
    return _run(
        TrainOptions(stage="finetune", init=args.init, cotrain=args.cotrain, objective=args.objective, **_shared(args))
    )


def _shared(args: argparse.Namespace) -> dict:
    return dict(
        data=args.data,
        out=args.out,
        workers=args.workers,
        gpu=args.gpu,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        temperature=args.temperature,
        seed=args.seed,
        preset=args.preset,
        regions=args.regions,
        crop_cache=args.crop_cache,
        max_failures=args.max_failures,
        max_bad_fraction=args.max_bad_fraction,
        resume=args.resume,
        address=args.address,
        placement=args.placement,
    )
