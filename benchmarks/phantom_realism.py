"""How real do the phantoms look? Both presets against real chest films, in one run, one JSON line.

Real films: the NIH ChestX-ray14 PNGs in ``shared/reference/nih-cxr14`` (PA, 1024 px, pixel
spacing from the original width in ``labels.csv`` at NIH's 0.143 mm detector pitch) and the CR
chest film of PyPI's ``pydicom-data`` (``RG1_UNCR.dcm``: its other encodings are the same film;
spacing from the DICOM). Phantoms: ``--films`` films of each preset (``classic`` = generator 1,
today's films before the realistic preset; ``realistic`` = the default), rendered at ``--size`` px
over the generator's 417 mm field and passed through the same 8-bit PNG encoding ``synth``
writes. The protocol (``regionmir.realism.RealismProtocol``: common 1.0 mm spacing, 48 px crops,
48 crops per film, 4 folds split by film, one small CNN trained with each of the seeds 0–4) is the
same for both presets.

    .venv/bin/python benchmarks/phantom_realism.py [--films 24] [--picture docs/phantoms_vs_real.png]

Prints one JSON line: per preset the histogram distance (EMD on [0, 1]), the radial power
spectrum's RMS distance (decades) and the domain-classifier AUC (0.5 = indistinguishable): the
mean over the five classifier seeds, with their sd and each seed's AUC (one CNN's AUC moves by
about a tenth with its seed, and from one machine to another).
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from regionmir.image_reader import read_image
from regionmir.realism import Film, RealismProtocol, real_spectrum, realism_report
from regionmir.synth.dataset_writer import phantom_params, png_bytes
from regionmir.synth.phantom_film import render_film

#: The field of view a phantom film covers (its DICOMs carry 0.139 mm x 3000 px / size).
PHANTOM_FIELD_MM = 0.139 * 3000
NIH_DETECTOR_PITCH_MM = 0.143
CR_READER_PITCH_MM = 0.171
REPO = Path(__file__).resolve().parents[1]


def find_reference_dir(explicit: str | None) -> Path:
    candidates = (
        [Path(explicit)]
        if explicit
        else [REPO / "shared" / "reference" / "nih-cxr14", REPO.parent / "shared" / "reference" / "nih-cxr14"]
    )
    for path in candidates:
        if (path / "labels.csv").exists():
            return path
    raise SystemExit(
        f"no NIH reference films found (looked in {', '.join(map(str, candidates))}); pass --reference DIR"
    )


def nih_films(folder: Path) -> list[Film]:
    films = []
    with open(folder / "labels.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            decoded = read_image(str(folder / row["image"]))
            spacing = NIH_DETECTOR_PITCH_MM * float(row["orig_width"]) / decoded.pixels.shape[1]
            films.append(Film(f"nih:{row['image']}", decoded.pixels, spacing))
    return films


def pydicom_data_film() -> Film | None:
    spec = importlib.util.find_spec("data_store")  # pydicom-data's top-level package
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "RG1_UNCR.dcm"
    if not path.exists():
        return None
    import pydicom

    header = pydicom.dcmread(path, stop_before_pixels=True)
    pitch = [float(v) for v in (header.get("ImagerPixelSpacing") or header.get("PixelSpacing") or [0])]
    # this file's PixelSpacing is 0.000: take the CR reader's 0.171 mm pitch, which makes the
    # rib cage (about 1800 px across) 31 cm wide, an adult's
    spacing = pitch[0] if pitch[0] > 0 else CR_READER_PITCH_MM
    decoded = read_image(str(path))
    return Film("pydicom-data:RG1_UNCR.dcm", decoded.pixels, spacing)


def phantom_films(preset: str, films: int, size: int, seed: int) -> list[Film]:
    out = []
    for index in range(films):
        film = render_film(phantom_params(seed, index, preset), size)
        pixels = np.asarray(Image.open(io.BytesIO(png_bytes(film.image))), dtype=np.float32) / 255.0
        out.append(Film(f"{preset}:{index}", pixels, PHANTOM_FIELD_MM / size))
    return out


def side_by_side(real: list[Film], rows: dict[str, list[Film]], path: Path, cell: int = 200) -> None:
    """Real films on the first row, then one row per preset, each film letterboxed to ``cell``."""
    from regionmir.contact_sheet import contact_sheet

    pictures, captions = [], []
    columns = max(len(real), 4)
    for label, films in [("real", real)] + list(rows.items()):
        for film in films[:columns]:
            image = Image.fromarray((np.clip(film.pixels, 0, 1) * 255).astype(np.uint8), mode="L")
            image.thumbnail((cell, cell))
            pictures.append(image.convert("RGB"))
            captions.append(f"{label}: {film.name.split(':', 1)[1]}")
        for _ in range(columns - len(films[:columns])):
            pictures.append(Image.new("RGB", (cell, cell), (24, 24, 28)))
            captions.append("")
    sheet = contact_sheet(pictures, captions, columns=columns, title="real films (top) and phantoms by preset")
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--films", type=int, default=24, help="phantom films per preset")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--seed", type=int, default=7, help="phantom data seed")
    parser.add_argument("--reference", help="folder of NIH reference PNGs with labels.csv")
    parser.add_argument("--presets", default="classic,realistic")
    parser.add_argument("--picture", help="write the side-by-side picture here")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    real = nih_films(find_reference_dir(args.reference))
    dicom = pydicom_data_film()
    if dicom is not None:
        real.append(dicom)
    else:
        print("phantom_realism: pydicom-data is not installed; measuring against the NIH films only", file=sys.stderr)
    protocol = RealismProtocol()
    result: dict = {
        "benchmark": "phantom_realism",
        "protocol": protocol.as_dict(),
        "real_films": [f.name for f in real],
        "phantom_size": args.size,
        "real_spectrum": real_spectrum(real, protocol),
        "presets": {},
    }
    rows = {}
    for preset in args.presets.split(","):
        films = phantom_films(preset, args.films, args.size, args.seed)
        rows[preset] = films
        print(f"phantom_realism: measuring {preset} ({len(films)} films)", file=sys.stderr, flush=True)
        result["presets"][preset] = realism_report(films, real, protocol)
    if args.picture:
        side_by_side(real, rows, Path(args.picture))
        result["picture"] = args.picture
    result["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
