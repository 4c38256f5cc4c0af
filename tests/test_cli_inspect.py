"""`regionmir inspect` on a real chest film stored as MONOCHROME1: bright bones, dark lungs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, generate_uid

from regionmir.cli import main

NIH_PNG = Path(__file__).parent / "data" / "nih_00000001_000.png"


def monochrome1_dicom(path: Path, compress: bool) -> None:
    film = np.asarray(Image.open(NIH_PNG).convert("L")).astype(np.float64)
    stored = (4095 - np.round(film * 4095 / 255)).astype(np.uint16)  # MONOCHROME1: air is bright
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # CR
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.PatientID = "PATIENT-123"
    ds.Modality = "CR"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    ds.PixelData = stored.tobytes()
    if compress:
        ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg")
    ds.save_as(path, enforce_file_format=True)


def test_inspect_monochrome1_film_writes_bright_bone_dark_lung_png(tmp_path, capsys):
    dicom = tmp_path / "film.dcm"
    monochrome1_dicom(dicom, compress=True)
    out = tmp_path / "film.png"
    assert main(["inspect", str(dicom), "--png", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "MONOCHROME1" in printed and "JPEG 2000" in printed and "PATIENT-123" not in printed
    png = np.asarray(Image.open(out))
    assert png.dtype == np.uint8 and png.shape == (512, 512)
    h, w = png.shape

    def patch(fx, fy):
        return float(png[int(fy * h) - 15 : int(fy * h) + 15, int(fx * w) - 15 : int(fx * w) + 15].mean())

    lungs = max(patch(0.3, 0.45), patch(0.7, 0.45))
    spine_and_mediastinum = patch(0.5, 0.45)
    shoulder_bone = patch(0.1, 0.2)
    assert lungs < 0.5 * spine_and_mediastinum
    assert lungs < shoulder_bone
    # and it equals the original PNG film within 8-bit rounding
    original = np.asarray(Image.open(NIH_PNG).convert("L")).astype(int)
    assert np.abs(png.astype(int) - original).max() <= 1


def test_inspect_bad_file_exits_2_naming_it(tmp_path, capsys):
    bad = tmp_path / "notes.dcm"
    bad.write_bytes(b"definitely not an image")
    assert main(["inspect", str(bad)]) == 2
    assert "notes.dcm" in capsys.readouterr().err


def test_inspect_missing_file_exits_2(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "nope.png")]) == 2
    assert "nope.png" in capsys.readouterr().err
