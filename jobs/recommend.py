"""Top-N recommendations from a saved model, for all users or a list of them.

    python -m jobs.recommend --model out/ --output recs/ [--users ids.txt] [--n 20] [--seen ratings.csv]

`--users` is a text file with one user ID per line (a first line equal to --user-col is a header), a
CSV with a header holding --user-col, or Parquet with that column. `--seen` is a ratings file (any
format jobs.train reads) whose (user, item) pairs are excluded. Writes DIR/recommendations (user,
rank, item, score) and DIR/_SUCCESS atomically. Exit codes as jobs.train: 0, 2 bad input, 1 other.
"""
from __future__ import annotations

import argparse
import logging
import os
import posixpath
import sys

if __package__ in (None, ""):   # run as a script (spark-submit jobs/recommend.py) from a source checkout
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pyspark.sql import functions as F

from mf_spark import config, fs, read, session, validate, write
from mf_spark.cli import FORMATS, _Parser, guarded
from mf_spark.errors import InputError
from mf_spark.model import load_model
from mf_spark.types import ITEM, USER

log = logging.getLogger("mf_spark")


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="jobs/recommend.py", description="Top-N recommendations from a saved mf_spark model.")
    p.add_argument("--model", required=True, help="model folder (a training run's --output)")
    p.add_argument("--output", required=True, help="output folder for recommendations/")
    p.add_argument("--users", help="file of user IDs (default: every user of the model)")
    p.add_argument("--user-col", default="user", help="user column of a CSV/Parquet --users file")
    p.add_argument("--n", type=int, default=10, help="recommendations per user (default 10)")
    p.add_argument("--seen", help="ratings whose (user, item) pairs must not be recommended")
    p.add_argument("--format", default="auto", choices=("auto", *FORMATS), help="format of --seen")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="config overrides for reading --seen (data.*) and [spark]")
    return p


def read_users(spark, path: str, user_col: str, id_type: str):
    """DataFrame[user] of the IDs in `path`, typed like the model's IDs. InputError names the file."""
    if not fs.exists(spark, path):
        raise InputError(f"--users {path}: does not exist")
    if path.endswith(".parquet") or read.detect_format(path) == "parquet":
        df = spark.read.parquet(path)
        if user_col not in df.columns:
            raise InputError(f"--users {path}: no column {user_col!r}; columns are {df.columns}")
        ids = df.select(F.col(user_col).cast("string").alias(USER))
    else:
        lines = spark.read.text(path).select(F.trim(F.col("value")).alias("line"))
        first = lines.first()
        header = first is not None and "," in first["line"]
        if header:
            names = [c.strip() for c in first["line"].split(",")]
            if user_col not in names:
                raise InputError(f"--users {path}: header has no column {user_col!r}; columns are {names}")
            df = spark.read.csv(path, header=True)
            ids = df.select(F.trim(F.col(user_col)).alias(USER))
        else:
            ids = lines.where(F.col("line") != user_col).select(F.col("line").alias(USER))
    ids = ids.where(F.col(USER).isNotNull() & (F.col(USER) != ""))
    if id_type == "int64":
        bad = ids.where(F.col(USER).try_cast("long").isNull()).limit(3).collect()
        if bad:
            raise InputError(f"--users {path}: the model's user IDs are integers, got "
                             + ", ".join(repr(r[USER]) for r in bad))
        ids = ids.select(F.col(USER).cast("long").alias(USER))
    return ids


def recommend(args: argparse.Namespace) -> str:
    """The whole job; returns the qualified output folder."""
    if args.n < 1:
        raise InputError(f"--n {args.n}: expected an integer >= 1")
    run = config.load(None, args.set)
    spark = session.start("mf_spark-recommend", run.spark)
    write.check_output(spark, args.output)
    model = load_model(args.model, spark)
    users = read_users(spark, args.users, args.user_col, str(model.users.ids.type)) if args.users else None
    seen = None
    if args.seen:
        cleaned = validate.clean(read.ratings(spark, args.seen, args.format, run.data), run.data, model.kind)
        seen = cleaned.ratings.select(USER, ITEM)
    recs = model.recommend(users, args.n, seen=seen)
    if users is not None:
        known = model.users.to_df(spark, "_i").withColumnRenamed(model.users.name, USER)
        n_unknown = users.distinct().join(known, USER, "left_anti").count()
        if n_unknown:
            log.info("%d requested users are not in the model and get no recommendations", n_unknown)
    return write.publish_with(spark, args.output,
                              lambda staging: recs.write.parquet(posixpath.join(staging, "recommendations")))


def main(argv: list[str] | None = None) -> int:
    def body() -> int:
        out = recommend(parser().parse_args(argv))
        print(f"recommendations: {posixpath.join(out, 'recommendations')}")
        return 0
    return guarded("recommend", body)


if __name__ == "__main__":
    sys.exit(main())
