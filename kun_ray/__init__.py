"""kun-ray: raw Chinese pretraining text -> instruction-tuning data (Humpback and Kun) on Ray."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("kun-ray")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+source"
