"""The `kun-ray` command. Thin: it parses arguments and calls the package's public functions.

Exit codes: 0 done, 2 a config that cannot run (one line on stderr, no traceback), 1 anything else.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback

from kun_ray.config import ConfigError, RunConfig, load_config
from kun_ray.io.read import InputFile, plan_inputs
from kun_ray.pipeline import llm_tasks, run
from kun_ray.run import RunFolder, run_settings
from kun_ray.secrets import RedactingFilter, redact


def _connect_ray() -> None:
    """Join the cluster in RAY_ADDRESS when it is set, else start a local Ray on loopback."""
    import ray

    if not ray.is_initialized():
        if address := os.environ.get("RAY_ADDRESS"):
            ray.init(address=address, logging_level=logging.WARNING)
        else:
            ray.init(_node_ip_address="127.0.0.1", logging_level=logging.WARNING)
    cpus = int(ray.cluster_resources().get("CPU", 0))
    gpus = int(ray.cluster_resources().get("GPU", 0))
    print(f"kun-ray: Ray cluster at {ray.get_runtime_context().gcs_address} ({cpus} CPUs, {gpus} GPUs)", file=sys.stderr)


def _validate(config: RunConfig, inputs: list[InputFile]) -> int:
    for source in config.sources:
        n = sum(f.source == source.name for f in inputs)
        print(f"{source.name}: {source.format}, {n} file{'s' * (n != 1)}")
    for name in config.llm_stages():
        print(f"{name}: {getattr(config, name).model}")
    print(f"output: {config.output.path}")
    return 0


def _log_to_stderr() -> None:
    """kun-ray's own progress lines (one per stage every 30 s, see kun_ray/ledger.py) on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("kun-ray: %(message)s"))
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger("kun_ray")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def _run(config: RunConfig, inputs: list[InputFile], progress: bool, fresh: bool, force: bool) -> int:
    from kun_ray.report import format_flows, format_table

    if not fresh:  # before Ray starts: a run folder of another config stops here
        RunFolder(config).check(run_settings(config, inputs), force)
    _log_to_stderr()
    _connect_ray()
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = progress
    report = run(config, inputs, fresh=fresh, force=force)
    print(format_table(report))
    print()
    print(format_flows(report))
    print(f"\nrun folder: {report['output']}  ({report['wall_s']:.1f} s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kun-ray", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run_cmd = commands.add_parser("run", help="run a config's stages on Ray and write its run folder")
    run_cmd.add_argument("config", help="the run's YAML config")
    run_cmd.add_argument("--no-progress", action="store_true", help="hide Ray Data's progress bars")
    run_cmd.add_argument("--fresh", action="store_true", help="start over: remove what an earlier run wrote to the output first")
    run_cmd.add_argument("--force", action="store_true", help="resume a run folder written by a changed config (finished shards stay as they are)")
    validate_cmd = commands.add_parser("validate", help="check a config and list its input files, without running it")
    validate_cmd.add_argument("config", help="the run's YAML config")
    args = parser.parse_args(argv)

    try:
        config = load_config(args.config)
        try:  # before Ray starts: a glob that matches nothing, a bad prompt file, stop here
            inputs = plan_inputs(config)
            llm_tasks(config)
        except ConfigError as error:
            raise ConfigError(f"{args.config}: {error}") from None
        if args.command == "validate":
            return _validate(config, inputs)
        return _run(config, inputs, progress=not args.no_progress, fresh=args.fresh, force=args.force)
    except ConfigError as error:
        print(f"kun-ray: config error: {redact(str(error))}", file=sys.stderr)
        return 2
    except Exception:  # a failed run: its traceback, with any secret a library quoted masked
        print(redact(traceback.format_exc()), file=sys.stderr, end="")
        return 1


if __name__ == "__main__":
    sys.exit(main())
