"""One run of the flow, as every job and the estimator go through it:

    read_validate -> split_index -> evaluation_setup -> fit -> evaluate -> recommend_write

`Pipeline(spark, args, clock)` holds what a run is given (the input, the config, the output) and
times each stage as a phase of metrics.json. `train()` is the train job; `tune()` searches on a
validation split of the training data, then goes on exactly as `train()` does with the best settings.
`fit_model` is the one way from prepared ratings to a FactorModel (factors, then day biases), the
estimator's as the jobs'. Stages hand their results down (Loaded, prepare.Ready, Fitted); nothing
here is imported by the modules it calls.
"""

from __future__ import annotations

import contextlib
import logging
import posixpath
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import pyarrow as pa
from pyspark.sql import SparkSession

from mf_spark import __version__, evaluate
from mf_spark.als import days
from mf_spark.als import loop as als
from mf_spark.als.checkpoint import CheckpointStore, fingerprint
from mf_spark.core import config, errors, fs
from mf_spark.core.config import RunConfig, SplitConfig
from mf_spark.data import prepare, read
from mf_spark.data.ready import as_df, session_of
from mf_spark.model import topn
from mf_spark.model.factors import FactorModel, load_model
from mf_spark.model.warm import check_warm_start, warm_factors
from mf_spark.run import cli, compare, report, tables, tracking, tune, write
from mf_spark.run.phases import PhaseClock

log = logging.getLogger("mf_spark")

WARM_UP_WAIT_SECONDS = 60.0


def versions() -> dict:
    import numpy
    import pyspark

    return {
        "mf_spark": __version__,
        "pyspark": pyspark.__version__,
        "numpy": numpy.__version__,
        "pyarrow": pa.__version__,
        "python": sys.version.split()[0],
    }


def fit_model(ready: prepare.Ready, cfg: RunConfig, **fit_args: Any) -> tuple[als.FitResult, FactorModel]:
    """Factors fitted to `ready.train` (als.fit with `fit_args`), then the day biases of those factors:
    the fit and the model every job and the estimator keep."""
    fit = als.fit(
        ready.train,
        ready.users.size,
        ready.items.size,
        cfg.model,
        stats=ready.stats,
        user_ids=ready.users.ids,
        **fit_args,
    )
    day_fit = days.fitter(ready.train, cfg.model)
    day_biases = days.fit(day_fit, fit.factors, cfg.model)
    model = FactorModel.trained(
        cfg.model.kind,
        fit.factors,
        ready.users,
        ready.items,
        ready.stats,
        cfg.to_dict(),
        session_of(ready.train),
        day_biases,
    )
    return fit, model


@dataclass
class Loaded:
    """The input read and validated (the read_validate phase), before it is split."""

    front: Any  # prepare.front_end's, for split_index or tuning_split
    counts: dict[str, int]  # rows read, rejected, dropped, merged, clean
    rejected: Any  # the rejected rows, or None
    input_path: str | None
    previous: FactorModel | None  # --init-model's model (or --init-previous's)
    warm: threading.Thread | None = None  # the background warm-up (als.warm_up)
    init_model: str | None = None  # the folder `previous` was loaded from


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


@dataclass
class Prepared:
    """What the stages after the split work on: the run's settings, its claimed output folder and the
    input, loaded (Loaded) and split and indexed (prepare.Ready)."""

    cfg: RunConfig
    output: str
    lease: write.Lease
    loaded: Loaded
    ready: prepare.Ready


@dataclass
class Fitted:
    """A fit and what its evaluation needs (the evaluation_setup and fit phases)."""

    fit: als.FitResult
    model: FactorModel
    relevant: evaluate.Relevant
    checkpoints: CheckpointStore


