"""A few decoded films kept for the result routes (a result grid asks for many crops of few films)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

import numpy as np


class FilmCache:
    """Up to ``size`` decoded films by URI, least recently used out first; safe across threads."""

    def __init__(self, size: int):
        self.size = size
        self.items: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()  # get() runs in worker threads (asyncio.to_thread)

    def get(self, uri: str, load: Callable[[str], np.ndarray]) -> np.ndarray:
        with self._lock:
            if uri in self.items:
                self.items.move_to_end(uri)
                return self.items[uri]
        pixels = load(uri)  # outside the lock: one slow read does not hold up the others
        with self._lock:
            self.items[uri] = pixels
            self.items.move_to_end(uri)
            while len(self.items) > self.size:
                self.items.popitem(last=False)
        return pixels
