"""curate: the record model and everything about data.

`synth` and `train` build on this package; it depends on neither of them.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("smallset")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+local"
