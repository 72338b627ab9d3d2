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

if __package__ in (None, ""):   # run as a script (spark-submit jobs/compare.py) from a source checkout
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mf_spark.run import cli
from mf_spark.run import compare
from mf_spark.core import config
from mf_spark.core import fs
from mf_spark.data import prepare
from mf_spark.data import read
from mf_spark.run import report
from mf_spark.core import session
from mf_spark.run import tracking
from mf_spark.run import write
from mf_spark.core.errors import UsageError


def parser():
    p = cli.input_arguments(cli._Parser(prog="jobs/compare.py",
                                        description="Compare recommender methods on one split of your data."))
    p.add_argument("--methods", help="comma-separated methods to fit (default: all for the model kind)")
    return p


def run(argv: list[str] | None = None) -> str:
    a = parser().parse_args(argv)
    demo = cli.check_inputs(a)
    cfg = config.load(a.config, a.set)
    every = compare.methods(cfg.model.kind)
    chosen = every
    if a.methods:
        names = [m.strip() for m in a.methods.split(",") if m.strip()]
        known = {m.name: m for m in every}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise UsageError(f"--methods: unknown for {cfg.model.kind} data: {', '.join(unknown)}; "
                             f"known: {', '.join(known)}")
        chosen = [known[n] for n in names]
    tracking.check(cfg.tracking)
    spark = session.start("mf_spark-compare", cfg.spark)
    output = write.check_output(spark, a.output or cli.DEMO_OUTPUT)
    front = prepare.front_end(spark, cfg, input=None if a.train else (a.input or read.sample_path()),
                              train=a.train, test=a.test, fmt=a.format)
    loaded = front.load()
    ready = front.split_index()
    table = compare.compare(ready, cfg, chosen)
    profile = report.DataProfile.of(ready.train, ready.users.size, ready.items.size, cfg.model.kind)
    counts = {**loaded.counts, "n_train": ready.stats.n, "n_test": ready.heldout.n}
    ready.release()
    text = compare.table_text(table, cfg.eval.k)
    page = report.render(f"mf_spark comparison: {len(chosen)} methods on {cfg.model.kind} data",
                         [report.comparison_section(table, cfg.eval.k), report.data_section(counts, profile)])

    def write_all(staging: str) -> None:
        fs.write_parquet(spark, posixpath.join(staging, "comparison.parquet"), table)
        fs.write_text(spark, posixpath.join(staging, "comparison.txt"), text)
        fs.write_text(spark, posixpath.join(staging, "report.html"), page)
    out = write.publish_with(spark, output, write_all)
    print(text, end="")
    print(f"comparison: {posixpath.join(out, 'comparison.parquet')}{' (demo data)' if demo else ''}")
    per_method = {f"{row['method']}.{k}": v for row in table.to_pylist() for k, v in row.items()
                  if k != "method" and v is not None}
    tracking.log_run(cfg.tracking, "compare", cfg, {**counts, **per_method}, out,
                     ("comparison.parquet", "comparison.txt", "report.html"))
    return out


def main(argv: list[str] | None = None) -> int:
    return cli.guarded("comparison", lambda: run(argv) and 0)


if __name__ == "__main__":
    sys.exit(main())
