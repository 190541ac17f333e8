"""The run folder: where a run's stages, rejects, commits and report live, local or on object storage.

    <output>/
      manifest.json       the config's fingerprint and settings, the input shards, values fixed on first use
      documents/          the read stage's documents (Parquet)
      filtered/           documents the CPU filters kept (normalize, length, perplexity, heuristics)
      clean/              filtered documents left after exact and near dedup
      labeled/            clean documents with the instruction the label model wrote
      scored/             labeled rows the chat model scored high enough (score, score_raw)
      polished/           scored rows with the polished answer (answer)
      final/              pairs left after dedup on the instruction (Parquet)
      export/alpaca/      final/ as JSONL: instruction, input, output
      export/messages/    final/ as JSONL chat messages (with Humpback's system prompt tag)
      rejects/<stage>/    every row a stage rejected, with stage, reason and detail (Parquet)
      _commits/<flow>/    which shards each flow has finished, with their files and counts (kun_ray/ledger.py)
      report.json         per-stage counts: in, kept, rejected by reason, per source; per-flow timings
      report.html         the report page, when `kun-ray report` wrote it here (kun_ray/report_page.py)

Re-running a config over its run folder resumes it: finished shards are not redone.  The
manifest's fingerprint covers every setting that changes what a run writes (not its resources:
concurrency, batch sizes, CPUs, so a run can resume on another cluster), so a changed config
is refused instead of mixing two configs' output in one folder.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa
import ray.data

from kun_ray import __version__
from kun_ray.config import ConfigError, RunConfig, StorageOptions
from kun_ray.io.read import InputFile
from kun_ray.io.records import REJECT_FIELDS
from kun_ray.io.storage import is_local, pyarrow_filesystem, url_to_fs
from kun_ray.secrets import redact

MANIFEST = "manifest.json"
REPORT_PAGE = "report.html"  # kun-ray report
#: Each flow and the folder of the rows it keeps, in the order a run goes through them.
FLOW_OUTPUTS = {"read": "documents", "filter": "filtered", "dedup": "clean", "label": "labeled", "score": "scored", "polish": "polished", "final": "final"}
#: What a run folder holds: what --fresh removes, and nothing else.
LAYOUT = ["documents", "filtered", "clean", "labeled", "scored", "polished", "final", "export", "rejects", "_commits", "report.json", REPORT_PAGE, MANIFEST]
#: Settings of how a run is executed, not of what it writes: changing them does not change the fingerprint.
RESOURCE_KEYS = frozenset(
    {"num_cpus", "concurrency", "batch_size", "block_rows", "accelerator_type", "cpu_stage_num_cpus", "log_engine_metrics", "env", "max_restarts"}
)


class RunConflict(ConfigError):
    """The run folder holds a run of another config."""


def _without_resources(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_resources(v) for k, v in value.items() if k not in RESOURCE_KEYS}
    if isinstance(value, list):
        return [_without_resources(v) for v in value]
    return value


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): value}


def run_settings(config: RunConfig, inputs: list[InputFile]) -> dict[str, Any]:
    """What decides a run's output, as flat dotted keys: the config less its output and storage
    (where things are) and its resources, the sources less their paths, and the input shards."""
    data = _without_resources(config.model_dump(mode="json", exclude={"output", "storage"}))
    data["sources"] = [{k: v for k, v in s.items() if k not in ("paths", "storage")} for s in data["sources"]]
    settings = _flatten(data)
    # A model or prompt file as the config names it, not where it was found: the same run submitted
    # as a Ray job, whose files land in another folder, has the same settings.
    settings.update({key: path for key, path in config.paths_as_written.items() if key in settings})
    settings["inputs"] = sorted(f.shard for f in inputs)
    return settings


def fingerprint(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


def with_reject_columns(batch: pa.Table) -> pa.Table:
    """Rows read back from a stage's output, as live rows of a new flow."""
    for field in REJECT_FIELDS:
        batch = batch.append_column(field, pa.nulls(batch.num_rows, field.type))
    return batch


