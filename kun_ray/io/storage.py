"""Storage resolution: a URL plus StorageOptions -> an fsspec filesystem (and its pyarrow twin).

Local paths, s3:// (s3fs) and gs:// (gcsfs) all go through fsspec, so readers and writers
never branch on where data lives.  Credentials are never passed here: s3fs and gcsfs read
them from the environment (AWS_ACCESS_KEY_ID, AWS_PROFILE, GOOGLE_APPLICATION_CREDENTIALS, ...).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import fsspec
import pyarrow.fs as pafs
from fsspec.utils import get_protocol

from kun_ray.config import StorageOptions

GLOB_CHARS = "*?["
# Files a corpus folder may hold that are never corpus data.
IGNORED_NAME_PREFIXES = (".", "_")


def filesystem_kwargs(url: str, options: StorageOptions) -> dict[str, Any]:
    protocol = get_protocol(url)
    if protocol in ("s3", "s3a"):
        # The one place a run's S3 retries and timeouts are set, bounded: botocore retries a
        # request (5xx, SlowDown, connection errors, timeouts) with backoff; s3fs adds its own
        # fixed 5 attempts for what botocore cannot see (a body cut off mid-read, SlowDown).
        kwargs: dict[str, Any] = {
            "anon": options.anonymous,
            "config_kwargs": {
                "retries": {"total_max_attempts": options.retries, "mode": "standard"},
                "connect_timeout": options.connect_timeout_s,
                "read_timeout": options.read_timeout_s,
            },
        }
        if options.endpoint_url:
            kwargs["endpoint_url"] = options.endpoint_url
        if options.region:
            kwargs["client_kwargs"] = {"region_name": options.region}
        return kwargs
    if protocol in ("gs", "gcs"):
        kwargs = {"token": "anon"} if options.anonymous else {}
        if options.endpoint_url:
            kwargs["endpoint_url"] = options.endpoint_url
        return kwargs
    return {}


def url_to_fs(url: str, options: StorageOptions) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem for `url` and the path within it (no scheme)."""
    fs, path = fsspec.core.url_to_fs(url, **filesystem_kwargs(url, options))
    return fs, path


def to_url(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """The inverse of url_to_fs: local paths stay plain, remote ones get their scheme back."""
    if is_local(fs):
        return path
    return fs.unstrip_protocol(path)


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def modified(info: dict[str, Any]) -> float:
    """When a file was last written (seconds since the epoch), from an fsspec `info` of any
    filesystem: local `mtime`, S3 `LastModified`, GCS `updated`."""
    for key in ("mtime", "LastModified", "updated", "last_modified"):
        value = info.get(key)
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, str):
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    raise ValueError(f"{info.get('name')}: the store gave no modification time")


def unreachable_store(error: BaseException) -> str | None:
    """One line for an error that says an object store did not answer (after its retries), naming
    its endpoint; None for any other error.  Ray's task errors carry the cause along."""
    try:
        from botocore.exceptions import ConnectionError as BotoConnectionError
        from botocore.exceptions import ReadTimeoutError
    except ImportError:  # no S3 support installed
        return None
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, BotoConnectionError | ReadTimeoutError):
            url = urlsplit(str(getattr(error, "kwargs", {}).get("endpoint_url") or ""))
            where = f"{url.scheme}://{url.netloc}" if url.netloc else "the object store"
            return f"cannot reach the object store at {where}: {type(error).__name__}"
        error = error.__cause__ or error.__context__ or getattr(error, "cause", None)  # Ray's task errors
    return None


def pyarrow_filesystem(fs: fsspec.AbstractFileSystem) -> pafs.FileSystem:
    """The pyarrow view of an fsspec filesystem, as Ray Data's readers and writers take it."""
    if is_local(fs):
        return pafs.LocalFileSystem()
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs))


def _static_prefix(pattern: str) -> str:
    """The folder part of a pattern before its first glob character."""
    cut = min((i for i, ch in enumerate(pattern) if ch in GLOB_CHARS), default=len(pattern))
    return pattern[:cut].rsplit("/", 1)[0] if cut < len(pattern) else pattern


def _is_data_file(path: str) -> bool:
    return not path.rsplit("/", 1)[-1].startswith(IGNORED_NAME_PREFIXES)


def expand(fs: fsspec.AbstractFileSystem, pattern: str) -> list[tuple[str, str]]:
    """Files matching a path, a glob or a folder, as (path, path relative to the pattern's root).

    The relative path is what document ids are built from, so it stays the same when a
    corpus moves to another bucket.  Hidden and underscore files (_SUCCESS, .DS_Store) are skipped.
    """
    if any(ch in pattern for ch in GLOB_CHARS):
        matches = fs.glob(pattern)
        root = _static_prefix(pattern)
        files = [p for p in matches if _is_data_file(p) and not fs.isdir(p)]
    elif fs.isdir(pattern):
        root = pattern.rstrip("/")
        files = [p for p in fs.find(pattern) if _is_data_file(p)]
    elif fs.exists(pattern):
        root = pattern.rsplit("/", 1)[0]
        files = [pattern]
    else:
        return []
    return [(p, p[len(root) :].lstrip("/") if p.startswith(root) else p.rsplit("/", 1)[-1]) for p in sorted(files)]
