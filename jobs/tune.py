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

import os
import sys

if __package__ in (None, ""):  # run as a script (spark-submit jobs/tune.py) from a source checkout
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mf_spark.core import session
from mf_spark.run import cli
from mf_spark.run.phases import PhaseClock
from mf_spark.run.pipeline import Pipeline, print_summary


def parser():
    return cli.feature_arguments(
        cli.filter_arguments(
            cli.input_arguments(
                cli._Parser(prog="jobs/tune.py", description="Tune, refit and score a matrix factorization model.")
            )
        )
    )


def parse(argv: list[str] | None) -> cli.TrainArgs:
    return cli.args_of(parser().parse_args(argv))


def run(spark, args: cli.TrainArgs, clock: PhaseClock | None = None) -> dict:
    """Search, refit, publish; returns the refit's metrics.json content (with a "tuning" summary)."""
    return Pipeline(spark, args, clock).tune()


def main(argv: list[str] | None = None) -> int:
    def body() -> int:
        args = parse(argv)
        clock = PhaseClock()
        with clock.phase("session"):
            spark = session.start("mf_spark-tune", args.run.spark)
        metrics = run(spark, args, clock)
        t = metrics["tuning"]
        print(f"best of {t['trials']} trials: {t['best']} (validation {t['metric']} {t['best_validation']:.4f})")
        print_summary(metrics)
        return 0

    return cli.guarded("tuning", body)


if __name__ == "__main__":
    sys.exit(main())
