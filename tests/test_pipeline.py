"""`kun-ray run` end to end on a real local Ray cluster, from local disk and from a real S3 server."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pytest
import yaml
from conftest import HF_TOKEN, S3_KEY, S3_SECRET
from corpus import build_corpus
from faults import FaultProxy

from kun_ray.pipeline import run
from kun_ray.plan import parse_config
from kun_ray.query import Run


def outcomes(documents, rejects):
    """(source, doc_id) -> None for a document, else its reject reason."""
    result = {}
    for row in documents:
        result[(row["source"], row["doc_id"])] = None
    for row in rejects:
        assert (row["source"], row["doc_id"]) not in result, "a record is both kept and rejected"
        result[(row["source"], row["doc_id"])] = row["reason"]
    return result


def read_local(path):
    return pads.dataset(str(path), format="parquet").to_table().to_pylist() if path.exists() else []


def run_rows(fs, root: str) -> dict[str, list[dict]]:
    """Every Parquet folder of a run folder (each flow's output and rejects/<stage>), all its
    files' rows sorted: a stray or duplicated file shows."""
    fs.invalidate_cache()
    folders = [p for p in fs.ls(root, detail=False) if fs.isdir(p) and p.rsplit("/", 1)[-1][0] not in "_."]
    folders = [p for p in folders if not p.endswith(("/export", "/rejects"))]
    folders += fs.ls(f"{root}/rejects", detail=False) if fs.exists(f"{root}/rejects") else []
    arrow = pafs.PyFileSystem(pafs.FSSpecHandler(fs))
    return {
        p[len(root) + 1 :]: sorted(
            pads.dataset(p, format="parquet", filesystem=arrow).to_table().to_pylist(),
            key=lambda r: (r["doc_id"], r.get("stage") or ""),
        )
        for p in folders
    }


def local_rows(out: Path) -> dict[str, list[dict]]:
    import fsspec

    return run_rows(fsspec.filesystem("file"), str(out))


def read_in(report: dict) -> int:
    return report["stages"][0]["in"]


def cli_run(config: dict, path: Path, ray_address: str, *flags: str) -> subprocess.Popen:
    """`kun-ray run` of a config, as a driver joining the test cluster; stdout and stderr piped."""
    path.write_text(yaml.safe_dump(config, allow_unicode=True))
    return subprocess.Popen(
        [sys.executable, "-m", "kun_ray.cli", "run", "--no-progress", *flags, str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "RAY_ADDRESS": ray_address},
    )


def one_refused(first: subprocess.Popen, second: subprocess.Popen, folder: str) -> str:
    """Of two drivers started at once on one folder, one ran and the other stopped before any work;
    what the one that ran printed on stdout."""
    results = [(out, err, p.returncode) for p in (first, second) for out, err in [p.communicate(timeout=600)]]
    assert sorted(code for _, _, code in results) == [0, 2], [err[-2000:] for _, err, _ in results]
    out, err, _ = next(r for r in results if r[2] == 2)
    assert out == "" and err.count("\n") == 1, err
    assert err.startswith(f"kun-ray: {folder} is being written by another run: host {socket.gethostname()} pid ")
    return next(out for out, _, code in results if code == 0)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def local_run(ray_cluster, corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    config = parse_config({"sources": corpus.sources(), "output": str(out), "read": {"block_rows": 3}})
    return out, run(config)


def test_every_record_lands_in_documents_or_rejects(corpus, local_run):
    out, _ = local_run
    documents, rejects = read_local(out / "documents"), read_local(out / "rejects" / "read")
    assert len(documents) + len(rejects) == len(corpus.expected)
    assert outcomes(documents, rejects) == corpus.expected
    assert {r["stage"] for r in rejects} == {"read"}
    assert all(r["detail"] for r in rejects)
    assert sorted(os.listdir(out)) == [
        "_commits",
        "clean",
        "documents",
        "filtered",
        "manifest.json",
        "rejects",
        "report.json",
    ]


def test_every_record_ends_clean_or_rejected_by_one_stage(corpus, local_run):
    out, report = local_run
    clean, rejects = read_local(out / "clean"), read_local(out / "rejects")
    final = outcomes(clean, rejects)
    assert final.keys() == corpus.expected.keys()
    stages = [s["stage"] for s in report["stages"]]
    assert stages == ["read", "normalize", "length", "heuristics", "exact_dedup", "near_dedup"]
    for before, after in zip(report["stages"], report["stages"][1:]):
        assert after["in"] == before["kept"]
    assert report["stages"][-1]["kept"] == len(clean)


def test_document_schema(local_run):
    out, _ = local_run
    schema = pads.dataset(str(out / "documents"), format="parquet").schema
    assert schema.names == ["doc_id", "source", "shard", "record", "text", "title", "meta"]


def test_report_accounts_for_every_record(corpus, local_run):
    out, report = local_run
    assert json.loads((out / "report.json").read_text()) == report
    read = report["stages"][0]
    expected_reasons = Counter(r for r in corpus.expected.values() if r)
    assert read["in"] == len(corpus.expected)
    assert read["kept"] == sum(r is None for r in corpus.expected.values())
    assert read["rejected_by_reason"] == dict(expected_reasons)
    for source, counts in read["by_source"].items():
        mine = [r for (s, _), r in corpus.expected.items() if s == source]
        assert (counts["in"], counts["kept"]) == (len(mine), mine.count(None))
    assert report["sources"]["skypile"]["files"] == 2
    assert report["warnings"] == [  # a cut that does nothing is said, not silent
        "length.max_tokens: 512 is not applied: no length.tokenizer to count tokens with (name the label model's, "
        "or set max_tokens: null to say it is off)"
    ]


def test_rerun_of_a_finished_run_redoes_nothing(ray_cluster, corpus, local_run):
    out, first = local_run
    files = sorted(p for p in out.rglob("*") if p.is_file() and p.name != "report.json")
    second = run(parse_config({"sources": corpus.sources(), "output": str(out)}))
    assert second["stages"] == first["stages"]
    for flow in second["flows"].values():
        assert flow["rows"] == 0 and flow["shards_resumed"] == flow["shards"]
    assert [(s["stage"], s["flow"]) for s in second["stages"]][:3] == [
        ("read", "read"),
        ("normalize", "filter"),
        ("length", "filter"),
    ]
    assert sorted(p for p in out.rglob("*") if p.is_file() and p.name != "report.json") == files


def test_a_run_that_starts_from_another_runs_rows_runs_only_the_flows_after(ray_cluster, corpus, local_run, tmp_path):
    """`start:` runs dedup on what the filter flow committed in local_run's folder: the same
    clean/ and dedup rejects, nothing read or filtered, and local_run's folder untouched."""
    from kun_ray.config import ConfigError

    upstream, _ = local_run
    before = sorted((p, p.stat().st_mtime_ns) for p in upstream.rglob("*") if p.is_file())
    out = tmp_path / "started"
    config = {"sources": corpus.sources(), "output": str(out), "start": {"run": str(upstream), "flow": "filter"}}
    report = run(parse_config(config))
    assert list(report["flows"]) == ["dedup"] and report["start"]["flow"] == "filter"
    assert report["start"]["rows"] == read_local(upstream / "filtered").__len__() == report["stages"][0]["in"]
    started = local_rows(out)
    assert set(started) == {"clean", "rejects/exact_dedup", "rejects/near_dedup"}
    assert started == {name: rows for name, rows in local_rows(upstream).items() if name in started}
    assert sorted((p, p.stat().st_mtime_ns) for p in upstream.rglob("*") if p.is_file()) == before
    manifest = json.loads((out / "manifest.json").read_text())
    assert [f["name"] for f in manifest["plan"]["flows"]] == ["dedup"] and manifest["plan"]["start"] == "filter"
    assert (
        manifest["settings"]["inputs"] == []
        and manifest["settings"]["start.fingerprint"]
        == (json.loads((upstream / "manifest.json").read_text())["fingerprint"])
    )
    opened = Run.open(out)  # read back like any run: its own flows, its funnel from its commits
    assert opened.stages == ["clean"] and [s["stage"] for s in opened.funnel()] == ["exact_dedup", "near_dedup"]
    assert opened.rows("SELECT count(*) AS n FROM clean") == [{"n": len(started["clean"])}]
    again = run(parse_config(config))["flows"]["dedup"]  # resumes like any run
    assert again["rows"] == 0 and again["shards_resumed"] == again["shards"] == report["flows"]["dedup"]["shards"]

    crashed = tmp_path / "crashed"  # its filter flow died before its last commit
    shutil.copytree(upstream, crashed)
    next((crashed / "_commits" / "filter").glob("*.json")).unlink()
    for start, message in [
        ({"run": str(tmp_path / "nothing"), "flow": "filter"}, f"start.run: {tmp_path / 'nothing'} holds no run"),
        ({"run": str(crashed), "flow": "filter"}, f"start.flow: flow filter of the run at {crashed} is not finished"),
        ({"run": str(upstream), "flow": "label"}, "start.flow: no flow 'label' in the config's plan"),
        ({"run": str(upstream), "flow": "dedup"}, "start.flow: dedup is the plan's last flow"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            run(parse_config({**config, "output": str(tmp_path / "refused"), "start": start}))


@pytest.fixture(scope="module")
def s3_corpus(s3, corpus):
    fs = s3.fs()
    fs.put(str(corpus.root) + "/", "corpora/test/", recursive=True)
    fs.invalidate_cache()
    return "s3://corpora/test"


@pytest.fixture(scope="module")
def s3_run(ray_cluster, s3, corpus, s3_corpus):
    """A clean run from S3 to S3: the reference of the runs that meet other drivers and faults."""
    config = {"sources": corpus.sources(s3_corpus), "output": "s3://runs/from-s3", "storage": s3.storage()}
    return config, run(parse_config(config))


def test_run_from_s3_to_s3(s3, corpus, s3_run, local_run):
    _, report = s3_run
    fs = s3.fs()
    fs.invalidate_cache()
    arrow_fs = pafs.PyFileSystem(pafs.FSSpecHandler(fs))
    documents = pads.dataset("runs/from-s3/documents", format="parquet", filesystem=arrow_fs).to_table().to_pylist()
    rejects = pads.dataset("runs/from-s3/rejects/read", format="parquet", filesystem=arrow_fs).to_table().to_pylist()
    assert outcomes(documents, rejects) == corpus.expected
    assert json.loads(fs.cat("runs/from-s3/report.json")) == report
    assert report["stages"][0]["rejected_by_reason"] == local_run[1]["stages"][0]["rejected_by_reason"]
    detail = next(r["detail"] for r in rejects if r["reason"] == "invalid_utf8")
    assert detail.startswith("s3://corpora/test/skypile/data/2020-40_zh_head_0000.jsonl, line 2:")
    assert not fs.exists("runs/from-s3/_lease.json")  # given back
    for path in fs.find("runs/from-s3"):  # the credentials reached s3fs from the environment, and nowhere else
        data = fs.cat(path)
        assert S3_KEY.encode() not in data and S3_SECRET.encode() not in data, path


def test_a_run_through_a_flaky_store_equals_a_clean_run(s3, s3_run):
    """Reading and writing S3 through a proxy that fails every tenth request (SlowDown, 500, a
    connection dropped mid-upload, a stall past the read timeout): the run retries its way to
    the clean run's output, row for row."""
    config, report = s3_run
    with FaultProxy(s3.port, every=10, stalls=2, stall_s=4) as proxy:
        storage = {"endpoint_url": proxy.endpoint, "retries": 6, "read_timeout_s": 2}
        flaky = run(parse_config({**config, "output": "s3://runs/flaky", "storage": storage}))
    assert set(proxy.faults) == {"slow_down", "internal_error", "dropped", "stall"}, proxy.faults
    fs = s3.fs()
    assert run_rows(fs, "runs/flaky") == run_rows(fs, "runs/from-s3")
    assert [s["kept"] for s in flaky["stages"]] == [s["kept"] for s in report["stages"]]


def test_a_store_that_stays_down_fails_with_one_line_naming_it(corpus, tmp_path):
    config = {
        "sources": corpus.sources(),
        "output": {"path": "s3://runs/down", "storage": {"endpoint_url": "http://127.0.0.1:9", "retries": 2}},
    }
    (tmp_path / "down.yaml").write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [sys.executable, "-m", "kun_ray.cli", "run", str(tmp_path / "down.yaml")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1
    assert result.stderr == "kun-ray: cannot reach the object store at http://127.0.0.1:9: EndpointConnectionError\n"


def test_two_drivers_at_once_on_one_s3_folder(ray_cluster, s3, s3_run, tmp_path):
    config, _ = s3_run
    config = {**config, "output": "s3://runs/two-drivers"}
    first, second = (cli_run(config, tmp_path / f"{n}.yaml", ray_cluster) for n in ("first", "second"))
    one_refused(first, second, "s3://runs/two-drivers")
    fs = s3.fs()
    assert run_rows(fs, "runs/two-drivers") == run_rows(fs, "runs/from-s3")
    assert not fs.exists("runs/two-drivers/_lease.json")


def test_two_drivers_at_once_on_one_local_folder(ray_cluster, corpus, local_run, tmp_path):
    out = tmp_path / "run"
    config = {"sources": corpus.sources(), "output": str(out)}
    first, second = (cli_run(config, tmp_path / f"{n}.yaml", ray_cluster, "--json") for n in ("first", "second"))
    printed = one_refused(first, second, str(out))
    assert json.loads(printed) == json.loads((out / "report.json").read_text())  # --json: the report, alone
    assert local_rows(out) == local_rows(local_run[0])
    assert not (out / "_lease.json").exists()


def test_wrong_s3_credentials_fail_before_work_with_one_line(s3, s3_corpus, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "sources": [{"name": "s", "format": "skypile", "paths": [f"{s3_corpus}/skypile/data/*.jsonl"]}],
                "output": str(tmp_path / "out"),
                "storage": s3.storage(),
            }
        )
    )
    env = {**os.environ, "AWS_SECRET_ACCESS_KEY": "not-the-secret"}
    result = subprocess.run(
        [sys.executable, "-m", "kun_ray.cli", "run", str(config)], capture_output=True, text=True, timeout=120, env=env
    )
    assert result.returncode == 2
    assert result.stderr.startswith(
        f"kun-ray: config error: {config}: sources[0].paths[0]: cannot list s3://corpora/test/skypile/data/*.jsonl: PermissionError"
    )
    assert result.stderr.count("\n") == 1
    assert "not-the-secret" not in result.stderr + result.stdout


def test_cli_run_prints_only_its_report_on_stdout_under_load(ray_cluster, tmp_path):
    """`kun-ray run ... | head -2` gets the table's first two lines, while a second driver (`--json`)
    runs beside it: Ray's forwarded worker lines and the logs go to stderr."""
    config = os.path.join(os.path.dirname(__file__), "..", "jobs", "demo.yaml")
    demo = yaml.safe_load(open(config))
    demo["perplexity"] = {
        "enabled": False
    }  # the demo's models are built by `make demo`; the clean tests build their own
    demo["length"].pop("tokenizer")
    for stage in ("label", "score", "polish"):  # the LLM stages run in test_llm_pipeline.py
        demo[stage]["enabled"] = False
    demo["sources"] = [
        {**s, "paths": [os.path.abspath(os.path.join(os.path.dirname(config), p)) for p in s["paths"]]}
        for s in demo["sources"]
    ]
    (tmp_path / "demo.yaml").write_text(yaml.safe_dump({**demo, "output": str(tmp_path / "demo")}, allow_unicode=True))
    env = {**os.environ, "RAY_ADDRESS": ray_cluster}
    piped = subprocess.Popen(
        ["bash", "-c", f'{sys.executable} -m kun_ray.cli run --no-progress {tmp_path / "demo.yaml"} | head -2; '
         'echo "exit ${PIPESTATUS[0]}" >&2'],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    beside = cli_run({**demo, "output": str(tmp_path / "beside")}, tmp_path / "beside.yaml", ray_cluster)
    stdout, stderr = piped.communicate(timeout=600)
    tables, beside_err = beside.communicate(timeout=600)
    assert stderr.endswith("exit 0\n"), stderr[-3000:]
    assert beside.returncode == 0, beside_err[-3000:]
    flows = tables.split("\n\n")[1].splitlines()
    beside_report = json.loads((tmp_path / "beside" / "report.json").read_text())
    assert flows[0].split() == ["flow", "shards", "resumed", "rows", "wall", "s", "rows/s"]
    assert flows[1].split()[:4] == [
        "read",
        str(beside_report["flows"]["read"]["shards"]),
        "0",
        str(read_in(beside_report)),
    ]
    assert tables.splitlines()[-1].startswith(f"run folder: {tmp_path / 'beside'}  (")

    report = json.loads((tmp_path / "demo" / "report.json").read_text())
    read = report["stages"][0]
    assert read["in"] == read["kept"] + read["rejected"] > 0
    header, total = stdout.splitlines()  # and nothing else reached stdout before them
    assert header.split()[:5] == ["stage", "source", "in", "kept", "rejected"]
    assert total.split()[:5] == ["read", "(all)", str(read["in"]), str(read["kept"]), str(read["rejected"])]
    assert f"kun-ray: Ray cluster at {ray_cluster} (2 CPUs" in stderr
    assert f"kun-ray: read: {read['in']:,} in, {read['kept']:,} kept, {read['rejected']:,} rejected;" in stderr
    assert "kun-ray: warning: length.max_tokens: 512 is not applied: no length.tokenizer" in stderr


def test_storage_options_reach_s3fs(s3, s3_corpus):
    """`anonymous: true` really sends unsigned requests: this server refuses them, so listing fails."""
    from kun_ray.config import ConfigError
    from kun_ray.io.read import plan_inputs

    source = {"name": "s", "format": "skypile", "paths": [f"{s3_corpus}/skypile/data/*.jsonl"]}
    signed = parse_config({"sources": [source], "output": "/tmp/unused", "storage": s3.storage()})
    assert [f.relpath for f in plan_inputs(signed)] == ["2020-40_zh_head_0000.jsonl"]
    anonymous = parse_config(
        {"sources": [{**source, "storage": {**s3.storage(), "anonymous": True}}], "output": "/tmp/unused"}
    )
    with pytest.raises(ConfigError, match=r"sources\[0\]\.paths\[0\]: cannot list"):
        plan_inputs(anonymous)


def test_secrets_appear_nowhere_a_run_writes_or_prints(ray_cluster, s3, s3_corpus, corpus, tmp_path):
    """A CLI run S3 to S3 with credentials in the environment, then a failing run: search the run
    folder, everything printed, and the session's Ray folder: every log of every run so far."""
    import ray

    secrets = [S3_KEY.encode(), S3_SECRET.encode(), HF_TOKEN.encode()]
    env = {**os.environ, "RAY_ADDRESS": ray_cluster}

    def cli(output: str | dict) -> subprocess.CompletedProcess:
        config = tmp_path / "run.yaml"
        config.write_text(
            yaml.safe_dump({"sources": corpus.sources(s3_corpus), "output": output, "storage": s3.storage()})
        )
        return subprocess.run(
            [sys.executable, "-m", "kun_ray.cli", "run", "--no-progress", str(config)],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )

    done = cli("s3://runs/secrets")
    assert done.returncode == 0, done.stderr[-3000:]
    failed = cli(
        {"path": "s3://runs/unreachable", "storage": {"endpoint_url": "http://127.0.0.1:9", "retries": 2}}
    )  # nothing listens
    assert failed.returncode == 1 and "127.0.0.1:9" in failed.stderr, failed.stderr[-3000:]
    fs = s3.fs()
    fs.invalidate_cache()
    written = {path: fs.cat(path) for path in fs.find("runs/secrets")}
    assert {"runs/secrets/report.json", "runs/secrets/manifest.json"} <= set(written)
    session = Path(ray._private.worker.global_worker.node.get_session_dir_path())
    logs = {str(p): p.read_bytes() for p in session.rglob("*") if p.is_file() and not p.is_symlink()}
    assert sum("/logs/worker-" in p for p in logs) > 2  # the workers of this run and of the runs before it
    printed = {
        "stdout": done.stdout.encode(),
        "stderr": done.stderr.encode(),
        "failed": (failed.stdout + failed.stderr).encode(),
    }
    for where, data in {**written, **logs, **printed}.items():
        for secret in secrets:
            assert secret not in data, f"{secret!r} in {where}"
