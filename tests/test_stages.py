"""Stages as one thing: the contract every registered stage keeps, the plan built from the config,
fingerprints and run folders that hold across the change, and the cjk_ratio filter."""

from __future__ import annotations

import json
import re
import shutil
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pytest
from corpus import ZH

from kun_ray.clean.cjk_ratio import cjk_ratio
from kun_ray.config import ConfigError, StageConfig, StorageOptions, resource
from kun_ray.config.run import behaviour
from kun_ray.io.records import STREAM_SCHEMA
from kun_ray.llm.engine import ERROR_COLUMN, conform, output_schema
from kun_ray.llm.stage import LLMStage
from kun_ray.plan import build_plan, load_config, parse_config
from kun_ray.run import fingerprint, run_settings
from kun_ray.stages.base import RunContext
from kun_ray.stages.registry import REGISTRY, stage_class

REPO = Path(__file__).resolve().parent.parent
FIXTURE = Path(__file__).resolve().parent / "fixtures" / "run-v0.1"
BASE = {"sources": [{"name": "a", "format": "jsonl", "paths": ["x.jsonl"]}], "output": "out"}

# --- what the change must keep ---------------------------------------------------------------

#: fingerprint(run_settings(config, [])) of the ready configs: a refactor must keep them.  Last
#: changed on purpose by Humpback's segments (jobs/humpback.yaml segments documents before the
#: filters), after the papers' own recipes: runs of the configs before that do not resume.
PINNED = {"demo": "f6157043fa06605b", "kun": "4b724154f53b83a8", "humpback": "ad448e30bba24ef2"}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_the_ready_configs_keep_their_fingerprints(name):
    assert fingerprint(run_settings(load_config(REPO / "jobs" / f"{name}.yaml"), [])) == PINNED[name]


def test_the_old_final_form_and_the_new_one_are_one_config(tmp_path):
    old = parse_config(
        {**BASE, "final": {"exact_dedup": {"enabled": False}, "near_dedup": {"threshold": 0.9}}}, tmp_path
    )
    new = parse_config(
        {**BASE, "instruction_exact_dedup": {"enabled": False}, "instruction_near_dedup": {"threshold": 0.9}}, tmp_path
    )
    assert run_settings(old, []) == run_settings(new, [])
    assert "final.exact_dedup.enabled" in run_settings(new, []) and new.instruction_near_dedup.column == "instruction"
    with pytest.raises(ConfigError, match="final.exact_dedup: also written as instruction_exact_dedup"):
        parse_config({**BASE, "final": {"exact_dedup": {}}, "instruction_exact_dedup": {}}, tmp_path)


def test_resources_leave_the_fingerprint_by_field_not_by_name(tmp_path):
    class Sampler(StageConfig):
        batch_size: int = 3  # behaviour: how many rows a sample takes, say
        env: dict[str, str] = resource(default_factory=dict)

    assert behaviour(Sampler(env={"X": "1"})) == {"enabled": True, "batch_size": 3}

    def settings(**label):
        return run_settings(parse_config({**BASE, "label": {"model": "m", **label}}, tmp_path), [])

    assert settings(batch_size=8, concurrency=[1, 4], env={"VLLM_CPU_KVCACHE_SPACE": "1"}) == settings()
    assert settings(template="humpback") != settings()


def report_settings(folder) -> dict:
    return json.loads((folder / "manifest.json").read_text())["settings"]


def test_a_run_folder_written_by_kun_ray_0_1_resumes(ray_cluster, tmp_path):
    from kun_ray.pipeline import run

    shutil.copytree(FIXTURE, tmp_path / "old", ignore=shutil.ignore_patterns("__pycache__"))
    folder = tmp_path / "old" / "run"
    before = sorted(row["doc_id"] for row in pads.dataset(str(folder / "clean")).to_table().to_pylist())
    shutil.rmtree(folder / "_commits" / "dedup")  # a crash inside dedup
    (folder / "report.json").unlink()
    config = load_config(tmp_path / "old" / "config.yaml")
    written = json.loads((folder / "manifest.json").read_text())
    assert written["fingerprint"] == "11ea0f44be45ffe5"  # as 0.1 wrote it
    report = run(config)
    # Only settings of stages off in both runs changed (new defaults of label and polish): the same run.
    changed = {k for k in written["settings"].keys() | report_settings(folder).keys()
               if written["settings"].get(k) != report_settings(folder).get(k)}  # fmt: skip
    assert changed and all(k.startswith(("label.", "polish.", "score.")) for k in changed)
    assert report["flows"]["read"]["shards_resumed"] == report["flows"]["filter"]["shards_resumed"] == 5
    assert report["flows"]["dedup"]["shards_resumed"] == 0
    from kun_ray import Run

    resumed = Run.open(folder)
    assert [flow.name for flow in resumed.layout] == ["read", "filter", "dedup"]  # the manifest has its plan now
    assert sorted(r["doc_id"] for r in resumed.stage("clean").take_all()) == before


