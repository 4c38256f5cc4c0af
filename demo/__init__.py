"""The demo: the whole system end to end on phantom films (``make demo``, ``regionmir-demo``).

The top layer: it drives the library (``regionmir``), training, indexing and serving; nothing
imports it. :mod:`demo.run` is the orchestrator; each step is its own module.
"""
