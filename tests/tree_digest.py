"""SHA-256 of every file under a folder, by relative path: "same bytes" checks of written data sets."""

from __future__ import annotations

import hashlib
import os


def tree_digest(root) -> dict[str, str]:
    out = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as handle:
                out[os.path.relpath(path, root)] = hashlib.sha256(handle.read()).hexdigest()
    return out
