"""regionmir.search_report: a region search as a TID 1500 Enhanced SR and as CSV, on phantom films.

Evidence is what a PACS gives over WADO-RS: each film's header as DICOM JSON, read back with
``pydicom.Dataset.from_json`` (no pixel data). The query film and two hits come from three
different patients; one hit is a second film of the query's own study, one another region of the
query film itself.
"""

from __future__ import annotations

import csv
import dataclasses
import io

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.uid import EnhancedSRStorage, generate_uid

from regionmir.search_report import (
    CSV_COLUMNS,
    ReportRegion,
    read_structured_report,
    region_problem,
    results_csv,
    structured_report,
)
from regionmir.synth.dataset_writer import SCENE_GRAPH_SIZE, render_phantom

SIZE = 128
MODEL_VERSION = "regionmir-resnet50-2025.06"
SOFTWARE_VERSION = "0.1.0"


def _film(index: int) -> tuple[pydicom.Dataset, dict]:
    data, graph = render_phantom(0, index, SIZE, "dicom", "realistic")
    return pydicom.dcmread(io.BytesIO(data)), graph


def _metadata(ds: pydicom.Dataset) -> pydicom.Dataset:
    """The header as WADO-RS metadata would give it: DICOM JSON without the pixel data."""
    return pydicom.Dataset.from_json({tag: v for tag, v in ds.to_json_dict().items() if tag != "7FE00010"})


def _region(ds: pydicom.Dataset, graph: dict, anatomy: str, **hit) -> ReportRegion:
    scale = SIZE / SCENE_GRAPH_SIZE  # scene graph boxes are drawn at 224 px; these are film pixels
    o = next(o for o in graph["objects"] if o["bbox_name"] == anatomy)
    box = (o["x1"] * scale, o["y1"] * scale, o["x2"] * scale, o["y2"] * scale)
    return ReportRegion(
        sop_instance_uid=ds.SOPInstanceUID,
        series_instance_uid=ds.SeriesInstanceUID,
        study_instance_uid=ds.StudyInstanceUID,
        sop_class_uid=ds.SOPClassUID,
        box=box,
        anatomy=anatomy,
        **hit,
    )


@pytest.fixture(scope="module")
def search():
    """(query, hits, evidence, films) of one search over four films of three patients."""
    query_film, query_graph = _film(0)
    other_a, graph_a = _film(1)
    other_b, graph_b = _film(2)
    # A second film of the query's study (a lateral, say): the query's patient and study, its own series.
    same_study, graph_same = _film(3)
    same_study.StudyInstanceUID = query_film.StudyInstanceUID
    same_study.PatientID = query_film.PatientID
    same_study.PatientName = query_film.PatientName
    same_study.SeriesInstanceUID = generate_uid()
    same_study.SOPInstanceUID = generate_uid()
    assert len({f.PatientID for f in (query_film, other_a, other_b)}) == 3

    anatomy = "left costophrenic angle"
    query = _region(query_film, query_graph, anatomy)
    hits = [
        _region(other_a, graph_a, anatomy, rank=1, score=0.9731254, key="0f" * 16),
        _region(same_study, graph_same, anatomy, rank=2, score=0.9402117, key="1e" * 16),
        _region(other_b, graph_b, anatomy, rank=3, score=0.91, key="2d" * 16),
        _region(query_film, query_graph, "right costophrenic angle", rank=4, score=0.875, key="3c" * 16),
    ]
    films = {"query": query_film, "a": other_a, "b": other_b, "same": same_study}
    evidence = [_metadata(f) for f in (other_a, same_study, query_film, other_b)]  # query not first
    return query, hits, evidence, films


def _sr(search, **kw) -> pydicom.Dataset:
    query, hits, evidence, _ = search
    kw.setdefault("software_version", SOFTWARE_VERSION)
    kw.setdefault("model_version", MODEL_VERSION)
    return structured_report(query, hits, evidence, **kw)


def _round_trip(ds: pydicom.Dataset) -> tuple[pydicom.Dataset, bytes]:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    data = buffer.getvalue()
    return pydicom.dcmread(io.BytesIO(data)), data


def _listed(sr: pydicom.Dataset, sequence: str) -> set[tuple[str, str, str]]:
    """(study, series, instance) UIDs of the instances an SR evidence sequence lists."""
    return {
        (study.StudyInstanceUID, series.SeriesInstanceUID, sop.ReferencedSOPInstanceUID)
        for study in sr.get(sequence, [])
        for series in study.ReferencedSeriesSequence
        for sop in series.ReferencedSOPSequence
    }


def _same_region(got: ReportRegion, want: ReportRegion) -> None:
    assert np.asarray(got.box, dtype=np.float32).tolist() == np.asarray(want.box, dtype=np.float32).tolist()
    assert dataclasses.replace(got, box=want.box) == want


