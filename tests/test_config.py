"""The run config: what a user writes, and one-line errors for what cannot run."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap

import pytest

from kun_ray.config import ConfigError
from kun_ray.plan import load_config


def write(tmp_path, text: str):
    path = tmp_path / "run.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


MINIMAL = """
sources:
  - name: wudao
    format: wudao
    paths: ["s3://corpora/wudao/*.json"]
output: s3://runs/demo-001
"""


def test_the_least_a_user_writes(tmp_path):
    config = load_config(write(tmp_path, MINIMAL))
    assert config.sources[0].paths == ["s3://corpora/wudao/*.json"]
    assert config.output.path == "s3://runs/demo-001"
    assert config.storage_for(config.sources[0].storage).anonymous is False


def test_local_paths_are_relative_to_the_config_file(tmp_path):
    config = load_config(
        write(tmp_path, "sources: [{name: a, format: skypile, paths: [data/*.jsonl]}]\noutput: out\n")
    )
    assert config.sources[0].paths == [str(tmp_path / "data/*.jsonl")]
    assert config.output.path == str(tmp_path / "out")


def test_storage_options_per_source_and_output(tmp_path):
    config = load_config(
        write(
            tmp_path,
            """
            storage: {region: cn-north-1}
            sources:
              - {name: a, format: skypile, paths: ["s3://c/*.jsonl"], storage: {endpoint_url: "http://127.0.0.1:9000", anonymous: true}}
              - {name: b, format: wanjuan, paths: ["s3://c/*.jsonl"]}
            output: {path: "s3://runs/x", storage: {endpoint_url: "http://127.0.0.1:9001"}}
            """,
        )
    )
    assert config.storage_for(config.sources[0].storage).anonymous is True
    assert config.storage_for(config.sources[1].storage).region == "cn-north-1"
    assert config.storage_for(config.output.storage).endpoint_url == "http://127.0.0.1:9001"


@pytest.mark.parametrize(
    "text, message",
    [
        (MINIMAL.replace("format: wudao", "formt: wudao"), "sources[0].formt: unknown key"),
        (MINIMAL.replace("output: s3://runs/demo-001", ""), "output: missing required key"),
        (
            MINIMAL.replace('paths: ["s3://corpora/wudao/*.json"]', "paths: 7"),
            "sources[0].paths: Input should be a valid list",
        ),
        (
            MINIMAL.replace("format: wudao", "format: common_crawl"),
            "sources[0].format: Input should be 'wudao', 'wanjuan', 'skypile', 'jsonl' or 'parquet'",
        ),
        (MINIMAL + "storage: {key: AKIAXXXX}\n", "storage.key: unknown key"),
        (
            MINIMAL.replace("format: wudao", "format: wudao\n    text_field: body"),
            "sources[0]: text_field applies only to jsonl and parquet sources",
        ),
        (
            MINIMAL.replace("output:", "  - {name: wudao, format: skypile, paths: [x]}\noutput:"),
            "sources: source name 'wudao' is used twice",
        ),
        ("sources: [\n  {name: a,\n", "line "),
        ("- just\n- a list\n", "the config must be a mapping"),
    ],
    ids=[
        "unknown-key",
        "missing-key",
        "wrong-type",
        "bad-format",
        "credential-key",
        "field-on-fixed-format",
        "duplicate-name",
        "bad-yaml",
        "not-a-mapping",
    ],
)
def test_errors_are_one_line_naming_the_key(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(error.value).startswith(f"{path}: ")
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "nope.yaml")


def kun_ray(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "kun_ray.cli", *args], capture_output=True, text=True, timeout=120, env=env
    )


def test_cli_config_error_exits_2_with_one_line(tmp_path):
    result = kun_ray("validate", str(write(tmp_path, MINIMAL.replace("paths", "path"))))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "sources[0].path: unknown key" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_cli_glob_matching_nothing_exits_2_naming_the_path(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data/a.jsonl").write_text('{"text": "x"}\n')
    config = write(
        tmp_path, "sources: [{name: a, format: skypile, paths: [data/*.jsonl, data/*.json.gz]}]\noutput: out\n"
    )
    result = kun_ray("run", str(config))
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == f"kun-ray: config error: {config}: sources[0].paths[1]: no file matches {tmp_path}/data/*.json.gz"
    )
    assert not (tmp_path / "out").exists(), "no work may start before the config is checked"


def test_cli_validate_lists_inputs(tmp_path):
    (tmp_path / "data").mkdir()
    for name in ("a.jsonl", "b.jsonl", ".hidden.jsonl"):
        (tmp_path / "data" / name).write_text('{"text": "x"}\n')
    result = kun_ray(
        "validate", str(write(tmp_path, "sources: [{name: sky, format: skypile, paths: [data]}]\noutput: out\n"))
    )
    assert result.returncode == 0, result.stderr
    assert "sky: skypile, 2 files" in result.stdout


def test_cli_validate_prints_the_plan_each_stages_settings_and_every_warning(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.jsonl").write_text('{"text": "x"}\n')
    shell = "sources: [{name: sky, format: skypile, paths: [data]}]\noutput: out\n"
    result = kun_ray("validate", str(write(tmp_path, shell + "near_dedup: {threshold: 0.7}\n")))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:2] == ["sky: skypile, 1 file", "filter -> filtered/:"]
    assert "  length: min_chars=20 max_tokens=512" in lines and "dedup -> clean/ (commits whole):" in lines
    assert "  near_dedup: threshold=0.7 ngram=5 num_perm=128 seed=42 column=text recall=0.999 verify=jaccard" in lines
    # Without a tokenizer the default token cut does nothing: said, not silent
    assert lines[-2:] == [
        "warning: length.max_tokens: 512 is not applied: no length.tokenizer to count tokens with (name the "
        "label model's, or set max_tokens: null to say it is off)",
        f"output: {tmp_path / 'out'}",
    ]
    off = kun_ray("validate", str(write(tmp_path, shell + "length: {max_tokens: null}\n")))
    assert off.returncode == 0 and "warning" not in off.stdout and "  length: min_chars=20" in off.stdout


def test_cli_bad_prompt_file_exits_2_before_any_work(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data/a.jsonl").write_text('{"text": "x"}\n')
    (tmp_path / "label.txt").write_text("{txt}", encoding="utf-8")
    config = write(
        tmp_path,
        "sources: [{name: a, format: skypile, paths: [data]}]\noutput: out\nlabel: {model: m, prompt_file: label.txt}\n",
    )
    result = kun_ray("run", str(config))
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == f"kun-ray: config error: {config}: label.prompt_file: unknown template field(s) ['txt']; this stage fills ['text']"
    )
    assert not (tmp_path / "out").exists()


def test_a_credential_in_an_engine_env_is_refused(tmp_path):
    path = write(tmp_path, MINIMAL + "label: {model: m, env: {HF_TOKEN: hf_abc}}\n")
    with pytest.raises(
        ConfigError, match=r"label\.env: .*HF_TOKEN looks like a credential: set it in the cluster's environment"
    ):
        load_config(path)


def test_secret_values_are_masked_in_details_and_logs(monkeypatch):
    import io
    import logging

    from kun_ray.io.records import one_line
    from kun_ray.secrets import RedactingFilter, redact

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI-fake-7f3a")
    monkeypatch.setenv("MY_SERVICE_TOKEN", "tok-0123456789")
    monkeypatch.setenv("PATH_LIKE", "not-a-secret-value")
    assert one_line("signature for wJalrXUtnFEMI-fake-7f3a\nfailed") == "signature for *** failed"
    assert redact("a tok-0123456789 and not-a-secret-value") == "a *** and not-a-secret-value"
    printed = io.StringIO()
    handler = logging.StreamHandler(printed)
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger("kun_ray.test")
    logger.addHandler(handler)
    logger.warning("key %s", "wJalrXUtnFEMI-fake-7f3a")
    assert printed.getvalue() == "key ***\n"


def test_an_accelerator_type_ray_does_not_know_is_a_config_error(tmp_path):
    base = "sources: [{name: a, format: jsonl, paths: ['*.jsonl']}]\noutput: out\nlabel: {model: m, accelerator_type: %s}\n"
    assert load_config(write(tmp_path, base % "H100")).label.accelerator_type == "H100"
    for typo, hint in (("h100", "did you mean 'H100'?"), ("A10", "did you mean 'A10G'?")):
        with pytest.raises(
            ConfigError,
            match=re.escape(f"label.accelerator_type: '{typo}' is not an accelerator type Ray knows ({hint})"),
        ):
            load_config(write(tmp_path, base % typo))
