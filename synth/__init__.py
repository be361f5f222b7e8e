"""synth: synthetic task data from a local teacher served by vLLM; builds on curate."""

from curate import __version__

__all__ = ["__version__"]
