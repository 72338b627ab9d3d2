"""Train a model: read -> validate -> split -> index -> fit -> evaluate -> recommend -> publish.

    spark-submit jobs/train.py --input ratings.csv --output out/ [--config f.toml] [--set k=v ...]
        [--resume] [--init-model yesterday/] [--include in_stock.txt] [--exclude banned.txt]
    mf-spark-train ...                         # the console entry point, the same arguments
    python -m jobs.train                       # demo on the MovieLens sample shipped with pyspark

Exit codes: 0 success; 2 bad arguments, config or input (message on stderr); 1 any other failure.
"""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as a script (spark-submit jobs/train.py) from a source checkout
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mf_spark.core import session
from mf_spark.run import cli
from mf_spark.run.phases import PhaseClock
from mf_spark.run.pipeline import Pipeline, print_summary


def run(spark, args: cli.TrainArgs, clock: PhaseClock | None = None) -> dict:
    """The whole training run; returns metrics.json's content."""
    return Pipeline(spark, args, clock).train()


def main(argv: list[str] | None = None) -> int:
    def body() -> int:
        args = cli.parse_train(argv)
        clock = PhaseClock()
        with clock.phase("session"):
            spark = session.start("mf_spark-train", args.run.spark)
        print_summary(run(spark, args, clock))
        return 0

    return cli.guarded("training", body)


if __name__ == "__main__":
    sys.exit(main())
