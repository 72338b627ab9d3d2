"""Train a model: read -> validate -> split -> index -> fit -> evaluate -> recommend -> publish.

    spark-submit jobs/train.py --input ratings.csv --output out/ [--config f.toml] [--set k=v ...]
        [--resume] [--init-model yesterday/] [--include in_stock.txt] [--exclude banned.txt]
    mf-spark-train ...                         # the console entry point, the same arguments
    python -m jobs.train                       # demo on the MovieLens sample shipped with pyspark

Exit codes: 0 success; 2 bad arguments, config or input (message on stderr); 1 any other failure.
"""
from __future__ import annotations

import contextlib
import logging
import os
import posixpath
import sys
import threading
from dataclasses import dataclass
from typing import Any, Callable

import pyarrow as pa

if __package__ in (None, ""):   # run as a script (spark-submit jobs/train.py) from a source checkout
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mf_spark import __version__, evaluate
from mf_spark.als import loop as als
from mf_spark.run import cli
from mf_spark.core import errors
from mf_spark.core import fs
from mf_spark.data import prepare
from mf_spark.data import read
from mf_spark.model import recommend
from mf_spark.model.warm import check_warm_start, warm_factors
from mf_spark.run import report
from mf_spark.core import session
from mf_spark.run import tracking
from mf_spark.run import write
from mf_spark.model.factors import load_model
from mf_spark.data.ready import as_df
from mf_spark.als.checkpoint import CheckpointStore, fingerprint
from mf_spark.model.factors import FactorModel
from mf_spark.run.phases import PhaseClock

log = logging.getLogger("mf_spark")

WARM_UP_WAIT_SECONDS = 60.0


def _versions() -> dict:
    import numpy
    import pyarrow
    import pyspark
    return {"mf_spark": __version__, "pyspark": pyspark.__version__, "numpy": numpy.__version__,
            "pyarrow": pyarrow.__version__, "python": sys.version.split()[0]}


def run(spark, args: cli.TrainArgs, clock: PhaseClock | None = None) -> dict:
    """The whole training run; returns metrics.json's content. `clock` times the phases (one is made
    here when the caller has none: then the session's start is not in the total)."""
    cfg = args.run
    tracking.check(cfg.tracking)
    clock = (clock or PhaseClock()).attach(spark)
    output = write.check_output(spark, args.output)
    with write.claim(spark, output) as lease:
        if not args.resume:     # a later --resume must never pick up this run's predecessors' factors
            CheckpointStore(spark, output).clear()
        metrics = _run(spark, args, cfg, output, clock, lease)
    tracking.log_run(cfg.tracking, "train", cfg, metrics, output)
    return metrics


@dataclass
class Loaded:
    """The input read and validated (the read_validate phase), before it is split."""
    front: Any                      # prepare.front_end's, for split_index or tuning_split
    counts: dict[str, int]          # rows read, rejected, dropped, merged, clean
    rejected: Any                   # the rejected rows, or None
    input_path: str | None
    previous: FactorModel | None    # --init-model's model
    warm: threading.Thread | None = None    # the background warm-up (als.warm_up)


def load(spark, args: cli.TrainArgs, cfg) -> Loaded:
    """Read and validate the input; check --include/--exclude and --init-model before anything is fitted."""
    for flag, path in (("--include", args.include), ("--exclude", args.exclude)):
        if path and not fs.exists(spark, path):     # found out now, not after the fit
            raise errors.InputError(f"{flag} {path}: does not exist")
    previous = load_model(args.init_model, spark) if args.init_model else None
    if previous is not None:        # refused before the input is read
        check_warm_start(previous, cfg.model)
    input_path = None if args.train else (args.input or read.sample_path())
    front = prepare.front_end(spark, cfg, input=input_path, train=args.train, test=args.test, fmt=args.format)
    warm = als.warm_up(spark, cfg.model, cfg.recommend.top_n, rdd=front.on_driver)  # in the background: counted here
    with settled(warm):
        loaded = front.load()
        errors.fault_point("read")
    return Loaded(front, loaded.counts, loaded.rejected, input_path, previous, warm)


@contextlib.contextmanager
def settled(warm: threading.Thread | None):
    """On a failure, let the background warm-up job end before the error goes up: its Python
    workers, killed when the process exits, would log Spark errors after the job's own last line."""
    try:
        yield
    except BaseException:
        if warm is not None:
            warm.join(timeout=WARM_UP_WAIT_SECONDS)
        raise


def _run(spark, args: cli.TrainArgs, cfg, output: str, clock: PhaseClock, lease: write.Lease) -> dict:
    with clock.phase("read_validate"):
        loaded = load(spark, args, cfg)
    with settled(loaded.warm):
        with clock.phase("split_index"):
            ready = loaded.front.split_index()
        return fit_publish(spark, args, cfg, output, clock, lease, loaded, ready)