# --- the plan --------------------------------------------------------------------------------


def test_the_default_plan_leaves_out_what_is_off_and_final_without_instructions(tmp_path):
    plan = build_plan(parse_config(BASE, tmp_path))
    assert [(f.name, f.output, [s.name for s in f.stages], f.whole) for f in plan.flows] == [
        ("filter", "filtered", ["normalize", "length", "heuristics"], False),
        ("dedup", "clean", ["exact_dedup", "near_dedup"], True),
    ]
    plan = build_plan(parse_config({**BASE, "label": {"model": "m"}, "cjk_ratio": {"enabled": True}}, tmp_path))
    assert [f.name for f in plan.flows] == ["filter", "dedup", "label", "final"]
    assert [s.name for s in plan.flows[0].stages] == ["normalize", "cjk_ratio", "length", "heuristics"]
    assert plan.flows[-1].export and plan.flows[-1].whole
    assert dict(plan.measures) == {"n_chars": pa.int64(), "n_tokens": pa.int64()}
    manifest = plan.to_json()
    assert manifest["flows"][0] == {
        "name": "read",
        "output": "documents",
        "stages": ["read"],
        "commit": "shard",
        "export": False,
    }
    assert manifest["stages"]["label"]["adds"] == {"instruction": "string", "label_tokens": "int64"}


@pytest.mark.parametrize(
    "flows, message",
    [
        (
            {"all": {"output": "clean", "stages": ["normalize", "nope"]}},
            "flows.all.stages: no stage 'nope' in the config",
        ),
        (
            {"a": {"output": "x", "stages": ["normalize"]}, "b": {"output": "y", "stages": ["normalize"]}},
            "flows.b.stages: normalize runs in flow a already",
        ),
        (
            {"a": {"output": "documents", "stages": ["normalize"]}},
            "flows.a.output: 'documents' is another flow's folder",
        ),
        ({"a": {"output": "x", "stages": ["normalize"]}}, "flows: stage length is enabled but in no flow"),
    ],
    ids=["unknown-stage", "twice", "folder-taken", "stage-left-out"],
)
def test_a_flows_section_that_cannot_run_is_one_line(tmp_path, flows, message):
    with pytest.raises(ConfigError) as error:
        parse_config({**BASE, "length": {"min_chars": 3}, "flows": flows}, tmp_path)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_a_stage_before_what_it_reads_is_a_config_error(tmp_path):
    flows = {
        "all": {"output": "clean", "stages": ["normalize", "length", "heuristics", "exact_dedup", "near_dedup"]},
        "llm": {"output": "pairs", "stages": ["score", "label"]},
    }
    stages = {
        "label": {"model": "m"},
        "score": {"model": "m"},
        "instruction_exact_dedup": {"enabled": False},
        "instruction_near_dedup": {"enabled": False},
    }
    with pytest.raises(ConfigError, match="^score: the score stage needs the label stage's 'instruction' column"):
        parse_config({**BASE, **stages, "flows": flows}, tmp_path)
    flows["llm"]["stages"] = ["label", "score"]
    plan = build_plan(parse_config({**BASE, **stages, "flows": flows}, tmp_path))
    assert [(f.name, f.whole) for f in plan.flows] == [("all", True), ("llm", False)]


def test_filter_and_dedup_run_with_their_stages_off_and_a_dedup_never_follows_a_model(tmp_path):
    off = {name: {"enabled": False} for name in ("normalize", "length", "heuristics", "exact_dedup", "near_dedup")}
    plan = build_plan(parse_config({**BASE, **off}, tmp_path))
    assert [(f.name, f.stages) for f in plan.flows] == [("filter", []), ("dedup", [])]  # filtered/, clean/ as ever
    flows = {
        "all": {
            "output": "pairs",
            "stages": ["normalize", "length", "heuristics", "label", "exact_dedup", "near_dedup"],
        }
    }
    with pytest.raises(ConfigError, match="^flows.all.stages: exact_dedup reads all of its input twice, which label"):
        parse_config({**BASE, "label": {"model": "m"}, "flows": flows}, tmp_path)
    flows = {"all": {"output": "pairs", "stages": ["normalize", "segment", "length", "label"]}}
    with pytest.raises(ConfigError, match="^flows.all.stages: label cannot follow segment in one flow"):
        parse_config({**BASE, "segment": {}, "label": {"model": "m"}, "flows": flows}, tmp_path)
    flows = {
        "all": {
            "output": "pairs",
            "stages": ["normalize", "length", "heuristics", "exact_dedup", "near_dedup"],
            "export": True,
        }
    }
    with pytest.raises(ConfigError, match="^flows.all.export: the export needs instructions"):
        parse_config({**BASE, "flows": flows}, tmp_path)


