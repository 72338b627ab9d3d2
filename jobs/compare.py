"""Fit the field's simple methods and ours side by side on one split, and write the table.

    python -m jobs.compare --input ratings.csv --output cmp/ [--config f.toml] [--set k=v ...]
        [--methods popularity,biases,als_biases]

The input, split and [model] settings are the train job's (same options). Methods (mf_spark.run.compare):
explicit data popularity, biases, svd, sgd, als, als_biases, nmf; implicit data popularity, svd, als,
wals_w0_0.1, wals_w0_0.3, nmf. Writes DIR/comparison.parquet (method, rmse, mae, precision_at_k,
recall_at_k, ndcg_at_k, map_at_k, coverage, fit_seconds), DIR/comparison.txt (the table as printed),
DIR/report.html (the table, its plots and the data) and DIR/_SUCCESS atomically.
Exit codes as jobs.train: 0, 2 bad arguments, config or input, 1 other.
"""

from __future__ import annotations

import os
import posixpath
import sys

if __package__ in (None, ""):  # run as a script (spark-submit jobs/compare.py) from a source checkout
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mf_spark.core import session
from mf_spark.core.errors import UsageError
from mf_spark.run import cli, compare, tracking
from mf_spark.run.pipeline import Pipeline


def parser():
    p = cli.input_arguments(
        cli._Parser(prog="jobs/compare.py", description="Compare recommender methods on one split of your data.")
    )
    p.add_argument("--methods", help="comma-separated methods to fit (default: all for the model kind)")
    return p


def chosen_methods(names: str | None, kind: str) -> list:
    """The methods --methods names (all of the kind's without it); UsageError naming unknown ones."""
    every = compare.methods(kind)
    if not names:
        return every
    wanted = [m.strip() for m in names.split(",") if m.strip()]
    known = {m.name: m for m in every}
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise UsageError(f"--methods: unknown for {kind} data: {', '.join(unknown)}; known: {', '.join(known)}")
    return [known[n] for n in wanted]


def run(argv: list[str] | None = None) -> str:
    a = parser().parse_args(argv)
    args = cli.args_of(a)
    cfg, demo = args.run, args.demo
    chosen = chosen_methods(a.methods, cfg.model.kind)
    tracking.check(cfg.tracking)
    spark = session.start("mf_spark-compare", cfg.spark)
    pipeline = Pipeline(spark, args)
    table, published = pipeline.compare(chosen)
    print(compare.table_text(table, cfg.eval.k), end="")
    print(f"comparison: {posixpath.join(published, 'comparison.parquet')}{' (demo data)' if demo else ''}")
    return published


def main(argv: list[str] | None = None) -> int:
    return cli.guarded("comparison", lambda: run(argv) and 0)


if __name__ == "__main__":
    sys.exit(main())
