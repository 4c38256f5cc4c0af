"""Library errors survive a trip to another process (Ray tasks raise them on other workers)."""

from __future__ import annotations

import pickle

import pytest

from regionmir.errors import DatasetError, ImageTooLargeError, UnknownAnatomyError


@pytest.mark.parametrize(
    "error",
    [
        DatasetError("s3://bucket/data", "3 films were unreadable"),
        ImageTooLargeError("film.dcm", "40000 x 40000 pixels is over the limit", reason="too_many_pixels"),
        UnknownAnatomyError("left lnug", ["left lung"]),
    ],
)
def test_errors_pickle_as_themselves_with_their_fields(error):
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert (copy.source, copy.message, copy.reason, str(copy)) == (
        error.source,
        error.message,
        error.reason,
        str(error),
    )
    assert getattr(copy, "matches", None) == getattr(error, "matches", None)
