"""Command-line parsing shared by the jobs. Errors raise UsageError/ConfigError (exit code 2)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import posixpath
import re
import signal
import sys
import threading
import traceback
from dataclasses import dataclass
from typing import Callable

from mf_spark.als import checkpoint
from mf_spark.core import config
from mf_spark.core.config import RunConfig
from mf_spark.core.errors import MfSparkError, Stopped, UsageError, exit_code
from mf_spark.core.session import REMOTE_KEY
from mf_spark.run import phases

FORMATS = ("auto", "csv", "tsv", "movielens", "json", "parquet")  # "auto" and data.read.FORMATS
DEMO_OUTPUT = "output"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse would print usage and sys.exit(2) itself
        raise UsageError(f"{message}\n{self.format_usage().strip()}")


@dataclass(frozen=True)
class TrainArgs:
    input: str | None  # ratings to split (None with train/test, or for the demo)
    format: str
    train: str | None
    test: str | None
    output: str
    resume: bool
    run: RunConfig
    demo: bool  # no input given: train on the sample bundled with pyspark
    init_model: str | None = None  # warm start from this saved model's factors
    include: str | None = None  # item-ID lists filtering the recommendations
    exclude: str | None = None
    item_col: str = "item"  # their column, when they are CSV or Parquet
    input_table: str | None = None  # a catalog table instead of files
    where: str | None = None  # its rows' filter (a Spark SQL condition)
    run_date: str | None = None  # the run's date: `output` is output_root/run_date=DATE, tables' partition
    output_table: str | None = None  # prefix of the catalog tables the outputs are also written to
    output_root: str | None = None  # --output as given (output's parent with a run date)
    init_previous: bool = False  # warm start from the latest earlier run date's model under output_root
    user_features: str | None = None  # side information: feature tables mapped to the factors
    item_features: str | None = None


RUN_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def run_date_of(text: str | None) -> str | None:
    """--run-date as YYYY-MM-DD (UsageError for anything else, a day that does not exist included)."""
    if text is None:
        return None
    import datetime

    try:
        if not RUN_DATE.fullmatch(text):
            raise ValueError
        return datetime.date.fromisoformat(text).isoformat()
    except ValueError:
        raise UsageError(f"--run-date {text!r}: expected a date as YYYY-MM-DD (e.g. 2026-12-05)") from None


def args_of(a: argparse.Namespace, resume: bool = False, init_model: str | None = None) -> TrainArgs:
    """TrainArgs of a job's parsed arguments (input_arguments' and, where the job has them,
    filter_arguments' and --init-previous)."""
    demo = check_inputs(a)
    run_date = run_date_of(a.run_date)
    if a.output_table and not run_date:
        import datetime

        run_date = datetime.datetime.now(datetime.timezone.utc).date().isoformat()
        log.info("--output-table without --run-date: the run's date is today's (UTC), %s", run_date)
    root = a.output or DEMO_OUTPUT
    output = posixpath.join(root.rstrip("/") or "/", f"run_date={run_date}") if run_date else root
    init_previous = getattr(a, "init_previous", False)
    if init_previous and (init_model or not run_date):
        raise UsageError("--init-previous needs --run-date (the model of the latest earlier date) and no --init-model")
    return TrainArgs(
        a.input,
        a.format,
        a.train,
        a.test,
        output,
        resume,
        with_remote(config.load(a.config, a.set), a.remote),
        demo,
        init_model,
        getattr(a, "include", None),
        getattr(a, "exclude", None),
        getattr(a, "item_col", "item"),
        a.input_table,
        a.where,
        run_date,
        a.output_table,
        root,
        init_previous,
        getattr(a, "user_features", None),
        getattr(a, "item_features", None),
    )


