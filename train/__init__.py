"""train: LoRA adapters on a curated set, and their evaluation; builds on curate."""

from curate import __version__

__all__ = ["__version__"]