class Pipeline:
    """The stages of one run over `args` (cli.TrainArgs: inputs, output, config), each timed by `clock`
    as a phase; `train` and `tune` run them all and return metrics.json's content."""

    def __init__(self, spark: SparkSession, args: cli.TrainArgs, clock: PhaseClock | None = None) -> None:
        self.spark, self.args, self.cfg = spark, args, args.run
        # Without the caller's clock the session's start is not in the total.
        self.clock = (clock or PhaseClock()).attach(spark)

    def train(self) -> dict:
        """The train job: every stage, the output published atomically."""

        def stages(output: str, lease: write.Lease) -> dict:
            with self.clock.phase("read_validate"):
                loaded = self.load()
            with settled(loaded.warm):
                with self.clock.phase("split_index"):
                    ready = loaded.front.split_index()
                metrics = self.fit_publish(Prepared(self.cfg, output, lease, loaded, ready), None, self._dated())
            return self._tables(metrics)

        return self._claimed("train", stages, keep_checkpoints=self.args.resume)

    def _dated(self) -> dict:
        """metrics.json's run date and output tables, when the run has them."""
        args = self.args
        out = {"run_date": args.run_date} if args.run_date else {}
        if args.output_table:
            out["output_tables"] = tables.names(args.output_table)
        return out

    def _tables(self, metrics: dict) -> dict:
        """--output-table: the published outputs as the run date's partition of each table."""
        args = self.args
        if args.output_table:
            with self.clock.phase("tables"):
                tables.write(
                    self.spark,
                    args.output_table,
                    metrics["output"],
                    args.run_date,
                    metrics,
                    self.cfg.output.table_format,
                )
        return metrics

    def _previous_run(self) -> str | None:
        """--init-previous: the output folder of the latest run date before this run's under --output
        that holds a model; None (a cold start, logged) when there is none."""
        root, today = self.args.output_root, self.args.run_date
        dates = sorted(
            n[len("run_date=") :]
            for n in fs.list_names(self.spark, root)
            if cli.RUN_DATE.fullmatch(n[len("run_date=") :]) and n.startswith("run_date=") and n[9:] < today
        )
        for day in reversed(dates):
            folder = posixpath.join(root, f"run_date={day}")
            if fs.exists(self.spark, posixpath.join(folder, "model.json")):
                log.info("--init-previous: warm start from %s", folder)
                return folder
        log.info("--init-previous: no earlier run date with a model under %s: a cold start", root)
        return None

    def tune(self) -> dict:
        """The tune job: the search on a validation split carved from the training data (the test
        split is never looked at), then `train`'s stages with the best settings and the search's
        outputs (tuning/trials.parquet, best.toml, its report section)."""
        cfg = self.cfg
        search = best = None

        def stages(output: str, lease: write.Lease) -> dict:
            nonlocal search, best
            validation = tune.validation_split(cfg)
            with self.clock.phase("read_validate"):
                loaded = self.load(validation)
            with settled(loaded.warm), self.clock.phase("split_index"):
                outer, inner = loaded.front.tuning_split(validation)
            with settled(loaded.warm), self.clock.phase("tune"):
                started = time.perf_counter()
                try:
                    search = tune.search(inner, cfg)
                finally:
                    inner.release()
                seconds = time.perf_counter() - started
            best = tune.best_run(cfg, search)
            trials = tune.trials_table(search)
            summary = tune.summary(cfg, search, inner, seconds)
            header = tune.chosen_header(cfg, search, inner)

            def extra(staging: str, body: dict) -> list:
                fs.write_parquet(self.spark, posixpath.join(staging, "tuning", "trials.parquet"), trials)
                fs.write_text(self.spark, posixpath.join(staging, "best.toml"), config.to_toml(best, header))
                test = (search.metric, body.get(search.metric))
                return [
                    report.tuning_section(
                        trials,
                        f"validation_{search.metric}",
                        search.lower_is_better,
                        search.params,
                        test,
                        tune.offsets_note(search),
                    )
                ]

            metrics = self.fit_publish(
                Prepared(best, output, lease, loaded, outer), extra, {"tuning": summary, **self._dated()}
            )
            return self._tables(metrics)

        metrics = self._claimed("tune", stages, keep_checkpoints=False, track=False)
        by_trial = [(t.number, tune.best_of(t, search.lower_is_better)) for t in search.trials]
        tracking.log_run(
            cfg.tracking,
            "tune",
            best,
            metrics,
            metrics["output"],
            ("metrics.json", "report.html", "model.json", "factors", "best.toml", "tuning"),
            {f"validation_{search.metric}_by_trial": by_trial},
        )
        return metrics

    def _claimed(
        self, job: str, stages: Callable[[str, write.Lease], dict], keep_checkpoints: bool, track: bool = True
    ) -> dict:
        """`stages(output, lease)` with the output folder claimed; a run that does not resume starts
        without the checkpoints of the runs before it."""
        tracking.check(self.cfg.tracking)
        output = write.check_output(self.spark, self.args.output)
        with write.claim(self.spark, output) as lease:
            if not keep_checkpoints:
                CheckpointStore(self.spark, output).clear()
            metrics = stages(output, lease)
        if track:
            tracking.log_run(self.cfg.tracking, job, self.cfg, metrics, output)
        return metrics

    def compare(self, methods: list) -> tuple[pa.Table, str]:
        """The compare job: every method of `methods` (compare.methods) fitted on one split, the table
        published with its report; returns the table and the output folder it was published to."""
        spark, cfg = self.spark, self.cfg
        tracking.check(cfg.tracking)
        output = write.check_output(spark, self.args.output)
        front = self.front()[1]
        loaded = front.load()
        ready = front.split_index()
        table = compare.compare(ready, cfg, methods)
        profile = report.DataProfile.of(ready.train, ready.users.size, ready.items.size, cfg.model.kind)
        counts = {**loaded.counts, "n_train": ready.stats.n, "n_test": ready.heldout.n}
        ready.release()
        text = compare.table_text(table, cfg.eval.k)
        page = report.render(
            f"mf_spark comparison: {len(methods)} methods on {cfg.model.kind} data",
            [report.comparison_section(table, cfg.eval.k), report.data_section(counts, profile)],
        )

        def write_all(staging: str) -> None:
            fs.write_parquet(spark, posixpath.join(staging, "comparison.parquet"), table)
            fs.write_text(spark, posixpath.join(staging, "comparison.txt"), text)
            fs.write_text(spark, posixpath.join(staging, "report.html"), page)

        published = write.publish_with(spark, output, write_all)
        per_method = {
            f"{row['method']}.{k}": v
            for row in table.to_pylist()
            for k, v in row.items()
            if k != "method" and v is not None
        }
        tracking.log_run(
            cfg.tracking,
            "compare",
            cfg,
            {**counts, **per_method},
            published,
            ("comparison.parquet", "comparison.txt", "report.html"),
        )
        return table, published

    def _table_input(self) -> dict:
        args = self.args
        return {"input_table": args.input_table, "where": args.where} if args.input_table else {}

    def front(self, validation: SplitConfig | None = None) -> tuple[str | None, Any]:
        """The input path (None for a given split or a table) and the front end that reads it
        (prepare.front_end, or prepare.TableFront; `validation`: the split tuning_split will be asked
        for)."""
        args = self.args
        if args.input_table:
            return None, prepare.TableFront(self.spark, self.cfg, args.input_table, args.where, validation)
        input_path = None if args.train else (args.input or read.sample_path())
        return input_path, prepare.front_end(
            self.spark,
            self.cfg,
            input=input_path,
            train=args.train,
            test=args.test,
            fmt=args.format,
            validation=validation,
        )

    def load(self, validation: SplitConfig | None = None) -> Loaded:
        """Read and validate the input; check --include/--exclude and --init-model before anything is fitted."""
        spark, args, cfg = self.spark, self.args, self.cfg
        files = (
            ("--include", args.include),
            ("--exclude", args.exclude),
            ("--user-features", args.user_features),
            ("--item-features", args.item_features),
        )
        for flag, path in files:
            if path and not fs.exists(spark, path):  # found out now, not after the fit
                raise errors.InputError(f"{flag} {path}: does not exist")
        init = args.init_model or (self._previous_run() if args.init_previous else None)
        previous = load_model(init, spark) if init else None
        if previous is not None:  # refused before the input is read
            check_warm_start(previous, cfg.model)
        input_path, front = self.front(validation)
        # In the background, counted here.
        warm = als.warm_up(spark, cfg.model, cfg.recommend.top_n, rdd=front.on_driver)
        with settled(warm):
            loaded = front.load()
            errors.fault_point("read")
        return Loaded(front, loaded.counts, loaded.rejected, input_path, previous, warm, init)

    def fit_publish(
        self, run: Prepared, extra: Callable[[str, dict], list] | None = None, more_metrics: dict | None = None
    ) -> dict:
        """Fit `run.ready`, evaluate, recommend and publish the output folder (with its report.html);
        returns metrics.json's content. `extra(staging, metrics)` writes more outputs into the staging
        folder and returns more report sections, and `more_metrics` joins metrics.json (the tuning job's)."""
        ready = run.ready
        log.info(
            "training on %d ratings (%d users x %d items), %d held out (%d cold)",
            ready.stats.n,
            ready.users.size,
            ready.items.size,
            ready.heldout.n,
            ready.heldout.n_cold,
        )
        self._say_rating_range(ready.stats)
        fitted = self._fit(run)
        with self.clock.phase("evaluate"):
            metrics, seen = self._evaluate(run, fitted)
            metrics.update(more_metrics or {})
        with self.clock.phase("recommend_write"):
            self._recommend_write(run, fitted, metrics, seen, extra)
        fitted.checkpoints.clear()
        if seen is not None:
            seen.unpersist()
        ready.release()
        metrics.update(self.clock.report())
        metrics["output"] = run.output
        return metrics

    def _say_rating_range(self, stats) -> None:
        """Explicit ratings with no data.rating_range: the range observed, and a warning when some are
        <= 0 while most are positive (a star scale with stray negatives or zeros, fitted as they are)."""
        if self.cfg.model.kind != "explicit" or self.cfg.data.rating_range is not None:
            return
        log.info(
            "explicit ratings range from %g to %g (data.rating_range unset: none rejected as out of range)",
            stats.lo,
            stats.hi,
        )
        if 0 < stats.n_nonpositive < stats.n / 2:
            log.warning(
                "%d of the %d training ratings are <= 0 (the lowest %g) while most are positive: a negative star "
                "rating? they are fitted as they are; set data.rating_range (e.g. [1, %g]) to reject them",
                stats.n_nonpositive,
                stats.n,
                stats.lo,
                stats.hi,
            )

    def _fit(self, run: Prepared) -> Fitted:
        cfg, loaded, ready = run.cfg, run.loaded, run.ready
        args, explicit = self.args, cfg.model.kind == "explicit"
        users, items, stats, heldout = ready.users, ready.items, ready.stats, ready.heldout
        with self.clock.phase("evaluation_setup"):
            inputs = {"input": loaded.input_path} if loaded.input_path else {"train": args.train, "test": args.test}
            if args.input_table:  # a table has no files to stat: its name and filter, and the counts
                inputs = {}
            if loaded.previous is not None:
                inputs["init_model"] = loaded.init_model
            initial = None if loaded.previous is None else warm_factors(loaded.previous, users, items, cfg.model)
            run_id = fingerprint(
                self.spark,
                cfg,
                inputs,
                {**loaded.counts, "n_train": stats.n, "n_test": heldout.n, **self._table_input()},
                users.ids,
                items.ids,
            )
            checkpoints = CheckpointStore(self.spark, run.output, run_id, guard=run.lease.check)
            relevant = evaluate.relevant_items(heldout, evaluate.relevance_threshold(cfg))
            tracker = None
            if cfg.eval.every_iteration:
                sampled = evaluate.RankingEvaluator(
                    ready.train,
                    evaluate.sample_users(relevant, cfg.eval.history_users),
                    items.size,
                    cfg.eval.k,
                    on_driver=True,
                )
                tracker = evaluate.tracker(
                    heldout, cfg.model.kind, stats.mean, (stats.lo, stats.hi) if explicit else None, sampled
                )
        with self.clock.phase("fit"):
            # The resident tasks score every user's top lists where the training pairs are: the ranking
            # metrics and the recommendations then need no grouping of the pairs and no scoring job.
            fit, model = fit_model(
                ready,
                cfg,
                on_iteration=tracker,
                checkpoints=checkpoints,
                resume=args.resume,
                top_n=max(cfg.recommend.top_n, cfg.eval.k),
                initial=initial,
            )
            for side, path in (("users", args.user_features), ("items", args.item_features)):
                if path:
                    table = read.feature_table(self.spark, path, f"--{side[:-1]}-features")
                    model = model.learn_features(side, table, cfg.model.feature_reg)
        return Fitted(fit, model, relevant, checkpoints)

    def _evaluate(self, run: Prepared, fitted: Fitted) -> tuple[dict, Any]:
        """metrics.json's content but for the phases; and the users' seen lists when they were built."""
        cfg, loaded, ready = run.cfg, run.loaded, run.ready
        fit, model, seen = fitted.fit, fitted.model, None
        if ready.heldout.whole:
            scores = evaluate.error_metrics(model.scorer, ready.heldout)
            if fit.top is not None:
                scores.update(evaluate.ranking_of_top(fit.top, fitted.relevant, ready.items.size, cfg.eval.k))
            else:
                seen = topn.seen_lists(as_df(ready.train)).cache()
                evaluator = evaluate.RankingEvaluator(seen, fitted.relevant, ready.items.size, cfg.eval.k)
                scores.update(evaluator(model.scorer))
                evaluator.close()
        else:  # the driver holds a sample: every held-out row is scored where the tasks keep them
            threshold = evaluate.relevance_threshold(cfg)
            remote = evaluate.InTasks(ready.heldout, ready.users, ready.items, threshold, cfg.eval.k)
            if fit.top is not None:
                recs = evaluate.top_lists(fit.top, cfg.eval.k)
            else:
                seen = topn.seen_lists(as_df(ready.train)).cache()
                recs = remote.lists(seen, model.scorer)
                remote.close()
            scores = remote(model.scorer, recs)
        day_biases = model.days
        metrics = {
            **scores,
            "k": cfg.eval.k,
            "n_train": ready.stats.n,
            "n_test": ready.heldout.n,
            "n_test_cold": ready.heldout.n_cold,
            "n_test_history": ready.heldout.r.size,  # the history's test rows: a sample of users' past eval.driver_rows
            "observed_rating_range": [ready.stats.lo, ready.stats.hi],
            **loaded.counts,
            "n_users": ready.users.size,
            "n_items": ready.items.size,
            "n_user_days": day_biases.size if day_biases is not None else None,
            "fit_seconds": fit.fit_seconds,
            "fit_startup_seconds": fit.startup_seconds,
            "exchange": fit.exchange,
            "history": fit.history,
            "input": loaded.input_path,
            "front_end": ready.front,
            "config": cfg.to_dict(),
            "versions": versions(),
        }
        return metrics, seen

    def _recommend_write(
        self, run: Prepared, fitted: Fitted, metrics: dict, seen: Any, extra: Callable[[str, dict], list] | None
    ) -> None:
        cfg, ready = run.cfg, run.ready
        spark, args, model, fit = self.spark, self.args, fitted.model, fitted.fit
        candidates = model.candidate_mask(
            *(
                read.id_list(spark, path, args.item_col, str(ready.items.ids.type), flag, "item") if path else None
                for flag, path in (("--include", args.include), ("--exclude", args.exclude))
            )
        )
        if fit.top is not None and cfg.recommend.exclude_seen and candidates is None:
            recs = topn.from_top(model, fit.top, cfg.recommend.top_n)
        else:
            recs = topn.recommendations(model, as_df(ready.train), cfg.recommend, seen=seen, candidates=candidates)
        profile = report.DataProfile.of(
            ready.train, ready.users.size, ready.items.size, cfg.model.kind, fit.row_counts, ready.stats
        )

        def more(staging: str, body: dict) -> None:
            # A DataFrame of recommendations is counted from the Parquet just written: counting the
            # lazy frame would score every user a second time.
            written = (
                recs if isinstance(recs, pa.Table) else spark.read.parquet(posixpath.join(staging, "recommendations"))
            )
            recommended = report.recommended_indices(written, model.items)
            sections = extra(staging, body) if extra is not None else []
            page = report.training_report(body, profile, recommended, cfg.recommend.top_n, sections)
            fs.write_text(spark, posixpath.join(staging, "report.html"), page)

        write.publish(
            spark,
            run.output,
            model,
            recs,
            lambda: {**metrics, **self.clock.report()},
            run.loaded.rejected,
            {"versions": metrics["versions"]},
            run.lease,
            more,
        )


def print_summary(metrics: dict) -> None:
    """What a training run prints: where its outputs are and its held-out metric."""
    print(f"outputs: {metrics['output']}")
    if metrics["rmse"] is not None:
        print(f"held-out RMSE: {metrics['rmse']:.4f}")
    if metrics["ndcg_at_k"] is not None:
        print(f"held-out NDCG@{metrics['k']}: {metrics['ndcg_at_k']:.4f}")
