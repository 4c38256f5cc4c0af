"""The films of a PACS as a data set: ``--data dicomweb+http://host/dicom-web?modality=CR,DX…``.

:class:`DicomWebReader` lists the instances a QIDO-RS search finds (:class:`regionmir.dicomweb.
DicomWebSource`) as :class:`ImageRecord` s, the same records a manifest or a Chest ImaGenome copy
gives, so the index job reads them through Ray Data like any other films (WADO-RS, by their
``dicomweb+`` locations). Each record:

* ``image_id``: the SOP Instance UID (a PACS-connected index keeps the UIDs: the viewer needs them);
* ``image_uri``: the instance's ``dicomweb+`` WADO-RS location (sealed in the index);
* ``patient_hash`` / ``study_hash``: salted hashes of PatientID and StudyInstanceUID — never the
  patient in clear;
* ``view``: ViewPosition (PA/AP), else the label's;
* ``regions``: the boxes of a **labels** source keyed by SOP Instance UID (a manifest whose
  ``image_id`` column, or scene graphs whose ``image_id``, is the SOP Instance UID); an instance
  without labels has none (the index job localises it, ``box_source: localiser``);
* ``split``: ``train`` for every instance — a PACS fills the database a search retrieves from (a
  labels file's own split is for experiments on file data sets, not for what a PACS ingest holds).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

from .dicomweb import DicomWebSource, client_for
from .identifiers import hash_identifier
from .region_record import ImageRecord
from .scan_report import ScanReport

#: The split of every PACS instance: the retrieval database.
PACS_SPLIT = "train"


class DicomWebReader:
    """A DICOMweb source read as a data set (see the module docstring). ``labels``: the reader of a
    manifest or Chest ImaGenome copy keyed by SOP Instance UID (:func:`regionmir.dataset.open_dataset`
    opens it), or ``None``."""

    def __init__(self, source: str, labels=None):
        self.source = DicomWebSource.parse(source)
        self.labels = labels
        self.report = ScanReport(source=self.source.root)
        self.labelled = self.unlabelled = 0

    def _label_records(self) -> dict[str, ImageRecord]:
        if self.labels is None:
            return {}
        records = {record.image_id: record for record in self.labels.iter_images()}
        self.report = self.report.merge(self.labels.report)
        return records

    def iter_images(self, split: str | None = None) -> Iterator[ImageRecord]:
        labels = self._label_records()
        for instance in client_for(self.source.root).source_instances(self.source):
            reference = instance.reference
            uid = reference.sop_instance_uid
            labelled = labels.get(uid)
            regions = ()
            if labelled is not None and labelled.regions:
                regions = tuple(
                    dataclasses.replace(region, image_uri=reference.uri, image_id=uid) for region in labelled.regions
                )
            record = ImageRecord(
                image_uri=reference.uri,
                image_id=uid,
                split=PACS_SPLIT,
                patient_hash=instance.patient_hash,
                study_hash=hash_identifier(reference.study_uid),
                view=instance.view or (labelled.view if labelled is not None else ""),
                regions=regions,
            )
            if split is not None and record.split != split:
                continue
            if regions:
                self.labelled += 1
            else:
                self.unlabelled += 1
            labels.pop(uid, None)
            yield record
        for uid in labels:  # a labels file keyed by another id would otherwise localise everything silently
            self.report.issue(
                "labels_without_instance", uid, detail="no instance of the search has this SOP Instance UID"
            )

    def describe(self) -> str:
        labels = f", labels {self.labels.describe()}" if self.labels else ", no labels (boxes from the localiser)"
        return self.source.describe() + labels
