"""The ``regionmir`` command. ``main(argv)`` takes an argument list so tests run it in-process.

Subcommands of the pure library live here; the layers above it (training, serving) register
theirs in the ``regionmir.commands`` entry-point group (see ``pyproject.toml``), loaded only when
one of them runs, so ``regionmir synth`` never imports Ray and the library never imports a layer.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Callable, Sequence

from .command_help import DefaultsHelpFormatter, command_parser, logging_options_parser, version
from .console import configure_command_logging
from .errors import RegionMIRError

ENTRY_POINT_GROUP = "regionmir.commands"


def plugin_commands() -> dict[str, object]:
    """Subcommands registered by installed layers: name → entry point (loaded on use)."""
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def _cmd_synth(args: argparse.Namespace) -> int:
    from .synth.dataset_writer import write_phantom_dataset
    from .synth.preview import write_preview

    summary = write_phantom_dataset(
        args.out,
        images=args.images,
        size=args.size,
        seed=args.seed,
        fmt=args.format,
        progress=not args.quiet,
        preset=args.preset,
        workers=args.workers,
    )
    if args.preview:
        summary["preview"] = write_preview(args.out, args.preview if isinstance(args.preview, str) else None)
    print(json.dumps(summary, indent=1))
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from .image_reader import describe, read_image
    from .intensity import to_uint8

    decoded = read_image(args.file, window_index=args.window)
    print(describe(decoded))
    if args.png:
        import io

        from PIL import Image

        from . import storage

        buffer = io.BytesIO()
        Image.fromarray(to_uint8(decoded.pixels), mode="L").save(buffer, format="PNG")
        storage.write_bytes(args.png, buffer.getvalue())
        print(f"wrote {args.png} (8-bit, bright = dense)")
    return 0


def _cmd_scan(args: argparse.Namespace) -> int:
    from .dataset import open_dataset

    reader = open_dataset(args.data)
    counts: dict[str, int] = {}
    regions = 0
    for image in reader.iter_images(split=args.split):
        counts[image.split or "unsplit"] = counts.get(image.split or "unsplit", 0) + 1
        regions += len(image.regions)
    print(reader.describe())
    print(f"images by split: {json.dumps(counts, sort_keys=True)}; regions: {regions}")
    print(reader.report.summary())
    return 0


def _cmd_anatomies(args: argparse.Namespace) -> int:
    from .anatomy import ANATOMY_NAMES, STANDARD_29

    for i, name in enumerate(ANATOMY_NAMES):
        print(f"{i:2d}  {name}{'' if name in STANDARD_29 else '   (not in the standard 29)'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(
        prog="regionmir", description=__doc__.splitlines()[0] if __doc__ else None, logging_options=False
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    add = functools.partial(sub.add_parser, formatter_class=DefaultsHelpFormatter, parents=[logging_options_parser()])

    p = add("synth", help="write phantom chest films in the Chest ImaGenome layout")
    p.add_argument("--out", required=True, help="folder or s3:// prefix to write")
    p.add_argument("--images", type=int, default=100, help="films to write")
    p.add_argument("--size", type=int, default=512, help="film side in pixels (square)")
    p.add_argument("--seed", type=int, default=0, help="random seed (the same seed writes the same films)")
    p.add_argument("--format", choices=("png", "dicom"), default="png", help="file format of the films")
    p.add_argument(
        "--preset",
        choices=("realistic", "classic"),
        default="realistic",
        help="realistic (default): films that vary like an archive's (positioning, processing, "
        "devices, findings); classic: generator 1's narrow, easy films",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="rendering processes (default: one per core; 1 renders in this process)",
    )
    p.add_argument(
        "--preview",
        nargs="?",
        const=True,
        default=False,
        help="also write a contact sheet PNG (default OUT/preview.png)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=_cmd_synth)

    p = add("inspect", help="show how a DICOM/PNG/JPEG decodes; optionally write it as PNG")
    p.add_argument("file", help="path or s3:// URI")
    p.add_argument("--png", help="write the normalised image (8-bit, bright = dense) here")
    p.add_argument("--window", type=int, default=0, help="which DICOM VOI window to use (default the first)")
    p.set_defaults(func=_cmd_inspect)

    p = add("scan", help="read a data set's labels and report what was skipped and why")
    p.add_argument("data", help="Chest ImaGenome root or manifest (.csv/.jsonl), local or s3://")
    p.add_argument("--split", choices=("train", "valid", "test"))
    p.set_defaults(func=_cmd_scan)

    p = add("anatomies", help="list the 36 region names and ids")
    p.set_defaults(func=_cmd_anatomies)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    plugins = plugin_commands()
    if argv and argv[0] in plugins:
        run: Callable[[list[str]], int] = plugins[argv[0]].load()
        return int(run(argv[1:]) or 0)
    parser = build_parser()
    if plugins:
        parser.epilog = "more commands: " + ", ".join(sorted(plugins)) + " (each with --help)"
    args = parser.parse_args(argv)
    configure_command_logging(args.command, args, stdout=sys.stderr)  # stdout: the result only
    try:
        return int(args.func(args) or 0)
    except RegionMIRError as exc:
        print(f"regionmir {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