def input_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The arguments every job over ratings takes: the input (or a given split), the output, the config."""
    p.add_argument("--input", help="ratings file or folder (CSV with header, TSV, MovieLens ::, Parquet)")
    p.add_argument("--format", default="auto", choices=FORMATS, help="input format (default: auto)")
    p.add_argument("--train", help="training split, used as it is (with --test, instead of --input)")
    p.add_argument("--test", help="held-out split, used as it is (with --train)")
    p.add_argument("--input-table", help="a catalog table of ratings (e.g. db.ratings) instead of files")
    p.add_argument("--where", help="--input-table: keep the rows of this Spark SQL condition (e.g. a date range)")
    p.add_argument("--output", help="output folder (default for the demo: ./output)")
    p.add_argument(
        "--run-date",
        help="YYYY-MM-DD: the outputs go to OUTPUT/run_date=DATE (other dates untouched) and the tables' partition",
    )
    p.add_argument(
        "--output-table",
        metavar="PREFIX",
        help="also write the catalog tables PREFIX_recommendations, PREFIX_user_factors, PREFIX_item_factors and "
        "PREFIX_metrics, partitioned by run_date (a rerun replaces its date only)",
    )
    p.add_argument("--config", help="TOML config (default: conf/default.toml values)")
    remote_argument(p)
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config key, repeatable (e.g. --set model.rank=32)",
    )
    return p


def remote_argument(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument(
        "--remote",
        metavar="URL",
        help="run on this Spark Connect server (sc://host:15002, or local[N] to start one here); "
        "default: $SPARK_REMOTE when set, else a classic session",
    )
    return p


def with_remote(run: RunConfig, remote: str | None) -> RunConfig:
    """`run` whose [spark] settings name the Spark Connect server --remote gave (session.start uses it)."""
    return dataclasses.replace(run, spark={**run.spark, REMOTE_KEY: remote}) if remote else run


def check_inputs(a: argparse.Namespace) -> bool:
    """UsageError for a wrong combination of --input / --train / --test / --output; True for the
    demo (no input: the sample bundled with pyspark)."""
    if a.input and (a.train or a.test):
        raise UsageError("give either --input or --train with --test, not both")
    if a.input_table and (a.input or a.train or a.test):
        raise UsageError("give either --input-table or files (--input, or --train with --test), not both")
    if a.where and not a.input_table:
        raise UsageError("--where filters --input-table's rows: give --input-table")
    if bool(a.train) != bool(a.test):
        raise UsageError("--train and --test go together")
    demo = not (a.input or a.train or a.input_table)
    if not demo and not a.output:
        raise UsageError("--output is required (only the demo, run without --input, has a default)")
    return demo


def feature_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Side information: feature tables whose map to the factors is saved with the model."""
    for side in ("user", "item"):
        p.add_argument(
            f"--{side}-features",
            metavar="FILE",
            help=f"{side} features (CSV with header, or Parquet; an ID column and numbers, categories or "
            f"'a|b' tags): the model learns a map from them to the factors, which places new {side}s "
            "(jobs.recommend --" + side + "-features)",
        )
    return p


