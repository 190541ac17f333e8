"""The `kun-ray` command. Thin: it parses arguments and calls the package's public functions.

Exit codes: 0 done, 2 a config that cannot run or a run folder another driver writes (one line
on stderr, no traceback), 1 anything else.  `kun-ray run` prints its report on stdout and
nothing else; logs and everything Ray and vLLM print go to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from typing import Any, TextIO

from kun_ray.config import ConfigError, RunConfig
from kun_ray.io.read import InputFile, plan_inputs
from kun_ray.io.storage import unreachable_store
from kun_ray.lease import LeaseHeld, LeaseLost
from kun_ray.plan import build_plan, load_config
from kun_ray.run import RunFolder, run_settings
from kun_ray.secrets import RedactingFilter, redact


def _connect_ray() -> None:
    """Join the cluster in RAY_ADDRESS when it is set, else start a local Ray on loopback."""
    import ray

    if not ray.is_initialized():
        from kun_ray import crash

        options = {"runtime_env": {"env_vars": drill}} if (drill := crash.worker_env()) else {}
        if address := os.environ.get("RAY_ADDRESS"):
            ray.init(address=address, logging_level=logging.WARNING, **options)
        else:
            ray.init(_node_ip_address="127.0.0.1", logging_level=logging.WARNING, **options)
    cpus = int(ray.cluster_resources().get("CPU", 0))
    gpus = int(ray.cluster_resources().get("GPU", 0))
    print(
        f"kun-ray: Ray cluster at {ray.get_runtime_context().gcs_address} ({cpus} CPUs, {gpus} GPUs)", file=sys.stderr
    )


def _validate(config: RunConfig, inputs: list[InputFile]) -> int:
    if config.start is not None:  # it reads no source
        print(f"start: the rows flow {config.start.flow} committed in {config.start.run}")
    for source in config.sources if config.start is None else []:
        n = sum(f.source == source.name for f in inputs)
        print(f"{source.name}: {source.format}, {n} file{'s' * (n != 1)}")
    plan = build_plan(config)
    for flow in plan.flows:
        print(f"{flow.name} -> {flow.output}/{' (commits whole)' if flow.whole else ''}:")
        for stage in flow.stages:
            settings = " ".join(f"{key}={_shown(value)}" for key, value in stage.settings().items())
            print(f"  {stage.name}{f' ({stage.type})' if stage.type != stage.name else ''}: {settings or 'defaults'}")
        if not flow.stages:
            print("  no stage: its input as it came")
    for warning in plan.warnings():
        print(f"warning: {warning}")
    print(f"output: {config.output.path}")
    return 0


def _shown(value: Any, width: int = 48) -> str:
    """A setting's value on one line, cut to `width` characters."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _log_to_stderr() -> None:
    """kun-ray's own progress lines (one per stage every 30 s, see kun_ray/ledger.py) on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("kun-ray: %(message)s"))
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger("kun_ray")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def _stdout_for_the_report() -> TextIO:
    """The run's stdout, for its report alone: from here on whatever else writes to stdout (Ray's
    forwarded worker and raylet lines, a library's prints, in this process or its children) goes
    to stderr instead, for the rest of the process."""
    sys.stdout.flush()
    report = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    return report


def _run(config: RunConfig, inputs: list[InputFile], progress: bool, fresh: bool, force: bool, as_json: bool) -> int:
    from kun_ray.pipeline import run, starting_point, take_lease
    from kun_ray.report import format_flows, format_table

    if not fresh:  # before Ray starts: a run folder of another config stops here
        start = starting_point(config)
        RunFolder.of(config).check(run_settings(config, inputs, start.manifest if start else None), force)
    _log_to_stderr()
    with take_lease(config) as lease:  # before Ray starts: a folder another driver writes stops here
        out = _stdout_for_the_report()
        _connect_ray()
        import ray.data

        ray.data.DataContext.get_current().enable_progress_bars = progress
        report = run(config, inputs, fresh=fresh, force=force, lease=lease)
    if as_json:
        text = redact(json.dumps(report, ensure_ascii=False, indent=2)) + "\n"
    else:
        where = f"run folder: {report['output']}  ({report['wall_s']:.1f} s)"
        text = f"{format_table(report)}\n\n{format_flows(report)}\n\n{where}\n"
    try:
        out.write(text)
        out.flush()
    except BrokenPipeError:  # `kun-ray run ... | head -2`: the reader has what it wanted
        pass
    return 0


def _submit(args: argparse.Namespace) -> int:
    import tempfile
    from pathlib import Path

    from kun_ray.jobs import Jobs, pack

    jobs = Jobs(args.address)  # before packing: an unreachable cluster fails fast
    with tempfile.TemporaryDirectory(prefix="kun-ray-job-") as folder:
        job = pack(args.config, args.set, Path(folder))
        job_id = jobs.submit(job, deps=not args.no_deps, fresh=args.fresh, force=args.force)
    for note in job.notes:
        print(f"kun-ray: note: {note}", file=sys.stderr)
    print(job_id)
    address = f" --address {jobs.address}" if args.address else ""
    if not args.wait:
        print(
            f"kun-ray: submitted to {jobs.address}; follow it with: kun-ray jobs logs {job_id} --follow{address}",
            file=sys.stderr,
        )
        return 0
    status = jobs.follow(job_id)
    print(f"kun-ray: {job_id}: {status}", file=sys.stderr)
    return 0 if status == "SUCCEEDED" else 1


def _jobs(args: argparse.Namespace) -> int:
    from kun_ray.jobs import Jobs

    jobs = Jobs(args.address)
    if args.action == "list":
        for job in jobs.list():
            config, output = job.metadata.get("kun_ray_config"), job.metadata.get("kun_ray_output")
            print(f"{job.submission_id}  {job.status:<9}  {config}  -> {output}")
    elif args.action == "status":
        info = jobs.status(args.job_id)
        print(f"{args.job_id}: {info.status}" + (f" ({info.message})" if info.message else ""))
    elif args.action == "logs":
        if args.follow:
            jobs.follow(args.job_id)
        else:
            print(jobs.logs(args.job_id), end="")
    elif args.action == "stop":
        stopped = jobs.stop(args.job_id)
        status = jobs.wait(args.job_id, timeout_s=120) if args.wait else jobs.status(args.job_id).status
        print(f"{args.job_id}: {'stop requested' if stopped else 'already ended'}, {status}")
    return 0


def _open_run(args: argparse.Namespace):
    from kun_ray.query import Run

    return Run.open(args.run, {"endpoint_url": args.endpoint_url} if args.endpoint_url else None)


def _show(args: argparse.Namespace) -> int:
    from kun_ray.report import format_table
    from kun_ray.terminal import funnel_progress

    run = _open_run(args)
    print(f"{run.url}  (fingerprint {run.manifest['fingerprint']}, started {run.manifest['created_at']})")
    print(funnel_progress(run.progress(), run.finished))
    funnel = run.funnel()
    print(format_table({"stages": funnel}) if funnel else "nothing committed yet")
    return 0


def _sql(args: argparse.Namespace) -> int:
    import csv
    import json

    from kun_ray.terminal import render, table

    cursor = _open_run(args).connection.execute(args.query)
    columns = [d[0] for d in cursor.description or []]
    if args.json or args.csv:  # every row, streamed
        writer = csv.writer(sys.stdout) if args.csv else None
        if writer:
            writer.writerow(columns)
        while rows := cursor.fetchmany(10_000):
            for row in rows:
                if writer:
                    writer.writerow(row)
                else:
                    print(json.dumps(dict(zip(columns, row)), ensure_ascii=False, default=str))
        return 0
    rows = cursor.fetchmany(args.limit + 1) if args.limit else cursor.fetchall()
    shown = rows[: args.limit] if args.limit else rows
    print(render(table(columns, shown)), end="")
    more = f"; the first {args.limit} shown, --limit 0 for all, or --json / --csv" if len(rows) > len(shown) else ""
    print(f"({len(shown)}{'+' if more else ''} row{'s' * (len(shown) != 1)}{more})")
    return 0


def _sample(args: argparse.Namespace) -> int:
    from kun_ray.terminal import pairs

    run = _open_run(args)
    rows = run.sample(args.stage, args.n, args.where, args.seed)
    if not rows:
        print(f"no rows in {args.stage}" + (f" where {args.where}" if args.where else ""))
        return 0
    print(pairs(rows, args.stage, text_chars=None if args.full else 300), end="")
    return 0


def _trace(args: argparse.Namespace) -> int:
    print(_open_run(args).trace(args.doc_id, args.source), end="")
    return 0


def _report(args: argparse.Namespace) -> int:
    from kun_ray.report_page import write_report

    run = _open_run(args)
    where = write_report(run, args.output)
    print(f"kun-ray: report written to {where}", file=sys.stderr)
    return 0


def _train(args: argparse.Namespace) -> int:
    import json

    from kun_ray.config import load_train_config
    from kun_ray.train.trainer import train

    config = load_train_config(args.config, args.set)
    _log_to_stderr()
    _connect_ray()
    report = train(config)
    for problem in report["skipped_seed_rows"][:10]:
        print(f"kun-ray: skipped {problem}", file=sys.stderr)
    summary = {k: report[k] for k in ("role", "examples", "prompt_too_long", "steps", "model")}
    print(
        json.dumps(
            {
                **summary,
                "first_loss": report["loss"][0] if report["loss"] else None,
                "last_loss": report["loss"][-1] if report["loss"] else None,
            },
            ensure_ascii=False,
        )
    )
    return 0


def _loop(args: argparse.Namespace) -> int:
    import json

    from kun_ray.config import load_loop_config
    from kun_ray.train.loop import loop

    config = load_loop_config(args.config, args.set)
    _log_to_stderr()
    _connect_ray()
    for iteration in loop(config):
        print(json.dumps(iteration, ensure_ascii=False))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kun-ray", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    overrides = argparse.ArgumentParser(add_help=False)
    overrides.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (dotted, e.g. label.batch_size=8; the value is YAML); repeatable",
    )
    resume = argparse.ArgumentParser(add_help=False)
    resume.add_argument(
        "--fresh", action="store_true", help="start over: remove what an earlier run wrote to the output first"
    )
    resume.add_argument(
        "--force",
        action="store_true",
        help="resume a run folder written by a changed config (finished shards stay as they are)",
    )
    address = argparse.ArgumentParser(add_help=False)
    address.add_argument(
        "--address",
        help="the cluster's job server, http://HEAD:8265 "
        "(default: $RAY_API_SERVER_ADDRESS, $RAY_ADDRESS, or a local Ray)",
    )

    run_cmd = commands.add_parser(
        "run", parents=[overrides, resume], help="run a config's stages on Ray and write its run folder"
    )
    run_cmd.add_argument("config", help="the run's YAML config")
    run_cmd.add_argument("--no-progress", action="store_true", help="hide Ray Data's progress bars")
    run_cmd.add_argument(
        "--json", action="store_true", help="print the report (report.json) on stdout instead of its tables"
    )
    validate_cmd = commands.add_parser(
        "validate", parents=[overrides], help="check a config and list its input files, without running it"
    )
    validate_cmd.add_argument("config", help="the run's YAML config")

    train_cmd = commands.add_parser(
        "train",
        parents=[overrides],
        help="fine-tune a label, chat or final model on Ray Train; a stopped training resumes",
    )
    train_cmd.add_argument("config", help="the training YAML config (role, base_model, seed, output, ...)")

    loop_cmd = commands.add_parser(
        "loop",
        parents=[overrides],
        help="Humpback's self-alignment loop: curate, train, re-curate with the trained model, train again",
    )
    loop_cmd.add_argument("config", help="the loop YAML config (output, curate, train, iterations)")

    submit_cmd = commands.add_parser(
        "submit",
        parents=[overrides, resume, address],
        help="run a config as a Ray job on a cluster; prints the job id",
    )
    submit_cmd.add_argument(
        "config", help="the run's YAML config; local files it names by relative paths go with the job"
    )
    submit_cmd.add_argument(
        "--no-deps",
        action="store_true",
        help="do not pip-install kun-ray's dependencies into the job's environment (the cluster's image has them)",
    )
    submit_cmd.add_argument(
        "--wait", action="store_true", help="print the job's log until it ends; exit 0 only if it succeeded"
    )

    reading = argparse.ArgumentParser(add_help=False)
    reading.add_argument("run", help="a run folder (local, s3://, gs://) or the config that writes it")
    reading.add_argument(
        "--endpoint-url", help="the S3 endpoint of a run folder on an S3-compatible store (MinIO, SeaweedFS, ...)"
    )
    commands.add_parser(
        "show", parents=[reading], help="a run's funnel: each stage's rows in, kept and rejected, and its progress"
    )
    sql_cmd = commands.add_parser(
        "sql", parents=[reading], help="query a run with DuckDB: a view per stage, rejects and funnel"
    )
    sql_cmd.add_argument("query", help='e.g. "SELECT reason, count(*) FROM rejects GROUP BY reason"')
    output_format = sql_cmd.add_mutually_exclusive_group()
    output_format.add_argument("--json", action="store_true", help="one JSON object per row (JSON Lines)")
    output_format.add_argument("--csv", action="store_true", help="CSV with a header row")
    sql_cmd.add_argument(
        "--limit",
        type=int,
        default=100,
        help="rows a table shows at most (default: 100; 0: all); --json and --csv give all",
    )
    sample_cmd = commands.add_parser("sample", parents=[reading], help="print a few rows of a stage as readable pairs")
    sample_cmd.add_argument(
        "--stage",
        default="final",
        help="a stage (documents, filtered, clean, labeled, scored, polished, final) or rejects (default: final)",
    )
    sample_cmd.add_argument("-n", type=int, default=5, help="how many rows (default: 5)")
    sample_cmd.add_argument(
        "--where", help='a SQL condition on the stage\'s columns, e.g. "score > 0.8" or "reason = \'too_long\'"'
    )
    sample_cmd.add_argument("--seed", type=int, default=0, help="the sample's seed: the same seed picks the same rows")
    sample_cmd.add_argument(
        "--full", action="store_true", help="print texts whole (default: their first 300 characters)"
    )
    trace_cmd = commands.add_parser(
        "trace", parents=[reading], help="one document's way through the stages, or where it was dropped and why"
    )
    trace_cmd.add_argument("doc_id", help="the document's doc_id")
    trace_cmd.add_argument("--source", help="the source, when two sources share the id")
    report_cmd = commands.add_parser(
        "report", parents=[reading], help="write the run's report as one self-contained HTML page"
    )
    report_cmd.add_argument("-o", "--output", help="where to write it (default: report.html in the run folder)")

    jobs_cmd = commands.add_parser("jobs", help="follow the Ray jobs of a cluster")
    actions = jobs_cmd.add_subparsers(dest="action", required=True)
    actions.add_parser("list", parents=[address], help="kun-ray's jobs on the cluster")
    for name, text in (("status", "a job's status"), ("logs", "a job's log"), ("stop", "stop a job")):
        action = actions.add_parser(name, parents=[address], help=text)
        action.add_argument("job_id", help="the id `kun-ray submit` printed")
        if name == "logs":
            action.add_argument("--follow", action="store_true", help="keep printing until the job ends")
        if name == "stop":
            action.add_argument("--wait", action="store_true", help="wait until the job has stopped")
    return parser


def _read(args: argparse.Namespace) -> int:
    """A command that reads a run back; a query DuckDB refuses (a typo in --where or in SQL) is one line."""
    import duckdb

    from kun_ray.query import QueryError

    try:
        return READERS[args.command](args)
    except duckdb.Error as error:
        raise QueryError(str(error).strip().splitlines()[0]) from None


READERS = {"show": _show, "sql": _sql, "sample": _sample, "trace": _trace, "report": _report}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from kun_ray.jobs import JobError
    from kun_ray.query import QueryError, RunNotFound

    try:
        if args.command == "submit":
            return _submit(args)
        if args.command == "jobs":
            return _jobs(args)
        if args.command in READERS:
            return _read(args)
        if args.command == "train":
            return _train(args)
        if args.command == "loop":
            return _loop(args)
        config = load_config(args.config, args.set)  # a bad prompt file, a stage out of order, stop here
        try:  # before Ray starts: a glob that matches nothing stops here
            inputs = plan_inputs(config)
        except ConfigError as error:
            raise ConfigError(f"{args.config}: {error}") from None
        if args.command == "validate":
            return _validate(config, inputs)
        return _run(config, inputs, not args.no_progress, args.fresh, args.force, args.json)
    except LeaseHeld as error:
        print(f"kun-ray: {redact(str(error))}", file=sys.stderr)
        return 2
    except ConfigError as error:
        print(f"kun-ray: config error: {redact(str(error))}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `kun-ray sql ... | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (JobError, RunNotFound, QueryError, LeaseLost) as error:
        print(f"kun-ray: {redact(str(error))}", file=sys.stderr)
        return 1
    except Exception as error:  # a failed run: its traceback, with any secret a library quoted masked
        if line := unreachable_store(error):
            print(f"kun-ray: {redact(line)}", file=sys.stderr)
        else:
            print(redact(traceback.format_exc()), file=sys.stderr, end="")
        return 1


if __name__ == "__main__":
    sys.exit(main())
