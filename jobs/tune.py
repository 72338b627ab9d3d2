"""Tune a model's settings on a validation split of the training data, refit the best, score the test set.

    spark-submit jobs/tune.py --input ratings.csv --output out/ [--config f.toml] [--set k=v ...]
    mf-spark-tune ...                          # the console entry point, the same arguments

The input, split, [model] and [eval] settings are the train job's (same options); [tune] says how to
search (mf_spark.run.tune). The test split (or --test) is read and held out but never looked at until the
best settings are chosen: they are chosen on a validation split of the training ratings (the run's
split rules, tune.validation_fraction). Writes the refit model's usual output folder (the train job's
layout, metrics.json on the test set, report.html with the search) plus

    DIR/tuning/trials.parquet   a row per trial: its settings, validation metric, best iteration,
                                iterations run, seconds, the metric after every iteration
    DIR/best.toml               the chosen config: `jobs/train.py --config DIR/best.toml` trains it again

Exit codes as jobs.train: 0, 2 bad arguments, config or input, 1 other.
"""
from __future__ import annotations

import dataclasses
import os
import posixpath
import sys
import time

if __package__ in (None, ""):   # run as a script (spark-submit jobs/tune.py) from a source checkout
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jobs import train as train_job
from mf_spark.run import cli
from mf_spark.core import config
from mf_spark.core import fs
from mf_spark.run import report
from mf_spark.core import session
from mf_spark.run import tracking
from mf_spark.run import tune
from mf_spark.run import write
from mf_spark.als.checkpoint import CheckpointStore
from mf_spark.run.phases import PhaseClock


def parser():
    return cli.filter_arguments(cli.input_arguments(cli._Parser(
        prog="jobs/tune.py", description="Tune, refit and score a matrix factorization model.")))


def parse(argv: list[str] | None) -> cli.TrainArgs:
    a = parser().parse_args(argv)
    demo = cli.check_inputs(a)
    return cli.TrainArgs(a.input, a.format, a.train, a.test, a.output or cli.DEMO_OUTPUT, False,
                         config.load(a.config, a.set), demo, None, a.include, a.exclude, a.item_col)


def run(spark, args: cli.TrainArgs, clock: PhaseClock | None = None) -> dict:
    """Search, refit, publish; returns the refit's metrics.json content (with a "tuning" summary)."""
    cfg = args.run
    tracking.check(cfg.tracking)
    clock = (clock or PhaseClock()).attach(spark)
    output = write.check_output(spark, args.output)
    with write.claim(spark, output) as lease:
        CheckpointStore(spark, output).clear()
        with clock.phase("read_validate"):
            loaded = train_job.load(spark, args, cfg)
        with train_job.settled(loaded.warm), clock.phase("split_index"):
            outer, inner = loaded.front.tuning_split(tune.validation_split(cfg))
        with train_job.settled(loaded.warm), clock.phase("tune"):
            started = time.perf_counter()
            try:
                found = tune.search(inner, cfg)
            finally:
                inner.release()
            seconds = time.perf_counter() - started
        best = tune.best_run(cfg, found)
        trials = tune.trials_table(found)
        column = f"validation_{found.metric}"
        summary = {"method": cfg.tune.method, "metric": found.metric, "trials": len(found.trials),
                   "best_trial": found.best.number, "best_validation": found.best_value,
                   "best_iteration": found.best_iteration, "validation_ratings": inner.heldout.n,
                   "fit_ratings": inner.stats.n, "seconds": seconds,
                   "best": found.best_settings}
        header = (f"Chosen by jobs/tune.py: trial {found.best.number} of {len(found.trials)} ({cfg.tune.method}), "
                  f"validation {found.metric} {found.best_value:.5g} after {found.best_iteration} iterations,\n"
                  f"on {inner.heldout.n} validation ratings carved from the training data (never the test set).\n"
                  f"Train it again: jobs/train.py --input ... --config best.toml")

        def extra(staging: str, body: dict) -> list:
            fs.write_parquet(spark, posixpath.join(staging, "tuning", "trials.parquet"), trials)
            fs.write_text(spark, posixpath.join(staging, "best.toml"), config.to_toml(best, header))
            return [report.tuning_section(trials, column, found.lower_is_better, found.params)]
        metrics = train_job.fit_publish(spark, dataclasses.replace(args, run=best), best, output, clock, lease,
                                        loaded, outer, extra, {"tuning": summary})
    by_trial = [(t.number, tune.best_of(t, found.lower_is_better)) for t in found.trials]
    tracking.log_run(cfg.tracking, "tune", best, metrics, output,
                     ("metrics.json", "report.html", "model.json", "factors", "best.toml", "tuning"),
                     {f"{column}_by_trial": by_trial})
    return metrics


def main(argv: list[str] | None = None) -> int:
    def body() -> int:
        args = parse(argv)
        clock = PhaseClock()
        with clock.phase("session"):
            spark = session.start("mf_spark-tune", args.run.spark)
        metrics = run(spark, args, clock)
        t = metrics["tuning"]
        print(f"best of {t['trials']} trials: {t['best']} (validation {t['metric']} {t['best_validation']:.4f})")
        train_job.print_summary(metrics)
        return 0
    return cli.guarded("tuning", body)


if __name__ == "__main__":
    sys.exit(main())
