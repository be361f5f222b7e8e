"""Errors a person can act on while training: the CLI prints them without a traceback."""

from __future__ import annotations

from curate.errors import SmallsetError


class TrainError(SmallsetError):
    """A training run cannot start or continue (bad settings, too little data, no GPU for QLoRA...)."""
