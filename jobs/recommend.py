"""Top-N recommendations from a saved model: for its users, a list of them, or users folded in from
their history; or the best users for items (audiences).

    python -m jobs.recommend --model out/ --output recs/ [--users ids.txt | --history clicks.csv]
        [--n 20] [--seen ratings.csv] [--include in_stock.txt] [--exclude banned.txt]
    python -m jobs.recommend --model out/ --output aud/ --audiences [--items ids.txt] [--n 100]

`--users` / `--items` / `--include` / `--exclude` are ID lists: a text file with one ID per line (a
first line equal to the column name is a header), a CSV with a header holding --user-col /
--item-col, or Parquet with that column. `--history` and `--seen` are ratings files (any format
jobs.train reads). `--history`: every user of the file gets factors folded in from their rows (one
half-step against the model's items, known users too), and the history's items are not recommended
to them. `--item-features` / `--user-features` (a model trained with them): the file's items / users
the model does not know get factors from their features and take part (new catalog items in every
list they score into; new users get lists). Writes DIR/recommendations (user, rank, item, score), or
with --audiences DIR/audiences (item, rank, user, score), and DIR/_SUCCESS atomically. Exit codes
as jobs.train: 0, 2 bad input, 1 other.
"""

from __future__ import annotations

import argparse
import logging
import os
import posixpath
import sys

if __package__ in (None, ""):  # run as a script (spark-submit jobs/recommend.py) from a source checkout
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from mf_spark.core import config, session
from mf_spark.core.errors import InputError, UsageError
from mf_spark.core.types import ITEM, RATING, USER
from mf_spark.data import read, validate
from mf_spark.model.factors import FactorModel, load_model
from mf_spark.run import cli, write
from mf_spark.run.cli import FORMATS, _Parser, guarded

log = logging.getLogger("mf_spark")


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="jobs/recommend.py", description="Top-N recommendations from a saved mf_spark model.")
    p.add_argument("--model", required=True, help="model folder (a training run's --output)")
    p.add_argument("--output", required=True, help="output folder for recommendations/ (or audiences/)")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--users", help="file of user IDs (default: every user of the model)")
    who.add_argument("--history", help="ratings of users to fold in (known or not) and recommend for")
    who.add_argument("--audiences", action="store_true", help="the best users for items, to audiences/")
    p.add_argument("--items", help="with --audiences: file of item IDs (default: every item)")
    p.add_argument("--user-col", default="user", help="user column of a CSV/Parquet ID list")
    p.add_argument("--item-col", default="item", help="item column of a CSV/Parquet ID list")
    p.add_argument("--n", type=int, default=10, help="recommendations per user (default 10)")
    p.add_argument("--seen", help="ratings whose (user, item) pairs must not be recommended")
    p.add_argument("--include", help="file of item IDs: only these may be recommended")
    p.add_argument("--exclude", help="file of item IDs: these are never recommended")
    p.add_argument("--format", default="auto", choices=FORMATS, help="format of --seen and --history")
    for side in ("user", "item"):
        p.add_argument(
            f"--{side}-features",
            metavar="FILE",
            help=f"{side} features in the training run's --{side}-features layout: its {side}s the model does "
            f"not know get factors from them (the map the model learned) and take part",
        )
    cli.remote_argument(p)
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="config overrides for reading --seen / --history (data.*) and [spark]",
    )
    return p


def ratings_of(
    spark, path: str, flag: str, args: argparse.Namespace, run: config.RunConfig, model: FactorModel
) -> DataFrame:
    """user, item, rating of a ratings file, validated as the train job validates its input."""
    try:
        raw = read.ratings(spark, path, args.format, run.data, model.kind == "implicit")
    except InputError as exc:
        raise InputError(f"{flag}: {exc}") from None
    return validate.clean(raw, run.data, model.kind).ratings.select(USER, ITEM, RATING)


def candidates(spark, args: argparse.Namespace, model: FactorModel) -> dict[str, DataFrame]:
    """--include / --exclude as item-ID DataFrames for FactorModel.recommend."""
    kind = str(model.items.ids.type)
    return {
        flag: read.id_list(spark, path, args.item_col, kind, f"--{flag}", ITEM)
        for flag, path in (("include", args.include), ("exclude", args.exclude))
        if path
    }


def recommend(args: argparse.Namespace) -> str:
    """The whole job; returns the qualified output folder."""
    if args.n < 1:
        raise InputError(f"--n {args.n}: expected an integer >= 1")
    if args.items and not args.audiences:
        raise UsageError("--items goes with --audiences (the items whose best users are wanted)")
    if args.audiences and (args.include or args.exclude):
        raise UsageError("--include / --exclude filter recommended items; they do not apply to --audiences")
    run = cli.with_remote(config.load(None, args.set), args.remote)
    spark = session.start("mf_spark-recommend", run.spark)
    write.check_output(spark, args.output)
    model = load_model(args.model, spark)
    for side, path in (("users", args.user_features), ("items", args.item_features)):
        if path:
            model = model.with_features(side, read.feature_table(spark, path, f"--{side[:-1]}-features"))
    seen = ratings_of(spark, args.seen, "--seen", args, run, model).select(USER, ITEM) if args.seen else None
    if args.audiences:
        items = (
            read.id_list(spark, args.items, args.item_col, str(model.items.ids.type), "--items", USER)
            if args.items
            else None
        )
        flipped = None if seen is None else seen.select(F.col(ITEM).alias(USER), F.col(USER).alias(ITEM))
        by_item = model.transposed()
        recs = by_item.recommend(items, args.n, seen=flipped).select(
            F.col(USER).alias(ITEM), "rank", F.col(ITEM).alias(USER), "score"
        )
        _log_unknown(items, by_item, "items")
        return _publish(spark, args.output, "audiences", recs)
    users = read.id_list(spark, args.users, args.user_col, str(model.users.ids.type), "--users") if args.users else None
    if args.history:
        history = ratings_of(spark, args.history, "--history", args, run, model).cache()
        model = model.fold_in(history)
        log.info("folded in %d users from %s", model.users.size, args.history)
        pairs = history.select(USER, ITEM)
        seen = pairs if seen is None else seen.unionByName(pairs)
    recs = model.recommend(users, args.n, seen=seen, **candidates(spark, args, model))
    _log_unknown(users, model, "users")
    return _publish(spark, args.output, "recommendations", recs)


def _log_unknown(ids: DataFrame | None, model: FactorModel, what: str) -> None:
    if ids is None:
        return
    known = model.users.to_df(ids.sparkSession, "_i").withColumnRenamed(model.users.name, USER)
    n_unknown = ids.distinct().join(known, USER, "left_anti").count()
    if n_unknown:
        log.info("%d requested %s are not in the model and get no list", n_unknown, what)


def _publish(spark, output: str, name: str, table: DataFrame) -> str:
    return write.publish_with(spark, output, lambda staging: table.write.parquet(posixpath.join(staging, name)))


def main(argv: list[str] | None = None) -> int:
    def body() -> int:
        args = parser().parse_args(argv)
        out = recommend(args)
        print(
            f"{'audiences' if args.audiences else 'recommendations'}: "
            f"{posixpath.join(out, 'audiences' if args.audiences else 'recommendations')}"
        )
        return 0

    return guarded("recommend", body)


if __name__ == "__main__":
    sys.exit(main())
