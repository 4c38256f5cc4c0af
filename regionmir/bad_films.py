"""The one policy for films that cannot be read, wherever films are turned into ROI rows (the
training crop pipeline, the index and evaluation jobs):

* a bad film (missing, undecodable, not an image...) is **counted** by reason, **logged by image
  id** (never its path: paths can hold patient ids) and **skipped**;
* once more than ``max_bad_fraction`` of the films are bad, the job **stops** (:class:`DatasetError`);
* a **storage error** (the store unreachable or refusing, after :func:`regionmir.storage.read_bytes`'
  retries) is not a bad film: the job stops at once (:class:`StorageError`) instead of quietly
  producing less.

:class:`BadFilms` applies it where the decision can be made:

* where the films are read, when no driver sees every film (the training pipeline's croppers):
  :meth:`BadFilms.tried` and :meth:`BadFilms.failed`, against the films tried so far once
  ``min_films`` have been (``total`` ``None``);
* on the driver, when the readers hand their failures on as placeholder rows (``anatomy_id`` -1,
  ``skip_reason``) and the number of films is known (the index job): :meth:`BadFilms.filter`,
  against ``total``.
"""

from __future__ import annotations

import logging

import numpy as np

from .errors import DatasetError, RegionMIRError, StorageError

#: Skip reasons that mean "could not reach the film", not "the film is bad".
STORAGE_REASONS = frozenset({"storage", "storage_denied", "pacs_unavailable", "pacs_denied"})


def log_skipped(log: logging.Logger, image_id: str, error: RegionMIRError) -> None:
    """The one log line of a film that is skipped: its image id, the reason and the message."""
    log.warning("skipping film %s: %s (%s)", image_id, error.reason, error.message)


class BadFilms:
    """Counts the films that could not be read and stops the job as the policy above says.

    ``source`` names the data in the errors. ``total``: how many films the job reads (the driver's
    view), or ``None`` where only the films tried so far are known (then the fraction is checked
    once ``min_films`` were tried).
    """

    def __init__(self, source: str, total: int | None, max_bad_fraction: float, *, min_films: int = 0):
        self.source, self.total, self.max_bad_fraction = source, total, max_bad_fraction
        self.min_films = min_films
        self.allowed = int(max_bad_fraction * total) if total is not None else None
        self.seen = 0  # films tried (counted by tried(), where films are read)
        self.by_reason: dict[str, int] = {}
        self.examples: list[str] = []
        self.image_ids: set[str] = set()  # every skipped film (its old rows, if any, are kept)

    @property
    def count(self) -> int:
        return sum(self.by_reason.values())

    # -- where films are read

    def tried(self) -> None:
        """One more film is being read."""
        self.seen += 1

    def failed(self, image_id: str, error: RegionMIRError, log: logging.Logger) -> None:
        """The film ``image_id`` could not be read: a storage error is raised as it is (the job
        stops); any other is logged, counted, and stops the job when too many films were bad."""
        if isinstance(error, StorageError):
            raise error  # storage down (after read_bytes' retries) is not a bad film: stop, do not shrink the output
        log_skipped(log, image_id, error)
        self._count(image_id, error.reason)
        self.check()

    # -- on the driver

    def filter(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``batch`` without its placeholder rows (``anatomy_id`` -1), each counted by its
        ``skip_reason``; then the policy is checked (storage reasons first)."""
        bad = np.asarray(batch["anatomy_id"]) < 0
        for i in np.flatnonzero(bad):
            self._count(str(batch["image_id"][i]), str(batch["skip_reason"][i]))
        self.check()
        return {name: values[~bad] for name, values in batch.items()} if bad.any() else batch

    # -- the policy

    def _count(self, image_id: str, reason: str) -> None:
        self.by_reason[reason] = self.by_reason.get(reason, 0) + 1
        self.image_ids.add(image_id)
        if len(self.examples) < 5:
            self.examples.append(image_id)

    def check(self) -> None:
        """Raise when the job must stop: a storage failure (``StorageError``), or more bad films
        than ``max_bad_fraction`` allows (``DatasetError``)."""
        unreachable = {r: n for r, n in self.by_reason.items() if r in STORAGE_REASONS}
        if unreachable:  # storage down is not a bad film: stop before the output silently shrinks
            raise StorageError(
                self.source,
                f"storage failed while reading films ({unreachable}, e.g. "
                f"{', '.join(self.examples)}), after retries; nothing was switched "
                "over: re-run the job once storage answers",
            )
        if self.total is None:
            if self.seen >= max(1, self.min_films) and self.count / self.seen > self.max_bad_fraction:
                raise DatasetError(
                    self.source,
                    f"{self.count} of {self.seen} films were unreadable "
                    f"(over the allowed {self.max_bad_fraction:.0%}); "
                    "see the 'skipping film' log lines for which and why",
                )
        elif self.count > self.allowed:
            raise DatasetError(
                self.source,
                f"{self.count} of {self.total} films were unreadable, over the allowed "
                f"{self.max_bad_fraction:.0%} ({self.allowed}): {self.by_reason}, e.g. "
                f"{', '.join(self.examples)}",
            )
