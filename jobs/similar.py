"""Similar items or similar users ("more like this") from a saved model: cosine of the factors.

    python -m jobs.similar --model out/ --output sim/ [--n 10] [--items ids.txt | --users [ids.txt]]

With neither --items nor --users, every item's similar items go to OUT/similar_items (item, rank,
similar_item, score); --items FILE lists only those items. --users alone lists every user's similar
users in OUT/similar_users (user, rank, similar_user, score); --users FILE only those users. FILE is
an ID list as jobs.recommend reads them (mf_spark.data.read.id_list): a text file with one ID per line (a
first line equal to --item-col/--user-col is a header), a CSV with a header holding that column, or
Parquet. OUT/_SUCCESS is written last and the folder replaced atomically. Exit codes: 0, 2 bad
arguments or input, 1 other.
"""

from __future__ import annotations

import argparse
import os
import posixpath
import sys

if __package__ in (None, ""):  # run as a script (spark-submit jobs/similar.py) from a source checkout
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pyspark.sql import DataFrame, SparkSession

from mf_spark.core import config, session
from mf_spark.core.errors import InputError
from mf_spark.core.types import ITEM, USER
from mf_spark.data import read
from mf_spark.model.factors import FactorModel, load_model
from mf_spark.model.similar import similar_items, similar_users
from mf_spark.run import cli, write
from mf_spark.run.cli import _Parser, guarded

EVERY = ""  # --users given without a file: every user


def parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="jobs/similar.py",
        description="Similar items or users (cosine of the factors) from a saved mf_spark model.",
    )
    p.add_argument("--model", required=True, help="model folder (a training run's --output)")
    p.add_argument("--output", required=True, help="output folder for similar_items/ or similar_users/")
    p.add_argument("--n", type=int, default=10, help="similar items (users) per item (user), default 10")
    side = p.add_mutually_exclusive_group()
    side.add_argument("--items", metavar="FILE", help="file of item IDs (default: every item)")
    side.add_argument(
        "--users",
        nargs="?",
        const=EVERY,
        metavar="FILE",
        help="similar users instead of items: of the users in FILE, or of every user",
    )
    p.add_argument("--item-col", default=ITEM, help="item column of a CSV/Parquet --items file")
    p.add_argument("--user-col", default=USER, help="user column of a CSV/Parquet --users file")
    cli.remote_argument(p)
    p.add_argument(
        "--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="config overrides ([spark] keys)"
    )
    return p


def similar_lists(spark: SparkSession, model: FactorModel, args: argparse.Namespace) -> tuple[str, DataFrame]:
    """(output subfolder, DataFrame) of the side the arguments ask for."""
    if args.users is not None:
        users = (
            read.id_list(spark, args.users, args.user_col, str(model.users.ids.type), "--users", USER)
            if args.users
            else None
        )
        return "similar_users", similar_users(model, args.n, users)
    items = (
        read.id_list(spark, args.items, args.item_col, str(model.items.ids.type), "--items", ITEM)
        if args.items
        else None
    )
    return "similar_items", similar_items(model, args.n, items)


def similar(args: argparse.Namespace) -> str:
    """The whole job; returns the qualified path of the folder written."""
    if args.n < 1:
        raise InputError(f"--n {args.n}: expected an integer >= 1")
    run = cli.with_remote(config.load(None, args.set), args.remote)
    spark = session.start("mf_spark-similar", run.spark)
    write.check_output(spark, args.output)
    model = load_model(args.model, spark)
    name, lists = similar_lists(spark, model, args)
    out = write.publish_with(spark, args.output, lambda staging: lists.write.parquet(posixpath.join(staging, name)))
    return posixpath.join(out, name)


def main(argv: list[str] | None = None) -> int:
    def body() -> int:
        written = similar(parser().parse_args(argv))
        print(f"{posixpath.basename(written)}: {written}")
        return 0

    return guarded("similar", body)


if __name__ == "__main__":
    sys.exit(main())
