"""Phantom films as DICOM: 12-bit MONOCHROME2 Digital X-ray, deterministic bytes (no dates)."""

from __future__ import annotations

import io

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from .phantom_film import PhantomFilm

#: Digital X-Ray Image Storage - For Presentation
DX_PRESENTATION_SOP = "1.2.840.10008.5.1.4.1.1.1.1"
BITS_STORED = 12


def pixel_values(film: PhantomFilm) -> np.ndarray:
    """The stored values: the film quantised to 12 bits (0..4095), uint16."""
    return np.round(np.clip(film.image, 0, 1) * (2**BITS_STORED - 1)).astype(np.uint16)


def phantom_uid(seed: int, index: int, kind: str) -> str:
    """The deterministic DICOM UID of film ``index`` of ``seed``: ``kind`` ``sop``, ``study`` or ``series``."""
    return generate_uid(entropy_srcs=[f"regionmir-phantom:{seed}:{index}:{kind}"])


def dicom_bytes(film: PhantomFilm, ident, seed: int, index: int) -> bytes:
    def uid(kind: str) -> str:
        return phantom_uid(seed, index, kind)

    pixels = pixel_values(film)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DX_PRESENTATION_SOP
    meta.MediaStorageSOPInstanceUID = uid("sop")
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = generate_uid(entropy_srcs=["regionmir-phantom-implementation"])
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = DX_PRESENTATION_SOP
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = uid("study")
    ds.SeriesInstanceUID = uid("series")
    ds.PatientID = ident.subject_id
    ds.PatientName = f"PHANTOM^{ident.subject_id}"
    ds.PatientSex = film.params.sex
    ds.StudyID = ident.study_id
    ds.AccessionNumber = ident.study_id
    ds.Modality = "DX"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = film.params.view
    ds.PatientOrientation = ["L", "F"] if film.params.view == "PA" else ["R", "F"]
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.Manufacturer = "RegionMIR phantom generator"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = BITS_STORED
    ds.HighBit = BITS_STORED - 1
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    ds.WindowCenter = 2047.5
    ds.WindowWidth = 4096
    spacing = round(0.139 * 3000 / pixels.shape[0], 4)
    ds.PixelSpacing = [spacing, spacing]
    ds.PixelData = pixels.tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