def test_a_second_instance_of_a_stage_type_names_its_type(tmp_path):
    second = {"title_dedup": {"stage": "exact_dedup", "column": "title"}}
    with pytest.raises(
        ConfigError, match="^title_dedup: not in the default flows: write a flows: section that places it"
    ):
        parse_config({**BASE, **second}, tmp_path)
    flows = {
        "filter": {"output": "filtered", "stages": ["normalize", "length", "heuristics"]},
        "dedup": {"output": "clean", "stages": ["exact_dedup", "near_dedup", "title_dedup"]},
    }
    config = parse_config({**BASE, **second, "flows": flows}, tmp_path)
    assert [s.name for s in build_plan(config).flows[1].stages] == ["exact_dedup", "near_dedup", "title_dedup"]
    assert (
        config.stage_type("title_dedup") == "exact_dedup"
        and run_settings(config, [])["title_dedup.stage"] == "exact_dedup"
    )
    with pytest.raises(
        ConfigError, match=r"^title_dedup.stage: no stage type 'exact_dedupe' \(did you mean 'exact_dedup'\?\)"
    ):
        parse_config({**BASE, "title_dedup": {"stage": "exact_dedupe"}}, tmp_path)
    with pytest.raises(ConfigError, match=r"^lenght: unknown key \(did you mean 'length'\?\)"):
        parse_config({**BASE, "lenght": {"min_chars": 3}}, tmp_path)


# --- the contract of every registered stage ----------------------------------------------------


def stage_config(stage_type: str, models: dict) -> dict:
    """A config of each stage type that runs here, set so that it keeps some rows and rejects some."""
    return {
        "cjk_ratio": {"enabled": True, "min_ratio": 0.5},
        "length": {"min_chars": 25, "tokenizer": str(models["tokenizer"])},
        "perplexity": {
            "enabled": True,
            "kenlm_model": str(models["kenlm_model"]),
            "sentencepiece_model": str(models["sentencepiece_model"]),
            "max_ppl": 150.0,
        },
        "heuristics": {"max_unit_repeats": 4},
        "near_dedup": {"threshold": 0.5, "ngram": 2},
        "segment": {"min_chars": 25, "max_chars": 32},
        "label": {"model": str(models["chat_model"]), "device": "cpu", "keywords": ["长江"]},
        "score": {"model": str(models["chat_model"]), "device": "cpu", "mode": "humpback_pair", "min_score": 3},
        "polish": {"model": str(models["chat_model"]), "device": "cpu", "keywords": [], "min_answer_chars": 12},
    }.get(stage_type, {})


#: What the model says to every row, in the LLM stages' contract: vLLM itself cannot start per stage type here.
CANNED = [
    "长江有多长？",
    "Score: 4",
    "长江长约六千三百公里，是中国第一长河。",
    "Score: 2",
    "哈哈哈哈哈哈哈哈哈哈哈哈哈哈哈哈哈哈哈哈哈",
    "",
]


def contract_rows() -> pa.Table:
    texts = [*ZH[:6], ZH[0], "abc def ghi jkl mno pqr", "哈" * 40 + "。", "  \u200b  ", ZH[6] + "！"]
    rows = [
        {"doc_id": f"d{i}", "source": "web", "shard": "web/a.jsonl", "text": t, "title": None, "meta": None,
         "reject_stage": "earlier" if i in (2, 5) else None, "reject_reason": "before" if i in (2, 5) else None,
         "reject_detail": "an earlier stage's" if i in (2, 5) else None, "instruction": f"问题{i % 4}：{t[:6]}"}
        for i, t in enumerate(texts)
    ]  # fmt: skip
    return pa.Table.from_pylist(rows, schema=STREAM_SCHEMA.append(pa.field("instruction", pa.string())))


