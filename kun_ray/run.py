"""The run folder: where a run's stages, rejects, commits and report live, local or on object storage.

    <output>/
      manifest.json       the config's fingerprint and settings, the input shards, the plan (flows,
                          folders, stages' declarations), values fixed on first use
      documents/          the read stage's documents (Parquet); then a folder per flow, by default:
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
import os
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import ray.data

from kun_ray import __version__, crash
from kun_ray.config.base import ConfigError, StorageOptions
from kun_ray.config.run import RunConfig
from kun_ray.io.read import InputFile
from kun_ray.io.records import REJECT_FIELDS
from kun_ray.io.storage import is_local, modified, pyarrow_filesystem, url_to_fs
from kun_ray.lease import parse
from kun_ray.secrets import redact
from kun_ray.stages.registry import DEFAULT_FLOWS, READ_FLOW, READ_OUTPUT

MANIFEST = "manifest.json"
REPORT_PAGE = "report.html"  # kun-ray report
#: What a run folder holds besides its flows' folders: what --fresh removes with them, and nothing else.
RUN_FILES = ["export", "rejects", "_commits", "report.json", REPORT_PAGE, MANIFEST]


#: The name of a half-written JSON file (write_json, create_json) that a crash left behind.
PARTIAL = re.compile(r"(\.json\.[0-9a-f]{32}\.partial|^_lease\.json\.takeover-.*)$")

#: kun-ray 0.1's name, in a manifest's `fixed`, for the perplexity stage's cut.
LEGACY_CUT = "perplexity_cut"


class RunConflict(ConfigError):
    """The run folder holds a run of another config."""


@dataclass(frozen=True)
class FlowLayout:
    """A flow as a run's manifest records it: its folder, its stages, how it commits."""

    name: str
    output: str
    stages: tuple[str, ...]
    whole: bool
    export: bool = False


def layout(manifest: dict[str, Any]) -> list[FlowLayout]:
    """The flows of a run, in order, from its manifest's plan; a manifest written before plans
    were (kun-ray 0.1) had the default flows, every stage of them."""
    flows = (manifest.get("plan") or {}).get("flows")
    if flows is None:
        flows = [{"name": READ_FLOW, "output": READ_OUTPUT, "stages": [READ_FLOW], "commit": "shard"}]
        flows += [
            {"name": n, **f, "commit": "whole" if n in ("dedup", "final") else "shard"}
            for n, f in DEFAULT_FLOWS.items()
        ]
    return [
        FlowLayout(f["name"], f["output"], tuple(f["stages"]), f["commit"] == "whole", bool(f.get("export")))
        for f in flows
    ]


