"""kun-ray: raw Chinese pretraining text -> instruction-tuning data (Humpback and Kun) on Ray.

`kun_ray.Run.open(path)` reads a run back (kun_ray/query.py).
"""

from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("kun-ray")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+source"

__all__ = ["Run", "__version__"]


def __getattr__(name: str) -> Any:
    """`kun_ray.Run`, imported when first asked for: `import kun_ray` stays light for Ray's workers."""
    if name == "Run":
        from kun_ray.query import Run

        return Run
    raise AttributeError(f"module 'kun_ray' has no attribute {name!r}")