def filter_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The item-ID lists that filter the recommendations a training job writes."""
    p.add_argument("--include", help="file of item IDs: only these may be recommended")
    p.add_argument("--exclude", help="file of item IDs: these are never recommended")
    p.add_argument("--item-col", default="item", help="item column of a CSV/Parquet --include/--exclude file")
    return p


def train_parser() -> argparse.ArgumentParser:
    p = input_arguments(
        _Parser(prog="jobs/train.py", description="Train a matrix factorization model on user-item feedback.")
    )
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint of --output")
    p.add_argument("--init-model", help="warm start: begin from this saved model's factors (same rank and kind)")
    p.add_argument(
        "--init-previous",
        action="store_true",
        help="with --run-date: warm start from the model of the latest earlier date under --output (none: cold)",
    )
    return feature_arguments(filter_arguments(p))


def parse_train(argv: list[str] | None) -> TrainArgs:
    a = train_parser().parse_args(argv)
    return args_of(a, a.resume, a.init_model)


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
log = logging.getLogger("mf_spark")


class _Stderr(logging.StreamHandler):
    """A handler on whatever sys.stderr is when a line is logged (a caller may have replaced it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def setup_logging(level: int = logging.INFO) -> None:
    """The jobs' log lines on stderr, with a timestamp and level. Only the "mf_spark" logger gets a
    handler: configuring the root logger would also print py4j's INFO lines, whose "Closing down
    clientserver connection" at exit would then follow a failing job's error."""
    if not any(isinstance(h, _Stderr) for h in log.handlers):
        handler = _Stderr()
        handler.setFormatter(logging.Formatter(LOG_FORMAT, "%Y-%m-%d %H:%M:%S"))
        log.addHandler(handler)
    log.setLevel(level)
    log.propagate = False


def guarded(what: str, body: Callable[[], int]) -> int:
    """Run a job body and map failures to exit codes: 2 for bad arguments, config or input (one
    line naming the problem), 1 for anything else (the traceback, then a line saying what failed).
    The error is the last line the job prints: nothing of ours is logged after it, and py4j's own
    log lines are not shown (setup_logging)."""
    setup_logging()
    handlers = _on_stop_signals()
    try:
        return body()
    except Stopped as exc:
        phase = exc.phase
        saved = checkpoint.last_saved()
        log.error(
            "%s stopped by %s%s: nothing half-written is left (a previous output is intact); %s",
            what,
            exc,
            f" during {phase}" if phase else "",
            f"--resume continues after iteration {saved}" if saved else "this run wrote no checkpoint",
        )
        return 128 + exc.signum
    except MfSparkError as exc:
        log.error("%s", exc)
        return exit_code(exc)
    except Exception as exc:
        traceback.print_exc()
        cause = environment_cause(exc)
        if cause:
            log.error("%s failed: %s", what, cause[1])
            return cause[0]
        first = str(exc).strip().splitlines()[0][:500] if str(exc).strip() else ""
        log.error("%s failed: %s%s", what, type(exc).__name__, f": {first}" if first else "")
        return 1
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        sys.stderr.flush()


# Causes from the machine, not the job, as the JVM's and the OS's messages name them (their stack
# traces run to hundreds of lines): the last line names the cause and the path when one is given.
# With the exit code: 1 for what may pass (space freed, a quota raised: retry), 2 for what the user
# must change (where the job writes).
ENVIRONMENT_CAUSES = (
    ("No space left on device", "no space left on the device", 1),
    ("Disk quota exceeded", "the disk quota is exceeded", 1),
    ("Read-only file system", "the file system is read-only", 2),
    ("Permission denied", "permission denied", 2),
)


def environment_cause(exc: BaseException) -> tuple[int, str] | None:
    """(exit code, one line) for an error whose cause (anywhere in its chain or its Java stack trace)
    is the machine's: a full disk, a quota, a read-only file system, a refused permission; None
    otherwise."""
    seen, texts = set(), []
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        texts.append(str(exc))
        exc = exc.__cause__ or exc.__context__
    text = "\n".join(texts)
    for needle, said, code in ENVIRONMENT_CAUSES:
        at = text.find(needle)
        if at < 0:
            continue
        line = text[text.rfind("\n", 0, at) + 1 : text.find("\n", at) if "\n" in text[at:] else len(text)]
        path = re.search(r"((?:file:|hdfs:|s3a?:|gs:|abfss?:)?/[^\s'\",)]+)", line)
        return code, f"{said}{f' ({path.group(1)})' if path else ''}: {line.strip()[:300]}"
    return None


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _on_stop_signals() -> dict:
    """Make SIGTERM and SIGINT raise Stopped in the main thread (returns the handlers they had). The
    first one stops the job; later ones are ignored, so that the clean-up it started runs to its end
    (a scheduler's SIGKILL still ends it)."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def stop(signum, frame):
        for s in STOP_SIGNALS:
            signal.signal(s, signal.SIG_IGN)
        raise Stopped(signum, phases.current())

    return {s: signal.signal(s, stop) for s in STOP_SIGNALS}