def test_sr_is_an_enhanced_sr_with_a_tid_1500_measurement_report(search):
    sr = _sr(search)
    assert isinstance(sr, hd.sr.EnhancedSR)
    assert sr.SOPClassUID == EnhancedSRStorage
    assert sr.Modality == "SR"
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    report = hd.sr.srread(io.BytesIO(_round_trip(sr)[1])).content
    assert isinstance(report, hd.sr.MeasurementReport)
    groups = report.get_planar_roi_measurement_groups()
    assert [g.tracking_identifier.split(",")[0] for g in groups] == ["query region", "hit 1", "hit 2", "hit 3", "hit 4"]
    assert len({g.tracking_uid for g in groups}) == 5
    assert all(g.roi.graphic_type == hd.sr.GraphicTypeValues.POLYLINE for g in groups)
    first = groups[0].roi.value
    assert first.shape == (5, 2) and (first[0] == first[-1]).all()  # a closed rectangle
    device = report.get_observer_contexts(observer_type=pydicom.sr.codedict.codes.DCM.Device)[0]
    assert device.observer_identifying_attributes.name == "RegionMIR"
    assert device.observer_identifying_attributes.model_name == MODEL_VERSION
    assert sr.SoftwareVersions == SOFTWARE_VERSION


def test_round_trip_gives_back_boxes_anatomies_ranks_scores_and_uids(search):
    query, hits, _, _ = search
    back, _ = _round_trip(_sr(search))
    got_query, got_hits = read_structured_report(back)
    _same_region(got_query, query)
    assert got_query.rank is None and got_query.score is None and got_query.key is None
    assert len(got_hits) == len(hits)
    for got, want in zip(got_hits, hits, strict=True):
        _same_region(got, want)


def test_hits_are_read_back_in_rank_order(search):
    query, hits, evidence, _ = search
    sr = structured_report(
        query, list(reversed(hits)), evidence, software_version=SOFTWARE_VERSION, model_version=MODEL_VERSION
    )
    _, got_hits = read_structured_report(_round_trip(sr)[0])
    assert [h.rank for h in got_hits] == [1, 2, 3, 4]


def test_sr_belongs_to_the_query_patient_and_study(search):
    _, _, _, films = search
    sr, data = _round_trip(_sr(search, series_number=77, instance_number=3))
    query_film = films["query"]
    assert sr.StudyInstanceUID == query_film.StudyInstanceUID
    assert sr.PatientID == query_film.PatientID
    assert sr.PatientName == query_film.PatientName
    assert (sr.SeriesNumber, sr.InstanceNumber) == (77, 3)
    assert sr.SeriesInstanceUID not in {f.SeriesInstanceUID for f in films.values()}
    for other in (films["a"], films["b"]):  # nothing of the other patients but their instance UIDs
        assert other.PatientID.encode() not in data
        assert str(other.PatientName).encode() not in data


def test_evidence_of_other_studies_is_pertinent_other_evidence(search):
    _, _, _, films = search
    sr = _sr(search)

    def place(f: pydicom.Dataset) -> tuple[str, str, str]:
        return f.StudyInstanceUID, f.SeriesInstanceUID, f.SOPInstanceUID

    assert _listed(sr, "CurrentRequestedProcedureEvidenceSequence") == {place(films["query"]), place(films["same"])}
    assert _listed(sr, "PertinentOtherEvidenceSequence") == {place(films["a"]), place(films["b"])}


def test_unreferenced_evidence_is_left_out_and_callers_datasets_are_untouched(search):
    query, hits, evidence, _ = search
    spare, _ = _film(5)
    before = [ds.to_json_dict() for ds in evidence]
    sr = structured_report(
        query, hits[:1], [*evidence, _metadata(spare)], software_version=SOFTWARE_VERSION, model_version="m"
    )
    assert [ds.to_json_dict() for ds in evidence] == before
    assert "PatientBirthDate" not in evidence[2]  # the query's header got its type 2 gaps filled in a copy
    hit = hits[0]
    assert _listed(sr, "PertinentOtherEvidenceSequence") == {
        (hit.study_instance_uid, hit.series_instance_uid, hit.sop_instance_uid)
    }


def test_csv_round_trips(search):
    query, hits, _, _ = search
    text = results_csv(query, hits)
    rows = list(csv.DictReader(io.StringIO(text)))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert [r["role"] for r in rows] == ["query", "hit", "hit", "hit", "hit"]
    assert rows[0]["rank"] == rows[0]["score"] == rows[0]["key"] == ""
    for row, region in zip(rows, [query, *hits], strict=True):
        assert tuple(float(row[c]) for c in ("x1", "y1", "x2", "y2")) == region.box
        assert row["anatomy"] == region.anatomy
        assert row["study_instance_uid"] == region.study_instance_uid
        assert row["series_instance_uid"] == region.series_instance_uid
        assert row["sop_instance_uid"] == region.sop_instance_uid
    for row, hit in zip(rows[1:], hits, strict=True):
        assert (int(row["rank"]), float(row["score"]), row["key"]) == (hit.rank, hit.score, hit.key)


