"""Models for workers: files fetched once per node from object storage, objects loaded once per process.

KenLM, SentencePiece and tokenizer files may be given as s3:// or gs:// URLs; a worker that
needs one calls `local_copy`, which downloads it (a file or a folder) into the cache the first
time and returns the local path every time after.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from kun_ray.config import StorageOptions
from kun_ray.io.storage import is_local, url_to_fs

T = TypeVar("T")
CACHE = Path(os.environ.get("KUN_RAY_CACHE", Path.home() / ".cache" / "kun-ray"))


def local_copy(url: str, storage: StorageOptions) -> str:
    fs, path = url_to_fs(url, storage)
    if is_local(fs):
        return path
    target = CACHE / "models" / hashlib.sha256(url.encode()).hexdigest()[:16] / path.rstrip("/").rsplit("/", 1)[-1]
    if target.exists():
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(dir=target.parent, prefix=".partial-"))
    try:
        fs.get(path, str(partial / target.name), recursive=fs.isdir(path))
        os.replace(partial / target.name, target)  # atomic: concurrent workers never see half a model
    except OSError:
        if not target.exists():
            raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return str(target)


def load_tokenizer(name: str, storage: StorageOptions):  # noqa: ANN201 (a transformers tokenizer)
    """A Hugging Face fast tokenizer from a hub id, a local folder or an object-store folder."""
    from transformers import AutoTokenizer

    source = local_copy(name, storage) if "://" in name else name
    return AutoTokenizer.from_pretrained(source, use_fast=True)


_LOADED: dict[str, Any] = {}


def loaded_once(key: str, build: Callable[[], T]) -> T:
    """An object built once per worker process (a tokenizer, a KenLM model) and reused by every batch.

    Ray reuses worker processes, so a model a task needs loads once per worker, not per batch.
    """
    if key not in _LOADED:
        _LOADED[key] = build()
    return _LOADED[key]
