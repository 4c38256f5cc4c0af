"""Counts of what a data set scan read, and of every record it changed or skipped, by reason.

Readers never log or print: they fill a :class:`ScanReport` and callers print
:meth:`ScanReport.summary`. Each reason keeps a count, optional per-detail counts (which region
was missing, which unknown name was seen) and the first few example sources (``dicom_id``,
``manifest.csv:17``) so a user can open the offending file. Reports from parallel workers are
combined with :meth:`ScanReport.merge` (or ``+``) and travel as :meth:`ScanReport.as_dict`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

#: Issue reasons the readers use, whether the record was kept (changed) or skipped, and what the
#: reason means. Other reasons (e.g. an error's ``reason``) are allowed and shown as "skipped".
REASONS: dict[str, tuple[str, str]] = {
    "box_clamped": ("kept", "box clamped to the image"),
    "unknown_view": ("kept", "view not PA/AP, stored as ''"),
    "box_zero_area": ("skipped", "region: box narrower or shorter than 1 px"),
    "box_inverted": ("skipped", "region: x2 < x1 or y2 < y1"),
    "box_not_finite": ("skipped", "region: NaN or infinite coordinate"),
    "box_outside_image": ("skipped", "region: box lies outside the image"),
    "bad_box": ("skipped", "region: coordinates missing or not numbers"),
    "unknown_anatomy": ("skipped", "region: name not in the anatomy vocabulary"),
    "duplicate_region": ("skipped", "region: second box for the same anatomy on one image"),
    "region_missing": ("absent", "image lacks this region in its labels"),
    "missing_value": ("skipped", "row: a required value is empty"),
    "invalid_split": ("skipped", "row: split not train/valid/test"),
    "inconsistent_image": ("kept", "rows of one image disagree on split/patient/view; first kept"),
    "bad_row": ("skipped", "row: not an object / unreadable line"),
    "bad_json": ("skipped", "image: scene graph is not valid JSON"),
    "missing_scene_graph": ("skipped", "image: no scene graph file"),
    "missing_image": ("skipped", "image: image file not found"),
    "image_to_avoid": ("skipped", "image: listed in images_to_avoid.csv (gold set)"),
    "image_without_regions": ("skipped", "image: no usable region left"),
    "image_size_mismatch": ("skipped", "image: boxes drawn for another resolution"),
}


@dataclass
class ScanReport:
    """What one scan read (``read``) and what it changed or skipped (``issues``), by reason."""

    source: str = ""
    max_examples: int = 5
    read: Counter = field(default_factory=Counter)
    issues: Counter = field(default_factory=Counter)
    details: dict[str, Counter] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)

    # -- recording -------------------------------------------------------------------------

    def count(self, what: str, n: int = 1) -> None:
        """Count something read (``images``, ``regions``, ``rows``...)."""
        self.read[what] += n

    def issue(self, reason: str, example: str | None = None, *, detail: str | None = None, n: int = 1) -> None:
        """Count ``n`` records changed or skipped for ``reason``; keep ``example`` if room is left."""
        self.issues[reason] += n
        if detail is not None:
            self.details.setdefault(reason, Counter())[str(detail)] += n
        if example is not None:
            kept = self.examples.setdefault(reason, [])
            if len(kept) < self.max_examples and str(example) not in kept:
                kept.append(str(example))

    # -- reading ---------------------------------------------------------------------------

    def __getitem__(self, reason: str) -> int:
        """The issue count for ``reason`` (0 when never seen)."""
        return self.issues.get(reason, 0)

    @property
    def total_issues(self) -> int:
        return sum(self.issues.values())

    def skipped(self) -> int:
        """Issues whose records were dropped (everything not marked kept/absent in :data:`REASONS`)."""
        return sum(n for reason, n in self.issues.items() if REASONS.get(reason, ("skipped", ""))[0] == "skipped")

    # -- combining and transport -----------------------------------------------------------

    def merge(self, other: ScanReport) -> ScanReport:
        """A new report holding both counts (examples up to ``max_examples`` per reason)."""
        merged = ScanReport.from_dict(self.as_dict())
        merged.source = (
            self.source
            if self.source == other.source or not other.source
            else (f"{self.source} + {other.source}" if self.source else other.source)
        )
        merged.read.update(other.read)
        for reason, n in other.issues.items():
            merged.issues[reason] += n
        for reason, counts in other.details.items():
            merged.details.setdefault(reason, Counter()).update(counts)
        for reason, examples in other.examples.items():
            kept = merged.examples.setdefault(reason, [])
            for example in examples:
                if len(kept) < merged.max_examples and example not in kept:
                    kept.append(example)
        return merged

    def __add__(self, other: ScanReport) -> ScanReport:
        return self.merge(other)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"source", "read", "issues", "details", "examples", "max_examples"}``."""
        return {
            "source": self.source,
            "max_examples": self.max_examples,
            "read": dict(self.read),
            "issues": dict(self.issues),
            "details": {reason: dict(counts) for reason, counts in self.details.items()},
            "examples": {reason: list(examples) for reason, examples in self.examples.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScanReport:
        return cls(
            source=data.get("source", ""),
            max_examples=int(data.get("max_examples", 5)),
            read=Counter(data.get("read", {})),
            issues=Counter(data.get("issues", {})),
            details={r: Counter(c) for r, c in data.get("details", {}).items()},
            examples={r: list(e) for r, e in data.get("examples", {}).items()},
        )

    # -- printing --------------------------------------------------------------------------

    def summary(self, max_details: int = 8) -> str:
        """A readable table: what was read, then each reason with count, effect and examples."""
        title = f"Scan of {self.source}" if self.source else "Scan"
        read = ", ".join(f"{n:,} {what}" for what, n in self.read.items()) or "nothing"
        lines = [title, f"  read: {read}"]
        if not self.issues:
            lines.append("  no record changed or skipped")
            return "\n".join(lines)
        width = max(len(r) for r in self.issues)
        lines.append(f"  {'reason':<{width}}  {'count':>9}  {'effect':<7}  meaning / examples")
        for reason, n in sorted(self.issues.items(), key=lambda item: (-item[1], item[0])):
            effect, meaning = REASONS.get(reason, ("skipped", ""))
            lines.append(f"  {reason:<{width}}  {n:>9,}  {effect:<7}  {meaning}")
            details = self.details.get(reason)
            if details:
                for detail, count in details.most_common(max_details):
                    lines.append(f"  {'':<{width}}  {count:>9,}           - {detail}")
                if len(details) > max_details:
                    lines.append(f"  {'':<{width}}  {'':>9}           ... {len(details) - max_details} more")
            examples = self.examples.get(reason)
            if examples:
                lines.append(f"  {'':<{width}}  {'':>9}           e.g. {', '.join(examples)}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()
