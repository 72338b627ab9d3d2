"""Train a model: read -> validate -> split -> index -> fit -> evaluate -> recommend -> publish.

    spark-submit jobs/train.py --input ratings.csv --output out/ [--config f.toml] [--set k=v ...]
    python -m jobs.train                       # demo on the MovieLens sample shipped with pyspark

Exit codes: 0 success; 2 bad arguments, config or input (message on stderr); 1 any other failure.
"""
from __future__ import annotations

import logging
import os
import sys

if __package__ in (None, ""):   # run as a script (spark-submit jobs/train.py) from a source checkout
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mf_spark import __version__, als, cli, evaluate, index, read, recommend, session, split, validate, write
from mf_spark.checkpoint import CheckpointStore
from mf_spark.model import FactorModel, item_blocks

log = logging.getLogger("mf_spark")


def _load(spark, path, fmt, run):
    raw = read.ratings(spark, path, fmt, run.data)
    return validate.clean(raw, run.data, run.model.kind)


def _versions() -> dict:
    import numpy
    import pyarrow
    import pyspark
    return {"mf_spark": __version__, "pyspark": pyspark.__version__, "numpy": numpy.__version__,
            "pyarrow": pyarrow.__version__, "python": sys.version.split()[0]}


def run(spark, args: cli.TrainArgs) -> dict:
    """The whole training run; returns metrics.json's content."""
    cfg = args.run
    output = write.check_output(spark, args.output)
    with write.claim(spark, output):
        return _run(spark, args, cfg, output)


def _run(spark, args: cli.TrainArgs, cfg, output: str) -> dict:
    if args.train:
        parts = [_load(spark, p, args.format, cfg) for p in (args.train, args.test)]
        train, test = parts[0].ratings, parts[1].ratings
        counts = {k: parts[0].counts[k] + parts[1].counts[k] for k in parts[0].counts}
        rejected = parts[0].rejected.unionByName(parts[1].rejected) if counts["n_rejected"] else None
        input_path = None
    else:
        input_path = args.input or read.sample_path()
        cleaned = _load(spark, input_path, args.format, cfg)
        # Cached: train and test both derive from it, and reading + validating runs once, not twice.
        ratings = cleaned.ratings.cache()
        train, test = split.split(ratings, cfg.split)
        counts = dict(cleaned.counts)
        rejected = cleaned.rejected if counts["n_rejected"] else None
    train = train.cache()
    enc = index.encode_split(train, test)
    users, items, train_idx = enc.users, enc.items, enc.train_idx
    heldout = evaluate.collect_heldout(enc.test_idx)
    if not args.train:
        ratings.unpersist()
    stats = als.train_stats(train_idx)
    explicit = cfg.model.kind == "explicit"
    rating_range = (stats.lo, stats.hi) if explicit else None
    log.info("training on %d ratings (%d users x %d items), %d held out (%d cold)", stats.n, users.size,
             items.size, heldout.n, heldout.n_cold)
    checkpoints = CheckpointStore(spark, output)
    seen = recommend.seen_lists(train_idx).cache()
    relevant = evaluate.relevant_items(heldout, cfg.eval.relevant_threshold if explicit else None)
    ranking = evaluate.RankingEvaluator(seen, relevant, items.size, cfg.eval.k)
    tracker = None
    if cfg.eval.every_iteration:
        sampled = evaluate.RankingEvaluator(seen, evaluate.sample_users(relevant, cfg.eval.history_users),
                                            items.size, cfg.eval.k, on_driver=True)
        tracker = evaluate.tracker(heldout, cfg.model.kind, stats.mean, rating_range, sampled)
    fit = als.fit(train_idx, users.size, items.size, cfg.model, on_iteration=tracker, checkpoints=checkpoints,
                  resume=args.resume, stats=stats)
    model = FactorModel(cfg.model.kind, fit.factors, users, items, stats.mean, rating_range, cfg.to_dict(),
                        item_blocks=item_blocks(cfg.to_dict(), users.size, items.size, spark))
    recs = recommend.top_n(model, train_idx, cfg.recommend, seen=seen)
    metrics = {**evaluate.error_metrics(model.scorer, heldout), **ranking(model.scorer), "k": cfg.eval.k,
               "n_train": stats.n, "n_test": heldout.n, "n_test_cold": heldout.n_cold,
               **counts, "n_users": users.size, "n_items": items.size,
               "fit_seconds": fit.fit_seconds, "history": fit.history,
               "input": input_path,
               "config": cfg.to_dict(), "versions": _versions()}
    write.publish(spark, output, model, recs, metrics, rejected, {"versions": metrics["versions"]})
    checkpoints.clear()
    ranking.close()
    if tracker is not None:
        sampled.close()
    seen.unpersist()
    train_idx.unpersist()
    train.unpersist()
    metrics["output"] = output
    return metrics


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="mf_spark: %(message)s", stream=sys.stderr)

    def body() -> int:
        args = cli.parse_train(argv)
        metrics = run(session.start("mf_spark-train", args.run.spark), args)
        print(f"outputs: {metrics['output']}")
        if metrics["rmse"] is not None:
            print(f"held-out RMSE: {metrics['rmse']:.4f}")
        if metrics["ndcg_at_k"] is not None:
            print(f"held-out NDCG@{metrics['k']}: {metrics['ndcg_at_k']:.4f}")
        return 0
    return cli.guarded("training", body)


if __name__ == "__main__":
    sys.exit(main())
