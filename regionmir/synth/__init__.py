"""Phantom chest radiographs with exact anatomical boxes (``regionmir synth``)."""

from .phantom_film import PhantomFilm, render_film
from .phantom_params import FINDINGS, Finding, PhantomParams, sample_params

__all__ = ["FINDINGS", "Finding", "PhantomFilm", "PhantomParams", "render_film", "sample_params"]