@pytest.mark.parametrize(
    "box",
    [
        (10.0, 10.0, 10.0, 40.0),  # zero width
        (10.0, 10.0, 40.0, 10.0),  # zero height
        (100.0, 100.0, 140.0, 120.0),  # past the right edge of a 128 px film
        (-5.0, 10.0, 20.0, 30.0),  # left of the film
        (40.0, 10.0, 20.0, 30.0),  # inverted
        (float("nan"), 10.0, 20.0, 30.0),
    ],
)
def test_an_unusable_hit_box_raises_naming_the_hit(search, box):
    query, hits, evidence, _ = search
    bad = [hits[0], dataclasses.replace(hits[1], box=box), *hits[2:]]
    with pytest.raises(ValueError, match=r"^hit 2: "):
        structured_report(query, bad, evidence, software_version=SOFTWARE_VERSION, model_version=MODEL_VERSION)


def test_an_unusable_query_box_raises_naming_the_query(search):
    query, hits, evidence, _ = search
    with pytest.raises(ValueError, match=r"^query region: zero-area"):
        structured_report(
            dataclasses.replace(query, box=(5.0, 5.0, 5.0, 5.0)),
            hits,
            evidence,
            software_version=SOFTWARE_VERSION,
            model_version=MODEL_VERSION,
        )


def test_a_hit_without_evidence_or_with_mismatched_evidence_raises(search):
    query, hits, evidence, _ = search
    kw = {"software_version": SOFTWARE_VERSION, "model_version": MODEL_VERSION}
    without_a = [ds for ds in evidence if ds.SOPInstanceUID != hits[0].sop_instance_uid]
    with pytest.raises(ValueError, match=r"^hit 1: no evidence dataset"):
        structured_report(query, hits, without_a, **kw)
    moved = dataclasses.replace(hits[2], study_instance_uid=query.study_instance_uid)
    with pytest.raises(ValueError, match=r"^hit 3: its StudyInstanceUID"):
        structured_report(query, [*hits[:2], moved, hits[3]], evidence, **kw)


def test_region_problem_names_what_the_report_would_refuse_so_a_caller_can_leave_the_hit_out(search):
    query, hits, evidence, _ = search
    by_uid = {str(ds.SOPInstanceUID): ds for ds in evidence}
    assert region_problem(query, by_uid) is None and all(region_problem(hit, by_uid) is None for hit in hits)
    moved = dataclasses.replace(hits[2], series_instance_uid=query.series_instance_uid)
    assert region_problem(moved, by_uid).startswith("hit 3: its SeriesInstanceUID")
    outside = dataclasses.replace(hits[0], box=(0.0, 0.0, 5000.0, 40.0))
    assert region_problem(outside, by_uid).startswith("hit 1: ")
    assert region_problem(hits[1], {}).startswith("hit 2: no evidence dataset")
    # the report without the refused hits is written
    kept = [hit for hit in (hits[0], moved, hits[3]) if region_problem(hit, by_uid) is None]
    _, read_hits = read_structured_report(
        structured_report(query, kept, evidence, software_version=SOFTWARE_VERSION, model_version=MODEL_VERSION)
    )
    assert [hit.rank for hit in read_hits] == [1, 4]


def test_bad_hit_fields_raise(search):
    query, hits, evidence, _ = search
    kw = {"software_version": SOFTWARE_VERSION, "model_version": MODEL_VERSION}
    with pytest.raises(ValueError, match=r"^hit 2: rank 2 given twice"):
        structured_report(query, [hits[1], dataclasses.replace(hits[0], rank=2)], evidence, **kw)
    with pytest.raises(ValueError, match=r"^hit 1: a hit needs"):
        structured_report(query, [dataclasses.replace(hits[0], key="")], evidence, **kw)
    with pytest.raises(ValueError, match=r"^hit 1: unknown anatomy 'left kneecap'"):
        structured_report(query, [dataclasses.replace(hits[0], anatomy="left kneecap")], evidence, **kw)
    with pytest.raises(ValueError, match=r"^query region: rank, score and key"):
        structured_report(dataclasses.replace(query, rank=1), hits, evidence, **kw)


def test_reading_a_dataset_that_is_not_a_search_report_raises(search):
    _, _, _, films = search
    with pytest.raises(ValueError):
        read_structured_report(films["query"])