def fit_publish(spark, args: cli.TrainArgs, cfg, output: str, clock: PhaseClock, lease: write.Lease,
                loaded: Loaded, ready: prepare.Ready, extra: Callable[[str, dict], list] | None = None,
                more_metrics: dict | None = None) -> dict:
    """Fit `ready`, evaluate, recommend and publish the output folder (with its report.html);
    returns metrics.json's content. `extra(staging, metrics)` writes more outputs into the staging
    folder and returns more report sections, and `more_metrics` joins metrics.json (the tuning job's)."""
    users, items, train, heldout, stats = ready.users, ready.items, ready.train, ready.heldout, ready.stats
    explicit = cfg.model.kind == "explicit"
    rating_range = (stats.lo, stats.hi) if explicit else None
    counts, previous, input_path = loaded.counts, loaded.previous, loaded.input_path
    log.info("training on %d ratings (%d users x %d items), %d held out (%d cold)", stats.n, users.size,
             items.size, heldout.n, heldout.n_cold)
    with clock.phase("evaluation_setup"):
        inputs = {"input": input_path} if input_path else {"train": args.train, "test": args.test}
        if previous is not None:
            inputs["init_model"] = args.init_model
        initial = None if previous is None else warm_factors(previous, users, items, cfg.model)
        run_id = fingerprint(spark, cfg, inputs, {**counts, "n_train": stats.n, "n_test": heldout.n},
                             users.ids, items.ids)
        checkpoints = CheckpointStore(spark, output, run_id, guard=lease.check)
        relevant = evaluate.relevant_items(heldout, cfg.eval.relevant_threshold if explicit else None)
        tracker = None
        if cfg.eval.every_iteration:
            sampled = evaluate.RankingEvaluator(train, evaluate.sample_users(relevant, cfg.eval.history_users),
                                                items.size, cfg.eval.k, on_driver=True)
            tracker = evaluate.tracker(heldout, cfg.model.kind, stats.mean, rating_range, sampled)
    with clock.phase("fit"):
        # The resident tasks score every user's top lists where the training pairs are: the ranking
        # metrics and the recommendations then need no grouping of the pairs and no scoring job.
        fit = als.fit(train, users.size, items.size, cfg.model, on_iteration=tracker, checkpoints=checkpoints,
                      resume=args.resume, stats=stats, top_n=max(cfg.recommend.top_n, cfg.eval.k),
                      initial=initial)
        day_fit = evaluate.day_fitter(train, cfg.model)
        day_biases = day_fit(fit.factors, cfg.model.day_bias_reg) if day_fit is not None else None
    seen = None
    with clock.phase("evaluate"):
        model = FactorModel.trained(cfg.model.kind, fit.factors, users, items, stats, cfg.to_dict(), spark,
                                    day_biases)
        if fit.top is not None:
            ranking = evaluate.ranking_of_top(fit.top, relevant, items.size, cfg.eval.k)
        else:
            seen = recommend.seen_lists(as_df(train)).cache()
            evaluator = evaluate.RankingEvaluator(seen, relevant, items.size, cfg.eval.k)
            ranking = evaluator(model.scorer)
            evaluator.close()
        metrics = {**evaluate.error_metrics(model.scorer, heldout), **ranking, "k": cfg.eval.k,
                   "n_train": stats.n, "n_test": heldout.n, "n_test_cold": heldout.n_cold,
                   **counts, "n_users": users.size, "n_items": items.size,
                   "n_user_days": day_biases.size if day_biases is not None else None,
                   "fit_seconds": fit.fit_seconds, "fit_startup_seconds": fit.startup_seconds,
                   "exchange": fit.exchange,
                   "history": fit.history,
                   "input": input_path, "front_end": ready.front,
                   "config": cfg.to_dict(), "versions": _versions(), **(more_metrics or {})}
    with clock.phase("recommend_write"):
        candidates = model.candidate_mask(*(read.id_list(spark, path, args.item_col, str(items.ids.type),
                                                          flag, "item") if path else None
                                             for flag, path in (("--include", args.include),
                                                                ("--exclude", args.exclude))))
        if fit.top is not None and cfg.recommend.exclude_seen and candidates is None:
            recs = recommend.from_top(model, fit.top, cfg.recommend.top_n)
        else:
            recs = recommend.top_n(model, as_df(train), cfg.recommend, seen=seen, candidates=candidates)
        profile = report.DataProfile.of(train, users.size, items.size, cfg.model.kind, fit.row_counts)

        def more(staging: str, body: dict) -> None:
            # A DataFrame of recommendations is counted from the Parquet just written: counting the
            # lazy frame would score every user a second time.
            written = recs if isinstance(recs, pa.Table) else spark.read.parquet(posixpath.join(staging, "recommendations"))
            recommended = report.recommended_indices(written, model.items)
            sections = extra(staging, body) if extra is not None else []
            page = report.training_report(body, profile, recommended, cfg.recommend.top_n, sections)
            fs.write_text(spark, posixpath.join(staging, "report.html"), page)
        write.publish(spark, output, model, recs, lambda: {**metrics, **clock.report()}, loaded.rejected,
                      {"versions": metrics["versions"]}, lease, more)
    checkpoints.clear()
    if seen is not None:
        seen.unpersist()
    ready.release()
    metrics.update(clock.report())
    metrics["output"] = output
    return metrics


def print_summary(metrics: dict) -> None:
    """What a training run prints: where its outputs are and its held-out metric."""
    print(f"outputs: {metrics['output']}")
    if metrics["rmse"] is not None:
        print(f"held-out RMSE: {metrics['rmse']:.4f}")
    if metrics["ndcg_at_k"] is not None:
        print(f"held-out NDCG@{metrics['k']}: {metrics['ndcg_at_k']:.4f}")


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
