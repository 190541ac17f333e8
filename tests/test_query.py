"""Reading a run back (kun_ray/query.py, `kun-ray show|sql|sample|trace|report`): on the run the
LLM pipeline tests wrote (tests/llm_runs.py), on a copy of it on the SeaweedFS S3 server, and
the report page in a real headless Chromium."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import pyarrow.dataset as pads
import pytest
from llm_runs import KUN_MAX_PPL, NOISE, OVERLONG
from rich.cells import cell_len

import kun_ray
from kun_ray.cli import main
from kun_ray.llm.polish import clean_instruction
from kun_ray.query import Run, RunNotFound

STAGES = ["documents", "filtered", "clean", "labeled", "scored", "polished", "final"]


def rows_of(path: Path) -> list[dict]:
    return pads.dataset(str(path), format="parquet").to_table().to_pylist() if path.exists() else []


def doc_id_of(out: Path, text: str) -> str:
    return next(r["doc_id"] for r in rows_of(out / "documents") if r["text"] == text)


@pytest.fixture(scope="module")
def local(kun_run) -> Run:
    return kun_ray.Run.open(kun_run[2])  # the public name


@pytest.fixture(scope="module")
def on_s3(kun_run, s3) -> Run:
    """The same run folder, copied as it is to the S3 server."""
    s3.fs().put(str(kun_run[2]), "runs/query-run", recursive=True)
    return Run.open("s3://runs/query-run", storage=s3.storage())


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --- the Python API ---------------------------------------------------------------------------


def test_a_run_lists_its_stages_and_its_live_funnel_equals_the_report(kun_run, local):
    _, report, _ = kun_run
    assert local.stages == STAGES and local.finished

    def strip(stages):
        keys = ("stage", "flow", "in", "kept", "rejected", "rejected_by_reason", "by_source")
        return [{k: v for k, v in s.items() if k in keys} for s in stages]

    assert strip(local.funnel()) == strip(report["stages"])  # counted from the commits alone
    assert all(p["done"] and p["shards"] == p["of"] == 2 for p in local.progress().values())


def test_stage_is_a_ray_dataset_of_the_committed_rows(kun_run, local):
    out = kun_run[2]
    scored = local.stage("scored")
    assert scored.count() == len(rows_of(out / "scored")) > 0
    frame = scored.to_pandas()
    assert {"doc_id", "instruction", "score", "score_raw"} <= set(frame.columns)
    assert sorted(frame["doc_id"]) == sorted(r["doc_id"] for r in rows_of(out / "scored"))
    with pytest.raises(RunNotFound, match=r"no stage 'scord' \(stages: documents, filtered"):
        local.stage("scord")


def test_rejects_by_stage_reason_and_source(local):
    label = local.rejects(stage="label", reason="inference_error").take_all()
    assert [r["text"] for r in label] == [OVERLONG] and label[0]["source"] == "sky"
    noise = local.rejects(source="web", reason="ppl_above_max").take_all()
    assert [(r["text"], r["stage"]) for r in noise] == [(NOISE, "perplexity")] and noise[0]["ppl"] > KUN_MAX_PPL
    assert local.rejects(stage="label", source="web").count() == 0
    assert local.rejects().count() == sum(s["rejected"] for s in local.funnel())


def test_sql_has_a_view_per_stage_and_rejects_and_funnel(kun_run, local):
    _, report, out = kun_run
    for stage in STAGES:
        assert local.sql(f"SELECT count(*) FROM {stage}").fetchall() == [(len(rows_of(out / stage)),)]
    by_reason = dict(
        ((s, r), n) for s, r, n in local.sql("SELECT stage, reason, count(*) FROM rejects GROUP BY ALL").fetchall()
    )
    expected = {(s["stage"], r): n for s in report["stages"] for r, n in s["rejected_by_reason"].items()}
    assert by_reason == expected and ("perplexity", "ppl_above_max") in by_reason
    kept = dict(local.sql("SELECT stage, sum(kept) FROM funnel GROUP BY stage").fetchall())
    assert kept == {s["stage"]: s["kept"] for s in report["stages"]}
    mix = dict(local.sql("SELECT source, count(*) FROM final GROUP BY source").fetchall())
    assert sum(mix.values()) == len(rows_of(out / "final")) and set(mix) <= {"sky", "web"}
    assert local.table("scored").filter("score >= 0").df().shape[0] == len(rows_of(out / "scored"))


def test_trace_follows_a_document_to_the_stage_that_dropped_it(kun_run, local):
    out = kun_run[2]
    trace = local.trace(doc_id_of(out, OVERLONG))
    assert [(s.stage, s.kept) for s in trace.steps] == [
        ("documents", True),
        ("filtered", True),
        ("clean", True),
        ("label", False),
    ]
    assert trace.dropped.reason == "inference_error" and "maximum context length" in trace.dropped.detail
    assert trace.steps[1].added["n_tokens"] > 256 and trace.source == "sky"
    noise = local.trace(doc_id_of(out, NOISE))
    assert [s.stage for s in noise.steps] == ["documents", "perplexity"]
    assert noise.dropped.added["ppl"] > KUN_MAX_PPL and noise.outcome == "dropped by perplexity: ppl_above_max"
    text = str(noise)
    assert "perplexity  dropped  ppl_above_max: perplexity" in text and noise.doc_id in text


def test_trace_of_a_kept_pair_shows_what_each_stage_added(kun_run, local):
    final = rows_of(kun_run[2] / "final")[0]
    trace = local.trace(final["doc_id"], source=final["source"])
    assert [s.stage for s in trace.steps] == STAGES and trace.dropped is None
    added = {s.stage: s.added for s in trace.steps}
    # labelled as written; polish cleaned it (Kun's instruction cleaning)
    assert clean_instruction(added["labeled"]["instruction"]) == (final["instruction"], None)
    assert added["scored"]["score"] == pytest.approx(final["score"]) and added["polished"]["answer"] == final["answer"]
    assert trace.outcome == "kept through final"
    with pytest.raises(RunNotFound, match="no document 'nope' in any committed stage"):
        local.trace("nope")


def test_only_committed_files_are_read(kun_run, tmp_path):
    """A run that is still going, or crashed: an uncommitted file is not read, a flow without commits is no stage."""
    copy = tmp_path / "run"
    shutil.copytree(kun_run[2], copy)
    stray = copy / "scored" / "stray-uncommitted.parquet"
    shutil.copy(next((copy / "polished").glob("*.parquet")), stray)  # what a crashed write leaves
    shutil.rmtree(copy / "_commits" / "final")
    (copy / "report.json").unlink()
    next((copy / "_commits" / "polish").glob("*.json")).unlink()  # one of polish's two shards not done yet
    run = Run.open(copy)
    assert run.stages == STAGES[:-1] and not run.finished
    progress = run.progress()
    assert (
        progress["polish"] == {"stage": "polished", "shards": 1, "of": 2, "done": False} and progress["score"]["done"]
    )
    assert run.sql("SELECT count(*) FROM scored").fetchall() == [(len(rows_of(kun_run[2] / "scored")),)]
    assert run.stage("scored").count() == len(rows_of(kun_run[2] / "scored"))
    assert "final" not in run.progress() and not any(s["flow"] == "final" for s in run.funnel())


def test_the_same_run_on_s3_reads_the_same(kun_run, local, on_s3):
    assert on_s3.stages == local.stages and on_s3.funnel() == local.funnel()
    query = "SELECT stage, reason, source, doc_id FROM rejects ORDER BY ALL"
    assert on_s3.sql(query).fetchall() == local.sql(query).fetchall()
    doc = doc_id_of(kun_run[2], OVERLONG)
    assert on_s3.trace(doc).steps == local.trace(doc).steps
    assert on_s3.stage("final").count() == local.stage("final").count()  # Ray Data through the same fsspec filesystem


def test_open_takes_the_config_that_wrote_the_run(kun_run, tmp_path):
    config, _, out = kun_run
    path = tmp_path / "run.yaml"
    path.write_text(json.dumps(config.model_dump(mode="json")), encoding="utf-8")  # JSON is YAML
    assert Run.open(path).url == str(out) and Run.open(path).stages == STAGES
    with pytest.raises(RunNotFound, match=r"no kun-ray run here \(no manifest.json\)"):
        Run.open(tmp_path)


# --- the command line -------------------------------------------------------------------------


def test_cli_show_prints_the_funnel_and_progress(kun_run, capsys):
    code, out, _ = cli(capsys, "show", str(kun_run[2]))
    assert code == 0
    assert re.search(r"perplexity\s+\(all\)\s+\d+\s+\d+\s+1\s+ppl_above_max 1", out)
    assert re.search(r"label\s+labeled\s+2/2 shards\s+done", out) and "run finished" in out


def test_cli_sql_as_a_table_json_and_csv(local, kun_run, capsys):
    query = "SELECT source, doc_id, instruction FROM labeled ORDER BY doc_id"
    expected = local.sql(query).fetchall()
    code, out, _ = cli(capsys, "sql", str(kun_run[2]), query, "--json")
    assert code == 0 and [tuple(json.loads(line).values()) for line in out.split("\n") if line] == expected
    code, out, _ = cli(capsys, "sql", str(kun_run[2]), query, "--csv")
    assert code == 0 and [tuple(r) for r in list(csv.reader(io.StringIO(out)))[1:]] == expected
    code, out, _ = cli(capsys, "sql", str(kun_run[2]), "SELECT source, text, doc_id FROM clean ORDER BY doc_id")
    lines = out.splitlines()
    body = [line for line in lines if line.startswith(("sky", "web"))]
    assert len(body) == len(rows_of(kun_run[2] / "clean")) and lines[-1] == f"({len(body)} rows)"
    # Chinese is two columns a character: the doc_id column starts at the same display column on every line.
    starts = {cell_len(line[: line.index(doc)]) for line, doc in ((line, line.split()[-1]) for line in body)}
    assert len(starts) == 1
    code, out, _ = cli(capsys, "sql", str(kun_run[2]), "SELECT doc_id FROM clean", "--limit", "2")
    lines = out.splitlines()  # a table stops at --limit, and says so
    assert code == 0 and len(lines) == 5 and lines[-1].startswith("(2+ rows; the first 2 shown")


def test_cli_sample_prints_pairs_wrapped_by_display_width(kun_run, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "40")  # narrow: the Chinese values wrap
    code, out, _ = cli(
        capsys, "sample", str(kun_run[2]), "--stage", "final", "-n", "2", "--where", "score >= 0", "--full"
    )
    assert code == 0 and out.count("[1/2]") == 1 and out.count("[2/2]") == 1
    lines = [line for line in out.splitlines() if line.strip() and not line.startswith("[")]
    assert all(cell_len(line) <= 40 for line in lines)  # two columns a Chinese character, never past the edge
    labeled = [line for line in lines if line.startswith(("instruction", "answer", "text"))]
    assert len(labeled) == 6
    column = {len(line) - len(line[len(line.split()[0]) :].lstrip()) for line in labeled}
    assert len(column) == 1  # every value starts in one column...
    wrapped = [line for line in lines if line.startswith(" ")]
    indents = {len(line) - len(line.lstrip()) for line in wrapped}  # ...and goes on under itself (a value's
    assert wrapped and min(indents) == min(column) and indents <= column | {min(column) + 1}  # own space may lead)
    final = rows_of(kun_run[2] / "final")
    assert (
        sum("".join(line.strip() for line in lines).count("".join(r["text"].split())) for r in final) == 2
    )  # texts whole
    code, out, _ = cli(capsys, "sample", str(kun_run[2]), "--stage", "rejects", "--where", "reason = 'ppl_above_max'")
    assert code == 0 and NOISE in out and "ppl_above_max" in out and "[1/1]" in out


def test_cli_trace_and_one_line_errors(kun_run, capsys):
    out_dir = str(kun_run[2])
    code, out, _ = cli(capsys, "trace", out_dir, doc_id_of(kun_run[2], OVERLONG))
    assert (
        code == 0
        and "label      dropped  inference_error" in out
        and out.rstrip().endswith("dropped by label: inference_error")
    )
    code, _, err = cli(capsys, "sql", out_dir, "SELECT nope FROM final")
    assert code == 1 and len(err.strip().splitlines()) == 1 and "nope" in err
    code, _, err = cli(capsys, "sample", out_dir, "--stage", "scord")
    assert (
        code == 1 and err.startswith("kun-ray: ") and "no stage 'scord'" in err and len(err.strip().splitlines()) == 1
    )
    code, _, err = cli(capsys, "show", out_dir + "-missing")
    assert code == 1 and "no kun-ray run here" in err


def test_cli_reads_the_run_on_s3(on_s3, s3, kun_run, capsys):
    code, out, _ = cli(
        capsys,
        "sql",
        "s3://runs/query-run",
        "SELECT count(*) AS n FROM final",
        "--json",
        "--endpoint-url",
        s3.endpoint,
    )
    assert code == 0 and json.loads(out) == {"n": len(rows_of(kun_run[2] / "final"))}


# --- the report page ------------------------------------------------------------------------------


def test_report_histograms_count_what_each_filter_saw_and_cut(local, kun_run):
    from kun_ray.report_page import measure_histograms

    _, report, _ = kun_run
    charts = {c.measure: c for c in measure_histograms(local)}
    assert set(charts) == {"tokens", "perplexity", "score"}
    stage = {s["stage"]: s for s in report["stages"]}
    assert charts["tokens"].total == stage["length"]["in"] and sum(charts["tokens"].cut) == stage["length"]["rejected"]
    assert charts["perplexity"].total == stage["perplexity"]["in"] and sum(charts["perplexity"].cut) == 1
    assert charts["perplexity"].threshold == KUN_MAX_PPL and charts["score"].threshold == 0.0
    assert charts["score"].total == stage["score"]["in"] - stage["score"]["rejected_by_reason"].get(
        "unparseable_score", 0
    )
    for chart in charts.values():
        assert chart.edges[0] <= (chart.threshold or chart.edges[0]) <= chart.edges[-1]  # the cut is in sight


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.fail(
            "the report test needs Chromium: `make test` installs Debian's chromium; else put chromium on PATH"
        )
    return found


# Measures the laid-out page from inside the browser and leaves the result in the DOM for --dump-dom.
MEASURE = """<script>
(() => {
  const size = e => { const r = e.getBoundingClientRect(); return [Math.round(r.width), Math.round(r.height)]; };
  const result = {
    figures: [...document.querySelectorAll("figure")].map(f => ({
      id: f.id, measure: f.dataset.measure || null, svg: size(f.querySelector("svg")),
      bars: [...f.querySelectorAll("svg g[id^=patch] path")].filter(p => { const [w, h] = size(p); return w > 0 && h > 0; }).length,
      text: f.querySelector("svg").textContent })),
    tables: Object.fromEntries([...document.querySelectorAll("table")].map(t => [t.id, {rows: t.tBodies[0].rows.length, size: size(t)}])),
    pairs: [...document.querySelectorAll(".pair")].map(p => size(p)),
    resources: performance.getEntriesByType("resource").map(e => e.name),
  };
  const out = document.createElement("pre"); out.id = "measured"; out.textContent = JSON.stringify(result);
  document.body.appendChild(out);
})();
</script>"""


def test_report_page_renders_in_headless_chromium(local, kun_run, tmp_path, capsys):
    code, _, err = cli(capsys, "report", str(kun_run[2]), "-o", str(tmp_path / "report.html"))
    assert code == 0 and str(tmp_path / "report.html") in err
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert (
        not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page) and "<script" not in page
    )  # self-contained, static
    (tmp_path / "measured.html").write_text(page.replace("</body>", MEASURE + "</body>"), encoding="utf-8")
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ]
    dom = subprocess.run(
        [
            _chromium(),
            *flags,
            f"--user-data-dir={tmp_path / 'profile'}",
            "--window-size=1280,2000",
            "--dump-dom",
            (tmp_path / "measured.html").as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    measured = json.loads(
        re.search(r'<pre id="measured">(.*?)</pre>', dom, re.S).group(1).replace("&quot;", '"').replace("&amp;", "&")
    )
    figures = {f["id"] or f["measure"]: f for f in measured["figures"]}
    funnel = local.funnel()
    assert set(figures) == {"funnel-chart", "source-mix-chart", "tokens", "perplexity", "score"}
    for figure in figures.values():
        width, height = figure["svg"]
        assert width > 300 and height > 100, figure
    assert figures["funnel-chart"]["bars"] >= len(funnel)  # a kept bar per stage at least
    assert figures["perplexity"]["bars"] >= 2 and f"keep ≤ {KUN_MAX_PPL:g}" in figures["perplexity"]["text"]
    assert figures["tokens"]["bars"] >= 2 and figures["score"]["bars"] >= 1
    tables = measured["tables"]
    assert tables["funnel-table"]["rows"] == len(funnel) and tables["funnel-table"]["size"][1] > 100
    assert tables["reasons-table"]["rows"] == sum(min(5, len(s["rejected_by_reason"])) for s in funnel)
    assert len(measured["pairs"]) == min(5, len(rows_of(kun_run[2] / "final"))) and all(
        h > 40 for _, h in measured["pairs"]
    )
    assert measured["resources"] == []  # nothing fetched: the page is one file