class RunFolder:
    def __init__(self, url: str, storage: StorageOptions | None = None):
        self.url = url
        self.fs, self.root = url_to_fs(url, storage or StorageOptions())
        self.arrow_fs = pyarrow_filesystem(self.fs)

    @classmethod
    def of(cls, config: RunConfig) -> RunFolder:
        """The run folder a config writes."""
        return cls(config.output.path, config.storage_for(config.output.storage))

    def path(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    def exists(self, relpath: str) -> bool:
        self.fs.invalidate_cache(self.path(relpath))
        return self.fs.exists(self.path(relpath))

    def remove(self, relpath: str) -> None:
        if self.exists(relpath):
            self.fs.rm(self.path(relpath), recursive=True)

    def remove_files(self, relpaths: list[str]) -> None:
        """Delete files known to exist (just listed): one bulk delete on object storage."""
        if relpaths:
            self.fs.rm([self.path(p) for p in relpaths])

    def list_names(self, relpath: str) -> list[str]:
        """Names in a folder (empty when it does not exist)."""
        path = self.path(relpath)
        self.fs.invalidate_cache(path)
        if not self.fs.isdir(path):
            return []
        return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(path, detail=False))

    def list_files(self, relpath: str) -> list[str]:
        """Every file under a folder, relative to the run folder."""
        path = self.path(relpath)
        self.fs.invalidate_cache(path)
        if not self.fs.isdir(path):
            return []
        base = self.root.rstrip("/") + "/"
        return sorted(p[len(base) :] for p in self.fs.find(path))

    def read_parquet(self, relpaths: list[str]) -> ray.data.Dataset:
        """Parquet files of the run folder, as written."""
        return ray.data.read_parquet([self.path(p) for p in relpaths], filesystem=self.arrow_fs)

    def read_files(self, relpaths: list[str]) -> ray.data.Dataset:
        """Parquet files of the run folder as live rows of a new flow."""
        return self.read_parquet(relpaths).map_batches(with_reject_columns, batch_format="pyarrow")

    def write_json_lines(self, dataset: ray.data.Dataset, name: str, json_args: dict[str, Any]) -> None:
        """Replace folder `name` with the dataset as JSONL files."""
        self.remove(name)
        dataset.write_json(self.path(*name.split("/")), filesystem=self.arrow_fs, **json_args)

    def write_json(self, name: str, payload: dict[str, Any]) -> None:
        """Write a JSON file atomically: a reader (or a resumed run) sees all of it or none."""
        data = redact(json.dumps(payload, ensure_ascii=False, indent=2)).encode("utf-8")
        path = self.path(name)
        if is_local(self.fs):
            self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
            partial = f"{path}.{uuid.uuid4().hex}.partial"
            self.fs.pipe_file(partial, data)
            self.fs.mv(partial, path)
        else:  # an object store's PUT is atomic
            self.fs.pipe_file(path, data)

    def read_json(self, name: str) -> dict[str, Any]:
        with self.fs.open(self.path(name), "r", encoding="utf-8") as f:
            return json.load(f)

    def clear(self) -> None:
        """Remove what a run wrote here (--fresh); anything else in the folder stays."""
        for name in LAYOUT:
            self.remove(name)

    def check(self, settings: dict[str, Any], force: bool = False) -> dict[str, Any] | None:
        """The manifest of the run already here, if any; RunConflict if it is another config's (unless `force`)."""
        if not self.exists(MANIFEST):
            return None
        manifest = self.read_json(MANIFEST)
        if manifest["fingerprint"] != fingerprint(settings) and not force:
            before = manifest["settings"]
            changed = sorted(k for k in before.keys() | settings.keys() if before.get(k) != settings.get(k))
            shown = ", ".join(changed[:8]) + (f" and {len(changed) - 8} more" if len(changed) > 8 else "")
            raise RunConflict(
                f"{self.url} holds a run of another config (changed: {shown}): "
                "re-run with --fresh to start over, or --force to continue it with this config"
            )
        return manifest

    def open(self, settings: dict[str, Any], fresh: bool = False, force: bool = False) -> dict[str, Any]:
        """Start or resume the run here: its manifest, written when new or when `force` changed the config."""
        if fresh:
            self.clear()
        manifest = self.check(settings, force)
        if manifest is None or manifest["fingerprint"] != fingerprint(settings):
            manifest = {
                "kun_ray_version": __version__,
                "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "fingerprint": fingerprint(settings),
                "settings": settings,
                "fixed": (manifest or {}).get("fixed", {}),
            }
            self.write_json(MANIFEST, manifest)
        return manifest
