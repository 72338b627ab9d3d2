"""Spark MLlib's ALS and mf_spark on the same split, same rank / iterations / regularization, one run.

    python scripts/benchmark.py --input ratings.csv --rank 10 --iterations 10 --reg 0.1 [--repeat 3]
        [--biases] [--sweep-reg 0.05,0.1,0.2] [--sweep-rank 10,20] [--json report.json]

Both models are scored by the same code (mf_spark.evaluate) on the same held-out rows: predictions are
clipped to the training rating range and cold rows get the training mean, for both. MLlib and ours
alternate when --repeat > 1; the median fit time is reported. Prints a table and the ratios ours/MLlib.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from mf_spark import als, evaluate, index, read, session, split, validate  # noqa: E402
from mf_spark.checkpoint import Factors  # noqa: E402
from mf_spark.config import DataConfig, ModelConfig, SplitConfig  # noqa: E402
from mf_spark.model import Scorer  # noqa: E402
from mf_spark.types import ITEM, ITEM_IDX, RATING, USER, USER_IDX  # noqa: E402


def prepare(spark, args):
    data = DataConfig()
    cleaned = validate.clean(read.ratings(spark, args.input, args.format, data), data, args.kind)
    train, test = split.split(cleaned.ratings, SplitConfig(method=args.split, test_fraction=0.2, seed=args.seed))
    train = train.cache()
    users, items = index.fit(train, USER), index.fit(train, ITEM)
    train_idx = (items.encode(users.encode(train, USER, USER_IDX), ITEM, ITEM_IDX)
                 .select(USER_IDX, ITEM_IDX, RATING).cache())
    heldout = evaluate.collect_heldout(items.encode(users.encode(test, USER, USER_IDX), ITEM, ITEM_IDX))
    return train_idx, heldout, users.size, items.size, als.train_stats(train_idx)


def mllib_factors(model, n, side):
    rows = (model.userFactors if side == "user" else model.itemFactors).toArrow()
    ids = rows.column("id").to_numpy()
    F = np.zeros((n, model.rank), dtype=np.float32)
    F[ids] = np.stack(rows.column("features").to_numpy(zero_copy_only=False)).astype(np.float32)
    return F


def run_mllib(spark, train_idx, n_users, n_items, rank, iterations, reg, seed, alpha=None):
    from pyspark.ml.recommendation import ALS
    t0 = time.perf_counter()
    extra = {} if alpha is None else {"implicitPrefs": True, "alpha": alpha}
    model = ALS(rank=rank, maxIter=iterations, regParam=reg, userCol=USER_IDX, itemCol=ITEM_IDX,
                ratingCol=RATING, seed=seed, coldStartStrategy="nan", **extra).fit(train_idx)
    X, Y = mllib_factors(model, n_users, "user"), mllib_factors(model, n_items, "item")   # forces the fit
    return time.perf_counter() - t0, Factors(X, Y, None, None, 0.0)


def run_ours(train_idx, n_users, n_items, cfg, stats):
    res = als.fit(train_idx, n_users, n_items, cfg, stats=stats)
    return res.fit_seconds, res.factors


def rmse(factors, heldout, stats):
    return evaluate.error_metrics(Scorer("explicit", factors, stats.mean, (stats.lo, stats.hi)), heldout)["rmse"]


def floats(text):
    return [float(x) for x in text.split(",") if x]


def implicit_main(spark, args, train_idx, heldout, n_users, n_items, stats) -> dict:
    """Ours (w0 = 1, linear confidence) and MLlib implicitPrefs over the same alpha x reg grid, then
    ours with other w0 and the log confidence at our best (alpha, reg). Same ranking code for both."""
    from mf_spark.recommend import seen_lists
    seen = seen_lists(train_idx).cache()
    ranking = evaluate.RankingEvaluator(seen, evaluate.relevant_items(heldout, None), n_items, 10)
    def score(f):
        return ranking(Scorer("implicit", f, 0.0, None))
    runs = []
    def record(model, t, f, **params):
        m = score(f)
        runs.append({"model": model, **params, "fit_seconds": t, **{k: m[k] for k in evaluate.RANKING_KEYS}})
        r = runs[-1]
        print(f"{model:<6} " + " ".join(f"{k}={v}" for k, v in params.items())
              + f"  ndcg@10={r['ndcg_at_k']:.4f} map@10={r['map_at_k']:.4f} p@10={r['precision_at_k']:.4f}"
              f" r@10={r['recall_at_k']:.4f} fit={t:.2f}s", flush=True)
    for alpha in floats(args.alphas):
        for reg in floats(args.regs):
            for _ in range(args.repeat):
                t, f = run_mllib(spark, train_idx, n_users, n_items, args.rank, args.iterations, reg, args.seed, alpha)
                record("mllib", t, f, alpha=alpha, reg=reg)
                cfg = ModelConfig(kind="implicit", rank=args.rank, iterations=args.iterations, reg=reg, alpha=alpha,
                                  seed=args.seed)
                t, f = run_ours(train_idx, n_users, n_items, cfg, stats)
                record("ours", t, f, alpha=alpha, reg=reg, w0=1.0, confidence="linear")
    best = lambda name: max((r for r in runs if r["model"] == name and r.get("w0", 1.0) == 1.0
                             and r.get("confidence", "linear") == "linear"), key=lambda r: r["ndcg_at_k"])
    b = best("ours")
    for w0 in floats(args.w0s):
        cfg = ModelConfig(kind="implicit", rank=args.rank, iterations=args.iterations, reg=b["reg"], alpha=b["alpha"],
                          unobserved_weight=w0, seed=args.seed)
        t, f = run_ours(train_idx, n_users, n_items, cfg, stats)
        record("ours", t, f, alpha=b["alpha"], reg=b["reg"], w0=w0, confidence="linear")
    for alpha in floats(args.log_alphas):
        cfg = ModelConfig(kind="implicit", rank=args.rank, iterations=args.iterations, reg=b["reg"], alpha=alpha,
                          confidence="log", seed=args.seed)
        t, f = run_ours(train_idx, n_users, n_items, cfg, stats)
        record("ours", t, f, alpha=alpha, reg=b["reg"], w0=1.0, confidence="log")
    bm, bo = best("mllib"), best("ours")
    fit_m = statistics.median(r["fit_seconds"] for r in runs if r["model"] == "mllib")
    fit_o = statistics.median(r["fit_seconds"] for r in runs if r["model"] == "ours" and "w0" in r)
    print(f"best MLlib: alpha={bm['alpha']} reg={bm['reg']} ndcg@10={bm['ndcg_at_k']:.4f}; best ours (w0=1, linear): "
          f"alpha={bo['alpha']} reg={bo['reg']} ndcg@10={bo['ndcg_at_k']:.4f}; median fit s ours/MLlib "
          f"{fit_o:.2f}/{fit_m:.2f} = {fit_o / fit_m:.3f}")
    return {"runs": runs, "best_mllib": bm, "best_ours": bo, "median_fit_ratio": fit_o / fit_m}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", default=None, help="ratings (default: the sample shipped with pyspark)")
    p.add_argument("--format", default="auto")
    p.add_argument("--split", default="random", choices=["random", "per_user", "temporal"])
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--rank", type=int, default=10)
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--reg", type=float, default=0.1)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--biases", action="store_true", help="also fit ours with biases at the same settings")
    p.add_argument("--sweep-reg", default="", help="comma-separated regs for extra runs of ours (biases on)")
    p.add_argument("--sweep-rank", default="", help="comma-separated ranks for the sweep")
    p.add_argument("--json", default=None, help="write the report here")
    p.add_argument("--kind", default="explicit", choices=["explicit", "implicit"])
    p.add_argument("--alphas", default="1,5,20", help="implicit: alpha grid (both models)")
    p.add_argument("--regs", default="0.01,0.05,0.1", help="implicit: reg grid (both models)")
    p.add_argument("--w0s", default="0.01,0.1,0.5", help="implicit: extra w0 runs of ours at our best alpha/reg")
    p.add_argument("--log-alphas", default="", help="implicit: extra log-confidence runs of ours")
    args = p.parse_args(argv)
    args.input = args.input or read.sample_path()
    spark = session.start("mf_spark-benchmark", {"spark.ui.enabled": "false"})
    # MLlib's ALS truncates its lineage every checkpointInterval (10) iterations only when a checkpoint
    # folder is set; without one, long or repeated fits die with StackOverflowError.
    spark.sparkContext.setCheckpointDir(tempfile.mkdtemp(prefix="mf_spark-bench-ckpt-"))
    train_idx, heldout, n_users, n_items, stats = prepare(spark, args)
    print(f"data: {args.input}: {stats.n} train / {heldout.n} test ratings, {n_users} users x {n_items} items")
    if args.kind == "implicit":
        report = implicit_main(spark, args, train_idx, heldout, n_users, n_items, stats)
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(report, fh, indent=2, default=str)
        return 0
    cfg = ModelConfig(rank=args.rank, iterations=args.iterations, reg=args.reg, seed=args.seed)
    times = {"mllib": [], "ours": []}
    result = {}
    for _ in range(args.repeat):      # alternate, so drift in the machine's speed hits both
        t, f = run_mllib(spark, train_idx, n_users, n_items, args.rank, args.iterations, args.reg, args.seed)
        times["mllib"].append(t)
        result["mllib"] = rmse(f, heldout, stats)
        t, f = run_ours(train_idx, n_users, n_items, cfg, stats)
        times["ours"].append(t)
        result["ours"] = rmse(f, heldout, stats)
    report = {"input": args.input, "n_train": stats.n, "n_test": heldout.n, "rank": args.rank,
              "iterations": args.iterations, "reg": args.reg, "runs": []}
    for name in ("mllib", "ours"):
        fit = statistics.median(times[name])
        report["runs"].append({"model": name, "rmse": result[name], "fit_seconds": fit,
                               "seconds_per_iteration": fit / args.iterations, "all_fit_seconds": times[name]})
    report["ratio_fit_seconds"] = report["runs"][1]["fit_seconds"] / report["runs"][0]["fit_seconds"]
    report["rmse_difference"] = result["ours"] - result["mllib"]
    sweeps = []
    if args.biases:
        sweeps.append((args.rank, args.reg, True))
    for r in [int(x) for x in args.sweep_rank.split(",") if x] or [args.rank]:
        for reg in [float(x) for x in args.sweep_reg.split(",") if x]:
            sweeps.append((r, reg, True))
    for r, reg, biases in sweeps:
        c = ModelConfig(rank=r, iterations=args.iterations, reg=reg, biases=biases, seed=args.seed)
        t, f = run_ours(train_idx, n_users, n_items, c, stats)
        report["runs"].append({"model": "ours", "rank": r, "reg": reg, "biases": biases,
                               "rmse": rmse(f, heldout, stats), "fit_seconds": t})
    print(f"{'model':<8}{'rank':>6}{'reg':>8}{'biases':>8}{'RMSE':>9}{'fit s':>9}")
    for run in report["runs"]:
        print(f"{run['model']:<8}{run.get('rank', args.rank):>6}{run.get('reg', args.reg):>8}"
              f"{str(run.get('biases', False)):>8}{run['rmse']:>9.4f}{run['fit_seconds']:>9.2f}")
    print(f"ratio fit seconds ours/MLlib: {report['ratio_fit_seconds']:.3f}; "
          f"RMSE ours - MLlib: {report['rmse_difference']:+.4f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