def declared(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each stage's declarations (measures, charts, ...) as the manifest's plan records them; for a
    run folder of kun-ray 0.1, what its stages had, from its settings."""
    stages = (manifest.get("plan") or {}).get("stages")
    if stages is not None:
        return stages
    settings = manifest.get("settings", {})

    def chart(
        column: str, title: str, unit: str, threshold: Any, side: str, fixed: str | None = None
    ) -> dict[str, Any]:
        return {"column": column, "title": title, "unit": unit, "threshold": threshold, "side": side, "fixed": fixed}

    if settings.get("length.tokenizer") is not None:
        length = chart("n_tokens", "Length in tokens", "tokens", settings.get("length.max_tokens"), "max")
    else:
        length = chart("n_chars", "Length in characters", "characters", settings.get("length.max_chars"), "max")
    stages = {
        "length": {"measures": ["n_chars", "n_tokens"], "charts": [length]},
        "perplexity": {
            "measures": ["ppl"],
            "charts": [chart("ppl", "Perplexity (KenLM)", "perplexity", None, "max", "max_ppl")],
        },
        "score": {
            "measures": ["score"],
            "charts": [chart("score", "Score", "score", settings.get("score.min_score"), "min")],
        },
    }
    return {name: stage for name, stage in stages.items() if settings.get(f"{name}.enabled")}


def measures(manifest: dict[str, Any]) -> list[str]:
    """The measure columns a run's stages declare, which its reject rows keep."""
    return list(dict.fromkeys(m for stage in declared(manifest).values() for m in stage["measures"]))


def run_settings(config: RunConfig, inputs: list[InputFile], start: dict[str, Any] | None = None) -> dict[str, Any]:
    """What decides a run's output (RunConfig.settings) and its input shards, as flat dotted keys;
    for a run that starts from another's rows, that run's fingerprint (`start`: its manifest)."""
    settings = {**config.settings(), "inputs": sorted(f.shard for f in inputs)}
    if start is not None:
        settings["start.fingerprint"] = start["fingerprint"]
    return settings


def changed_settings(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """The settings that differ between two runs' settings, less those of a stage that is off in
    both (`X.enabled` false): its settings decide nothing, so a new default there does not make
    another run."""
    off = {k.removesuffix(".enabled") for k in before if k.endswith(".enabled") and not before[k]}
    off &= {k.removesuffix(".enabled") for k in after if k.endswith(".enabled") and not after[k]}

    def counts(key: str) -> bool:
        return key.endswith(".enabled") or not any(key.startswith(f"{section}.") for section in off)

    return sorted(k for k in before.keys() | after.keys() if counts(k) and before.get(k) != after.get(k))


def fingerprint(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


def with_reject_columns(batch: pa.Table) -> pa.Table:
    """Rows read back from a stage's output, as live rows of a new flow."""
    for field in REJECT_FIELDS:
        batch = batch.append_column(field, pa.nulls(batch.num_rows, field.type))
    return batch


def json_bytes(payload: dict[str, Any]) -> bytes:
    """A run folder's JSON file as written: indented, Chinese readable, secrets masked."""
    return redact(json.dumps(payload, ensure_ascii=False, indent=2)).encode("utf-8")


def precondition_failed(error: BaseException | None) -> bool:
    """Whether an object store refused a conditional write (HTTP 412 PreconditionFailed)."""
    while error is not None:
        response = getattr(error, "response", None) or {}
        if response.get("Error", {}).get("Code") in ("PreconditionFailed", "412"):
            return True
        error = error.__cause__
    return False


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

    def list_files(self, relpath: str, before: float | None = None, maxdepth: int | None = None) -> list[str]:
        """Every file under a folder (`""`: the run folder), relative to the run folder, at most
        `maxdepth` levels down; only those last modified before `before` (seconds since the
        epoch, by the store's clock) when it is given."""
        found = self.list_modified(relpath, maxdepth)
        return sorted(p for p, t in found.items() if before is None or t < before)

    def list_modified(self, relpath: str, maxdepth: int | None = None) -> dict[str, float]:
        """Every file under a folder, relative to the run folder, with when it was last written."""
        path = self.path(relpath) if relpath else self.root.rstrip("/")
        self.fs.invalidate_cache(path)
        if not self.fs.isdir(path):
            return {}
        base = self.root.rstrip("/") + "/"
        found = self.fs.find(path, maxdepth=maxdepth, detail=True)
        return {p[len(base) :]: modified(info) for p, info in found.items() if info.get("type") != "directory"}

    @property
    def is_local(self) -> bool:
        return is_local(self.fs)

    def touch(self, relpath: str) -> None:
        """Set a local file's modification time to now."""
        os.utime(self.path(relpath))

    def modified(self, relpath: str) -> float:
        """When a file was last written, by the store's clock (seconds since the epoch)."""
        self.fs.invalidate_cache(self.path(relpath))
        return modified(self.fs.info(self.path(relpath)))

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

    def _partial(self, path: str, data: bytes) -> str:
        """A local file's whole content written beside it under a fresh `*.partial` name, for a
        rename or a hard link to publish at once."""
        self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        partial = f"{path}.{uuid.uuid4().hex}.partial"
        self.fs.pipe_file(partial, data)
        return partial

    def write_json(self, name: str, payload: dict[str, Any]) -> None:
        """Write a JSON file atomically: a reader (or a resumed run) sees all of it or none."""
        data, path = json_bytes(payload), self.path(name)
        if is_local(self.fs):
            partial = self._partial(path, data)
            if name.startswith("_commits/"):
                crash.point(f"commit:{name.split('/')[1]}")
            self.fs.mv(partial, path)
        else:  # an object store's PUT is atomic
            self.fs.pipe_file(path, data)

    def read_json(self, name: str) -> dict[str, Any]:
        with self.fs.open(self.path(name), "r", encoding="utf-8") as f:
            return json.load(f)

    def create_json(self, name: str, payload: dict[str, Any]) -> bool:
        """Write a JSON file only if there is none, atomically; False when there is one.  On a
        local disk a hard link of a complete file (which fails when the name exists), on object
        storage a conditional put (If-None-Match: *)."""
        data, path = json_bytes(payload), self.path(name)
        if is_local(self.fs):
            partial = self._partial(path, data)
            try:
                os.link(partial, path)
            except FileExistsError:
                return False
            except OSError:  # a filesystem without hard links: an exclusive create (a reader may see it torn)
                try:
                    with open(path, "xb") as f:
                        f.write(data)
                except FileExistsError:
                    return False
            finally:
                os.unlink(partial)
            return True
        try:
            self.fs.pipe_file(path, data, mode="create")
        except FileExistsError:
            return False
        except OSError as error:
            if precondition_failed(error):  # s3fs maps a 412 without its Condition (SeaweedFS, MinIO) to EINVAL
                return False
            raise
        return True

    def read_lease(self, name: str) -> tuple[dict[str, Any] | None, float]:
        """The holder in a lease file and the seconds since it was written; (None, 0) when there is none."""
        path = self.path(name)
        self.fs.invalidate_cache(path)
        try:
            data, written = self.fs.cat_file(path), modified(self.fs.info(path))
        except FileNotFoundError:
            return None, 0.0
        return parse(data), max(0.0, datetime.now(UTC).timestamp() - written)

    def remove_partials(self, before: float) -> None:
        """Delete the half-written JSON files (`*.partial`) a crashed run left, and the markers
        of lease takeovers done (kun_ray/lease.py), older than `before`."""
        found = self.list_files("", before, maxdepth=1) + self.list_files("_commits", before)
        self.remove_files([p for p in found if PARTIAL.search(p)])

    def clear(self, outputs: list[str]) -> None:
        """Remove what a run wrote here (--fresh): the flows' folders of the run here and of the
        one to start (`outputs`), and the run's own files; anything else in the folder stays."""
        if self.exists(MANIFEST):
            outputs = [*outputs, *(flow.output for flow in layout(self.read_json(MANIFEST)))]
        for name in [*dict.fromkeys(outputs), *RUN_FILES]:
            self.remove(name)

    def check(self, settings: dict[str, Any], force: bool = False) -> dict[str, Any] | None:
        """The manifest of the run already here, if any; RunConflict if it is another config's (unless `force`)."""
        if not self.exists(MANIFEST):
            return None
        manifest = self.read_json(MANIFEST)
        if manifest["fingerprint"] != fingerprint(settings) and not force:
            changed = changed_settings(manifest["settings"], settings)
            if not changed:
                return manifest
            shown = ", ".join(changed[:8]) + (f" and {len(changed) - 8} more" if len(changed) > 8 else "")
            raise RunConflict(
                f"{self.url} holds a run of another config (changed: {shown}): "
                "re-run with --fresh to start over, or --force to continue it with this config"
            )
        return manifest

    def open(
        self, settings: dict[str, Any], plan: dict[str, Any], fresh: bool = False, force: bool = False
    ) -> dict[str, Any]:
        """Start or resume the run here: its manifest, written when new, when `force` changed the
        config, or when it lacks the plan (a run folder of kun-ray 0.1)."""
        if fresh:
            self.clear([flow["output"] for flow in plan["flows"]])
        manifest = self.check(settings, force)
        if manifest is None or manifest["fingerprint"] != fingerprint(settings) or manifest.get("plan") != plan:
            fixed = (manifest or {}).get("fixed", {})
            if LEGACY_CUT in fixed:
                fixed["perplexity"] = fixed.pop(LEGACY_CUT)
            manifest = {
                "kun_ray_version": __version__,
                "created_at": (manifest or {}).get("created_at") or datetime.now(UTC).isoformat(timespec="seconds"),
                "fingerprint": fingerprint(settings),
                "settings": settings,
                "plan": plan,
                "fixed": fixed,
            }
            self.write_json(MANIFEST, manifest)
        return manifest