def run_llm_rows(stage: LLMStage, rows: pa.Table) -> pa.Table:
    """An LLM stage's engine over rows as Ray Data LLM runs it, the model's text canned: preprocess;
    rows with an error (DEAD) bypass every processor stage and postprocess; conform."""
    stage.prepare()
    engine = stage._engine
    carried = [name for name in rows.column_names if not name.startswith("reject_")]
    out = []
    for i, row in enumerate(rows.to_pylist()):
        data = {**row, **engine.preprocess(row)}
        if data.get(ERROR_COLUMN):
            out.append(data)
        else:
            generated = {"generated_text": CANNED[i % len(CANNED)], "num_generated_tokens": 3}
            out.append({**engine.postprocess({**data, **generated}, carried), ERROR_COLUMN: ""})
    schema = output_schema(rows.schema, stage.task, stage.tokens_column)
    keys = {k for r in out for k in r}
    table = pa.table({k: [r.get(k) for r in out] for k in keys if k in schema.names or k == ERROR_COLUMN})
    return conform(table, schema, stage.name, stage.tokens_column)


@pytest.mark.parametrize("stage_type", sorted(REGISTRY))
def test_every_stage_keeps_the_row_contract(stage_type, ray_cluster, smoke_models):
    import ray.data

    cls = stage_class(stage_type)
    stage = cls(
        stage_type, cls.config_model(**stage_config(stage_type, smoke_models)), RunContext(StorageOptions(), ("web",))
    )
    rows = contract_rows()
    stage.rows = rows.num_rows  # as a run tells its stages
    if cls.fits:
        stage.fixed = stage.fit(ray.data.from_arrow(rows), rows.num_rows)
    if isinstance(stage, LLMStage):
        out = run_llm_rows(stage, rows)
    else:
        out = pa.concat_tables(
            stage.apply(ray.data.from_arrow(rows)).iter_batches(batch_format="pyarrow", batch_size=None),
            promote_options="default",
        )
    if cls.kind == "split":  # a split stage's rows are its documents' pieces, `<doc_id>#<n>`, or the document
        pieces = [r["doc_id"] for r in out.to_pylist() if r["reject_reason"] is None]
        assert all(re.fullmatch(r"d\d+#\d+", doc_id) for doc_id in pieces), pieces
        out = out.set_column(
            out.schema.get_field_index("doc_id"), "doc_id", pc.replace_substring_regex(out["doc_id"], r"#\d+$", "")
        )
    by_id = {r["doc_id"]: r for r in out.to_pylist()}
    assert sorted(by_id) == sorted(rows["doc_id"].to_pylist())  # rows in = rows out: kept + rejected
    for row in rows.to_pylist():
        if row["reject_reason"] is not None:  # dead rows pass untouched
            assert {k: by_id[row["doc_id"]][k] for k in row} == row
    for column, kind in stage.columns_added().items():
        assert out.schema.field(column).type == kind, column
    fresh = [r for r in by_id.values() if r["reject_stage"] == stage_type]
    assert {r["reject_reason"] for r in fresh} <= stage.reasons
    assert fresh and len(fresh) < rows.num_rows - 2, (
        "the contract's rows must have the stage keep some and reject some"
    )
    assert all(r["reject_detail"] for r in fresh)


def test_cjk_ratio_counts_chinese_among_visible_characters():
    assert cjk_ratio("长江，长约6300公里。") == pytest.approx(8 / 12)
    assert cjk_ratio("Home | About | 联系我们") == pytest.approx(4 / 15)
    assert cjk_ratio("   ") == 0.0


def test_cjk_ratio_runs_in_the_default_filter_flow(ray_cluster, tmp_path):
    from kun_ray.pipeline import run

    (tmp_path / "data").mkdir()
    texts = [*ZH[:4], "Click here to subscribe to our newsletter today, 订阅"]
    (tmp_path / "data" / "a.jsonl").write_text("".join(f'{{"text": "{t}"}}\n' for t in texts), encoding="utf-8")
    config = tmp_path / "run.yaml"
    config.write_text(
        textwrap.dedent(
            "sources: [{name: web, format: jsonl, paths: [data]}]\noutput: out\ncjk_ratio: {enabled: true}\n"
        )
    )
    report = run(load_config(config))
    stage = next(s for s in report["stages"] if s["stage"] == "cjk_ratio")
    assert stage["flow"] == "filter" and stage["rejected_by_reason"] == {"low_cjk_ratio": 1}
    rejected = pads.dataset(str(tmp_path / "out" / "rejects" / "cjk_ratio")).to_table().to_pylist()
    assert rejected[0]["text"] == texts[-1] and rejected[0]["detail"].endswith("CJK characters < 30%")
