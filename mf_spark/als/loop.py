"""The fit loop: initialize, alternate half-steps, report and checkpoint every iteration.

    for it in range(start, iterations):
        Y = half_step(item_blocks, fixed=X)     # items from users (MLlib's order)
        X = half_step(user_blocks, fixed=Y)     # users from items
        on_iteration(it, factors, stats)        # history, held-out metrics, logging

Factors start from (seed, side, global index) alone (kernels.init), and each row's solve depends only
on its own ratings and the fixed side, so the result does not depend on the number of blocks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pyarrow as pa
from pyspark import InheritableThread
from pyspark.sql import DataFrame

from mf_spark.als.blocks import build_all
from mf_spark.als.checkpoint import CheckpointStore
from mf_spark.als.engines import stream
from mf_spark.als.engines.frames import Frames
from mf_spark.als.engines.held import Held
from mf_spark.als.engines.join import Routed
from mf_spark.als.halfstep import BroadcastJobs, Engine, HalfStepResult, solve_spec
from mf_spark.core import session
from mf_spark.core.config import ModelConfig
from mf_spark.core.errors import FitDiverged, InputError
from mf_spark.core.types import Factors
from mf_spark.data.ready import Keyed, TrainStats, Triples, as_df, session_of, train_stats
from mf_spark.kernels.init import init_factors, mllib_factors
from mf_spark.kernels.solve import SolveSpec
from mf_spark.kernels.topk import positions

log = logging.getLogger("mf_spark")


@dataclass(frozen=True)
class TopLists:
    """Every user's best items by the final factors, the user's training items excluded."""

    counts: np.ndarray  # (n_users,) int32: items in each list (fewer than n only when few are unseen)
    items: np.ndarray  # (n_users, n) int32 item indices, best first (ties to lower items), -1 past counts
    scores: np.ndarray  # (n_users, n) float32, the scores a Scorer predicts for those pairs

    @classmethod
    def from_flat(
        cls, n_users: int, n: int, users: np.ndarray, counts: np.ndarray, items: np.ndarray, scores: np.ndarray
    ) -> "TopLists":
        """From kernels.topk.top_n's layout with the users of each list (in any order)."""
        out_counts = np.zeros(n_users, np.int32)
        out_counts[users] = counts
        dense_items = np.full((n_users, n), -1, np.int32)
        dense_scores = np.full((n_users, n), np.nan, np.float32)
        row = np.repeat(users, counts)
        pos = positions(counts)
        dense_items[row, pos] = items
        dense_scores[row, pos] = scores
        return cls(out_counts, dense_items, dense_scores)


@dataclass
class FitResult:
    factors: Factors
    history: list[dict[str, Any]] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)  # objective after every half-step
    fit_seconds: float = 0.0
    startup_seconds: float = 0.0  # from the call to the first iteration's start (blocks built, stage up)

    n_train: int = 0
    rating_range: tuple[float, float] = (0.0, 0.0)
    top: TopLists | None = None  # with fit(top_n=n), when the fit's tasks could score them
    row_counts: tuple[np.ndarray, np.ndarray] | None = None  # ratings per user and per item, int64
    exchange: str = ""  # what ran the half-steps: stream | jobs | join (after any fallback)


# Called after every iteration with (iteration, factors); returns the history entry's extra keys.
# An entry with "stop": True ends the fit after that iteration (early stopping; the key is dropped).
OnIteration = Callable[[int, Factors], dict[str, Any]]


class SharedBlocks:
    """The blocks of one set of ratings, built once for several fits (a tuning search): each fit on
    them (`fit(blocks=...)`) pays only for its iterations, with its own settings (Engine.spec); the
    engine is the one a fit of `cfg` would start. `close` (or leaving `with`) releases it."""

    def __init__(self, train: DataFrame | Triples | Keyed, n_users: int, n_items: int, cfg: ModelConfig, n_train: int):
        self.train = train
        self.num_blocks = {
            "user": _num_blocks(cfg.num_user_blocks, train),
            "item": _num_blocks(cfg.num_item_blocks, train),
        }
        self.engine = _engine(train, cfg, solve_spec(cfg, 0.0), self.num_blocks, n_users, n_items, n_train)

    def engine_for(self, spec: SolveSpec) -> Engine:
        self.engine.spec = spec
        return self.engine

    def fall_back(self, error: Exception) -> None:
        """After the resident stage failed for good: one Spark job per half-step from now on."""
        log.warning("the resident stage failed for good (%s); going on with one Spark job per half-step", error)
        self.engine.close()
        self.engine = BroadcastJobs(build_all(as_df(self.train), self.num_blocks), self.engine.spec)

    def close(self) -> None:
        self.engine.close()

    def __enter__(self) -> "SharedBlocks":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _warm(spec: SolveSpec, rank: int, top: int) -> None:
    from mf_spark.kernels.solve import warm_up
    from mf_spark.kernels.topk import top_n

    warm_up(spec, rank)
    Y = np.ones((4, rank), np.float32)
    top_n(Y[:2], Y, min(top, 4), np.array([0, 1, 1], np.int64), np.array([3], np.int32))


def warm_up(spark, cfg: ModelConfig, top: int = 10, rdd: bool = False) -> threading.Thread:
    """Start, in the background, the Python workers a fit will run on, with the compiled kernels of
    this configuration loaded in them (a small job, one task per core). `rdd`: the fit's stage will
    be an RDD stage over ratings the driver holds (ready.Triples); else it is a SQL stage (each has
    its own pool of Python workers), the driver waits on Spark meanwhile, and loads its own kernels
    too (with rdd, the driver is busy with the front end: a thread loading kernels would only take
    the GIL from it, so they load where first used).

    A cold process pays for starting its Python workers, importing numpy, pyarrow and numba there
    and loading the kernels from numba's cache; done before the fit, while the driver plans the
    steps ahead of it, that cost leaves the fit's first iteration. Returns the started thread (its
    failure is logged, never raised: the fit loads whatever is still missing itself)."""
    spec = solve_spec(cfg, 0.0)
    n = session.parallelism(spark)

    def body(batches):
        for _ in batches:
            pass
        _warm(spec, cfg.rank, top)
        return iter(())

    def job() -> None:
        try:
            if rdd:
                spark.sparkContext.parallelize(range(n), n).mapPartitions(body).collect()
            else:
                spark.range(n, numPartitions=n).mapInArrow(body, "id long").collect()
        except Exception as e:  # noqa: BLE001 - an optimization only
            log.info("warming the Python workers failed (%s); the fit loads its kernels itself", e)

    def run() -> None:
        workers = InheritableThread(target=job, name="mf_spark-warm-up-workers", daemon=True, session=spark)
        workers.start()
        try:
            if not rdd:
                _warm(spec, cfg.rank, top)  # the driver's kernels meanwhile
        except Exception as e:  # noqa: BLE001 - an optimization only
            log.info("loading the kernels in the driver failed (%s); the fit loads them itself", e)
        workers.join()

    thread = InheritableThread(target=run, name="mf_spark-warm-up", daemon=True, session=spark)
    thread.start()
    return thread


def _reg_term(spec: SolveSpec, counts: np.ndarray, F_: np.ndarray, bias: np.ndarray | None) -> float:
    """The penalty of the side not being solved, with the lambdas its own half-step gives
    (`counts`: the engine's row_counts of that side)."""
    lam = spec.row_reg(spec.counted(counts))
    sq = np.sum(F_.astype(np.float64) ** 2, axis=1)
    if bias is not None:
        sq += spec.bias_reg * bias.astype(np.float64) ** 2
    return float(np.sum(lam * sq))


def _num_blocks(requested: int, train: DataFrame | Triples | Keyed) -> int:
    return requested if requested > 0 else session.parallelism(session_of(train))


def _slots(sc) -> int:
    """Tasks the executors registered now can run at once (a barrier stage needs one slot per task;
    spark.default.parallelism may promise more). 0 when no executor has registered yet."""
    try:
        jsc = sc._jsc.sc()
        return int(jsc.maxNumConcurrentTasks(jsc.resourceProfileManager().defaultResourceProfile()))
    except Exception:  # noqa: BLE001 - an internal API; Spark's default parallelism is the next best guess
        cpus = int(sc.getConf().get("spark.task.cpus", "1") or 1)
        return max(1, sc.defaultParallelism // max(1, cpus))


SECURED = ("spark.authenticate", "spark.network.crypto.enabled", "spark.ssl.enabled")


def _exchange(cfg: ModelConfig, sc) -> str:
    conf = sc.getConf()
    on = lambda key: (conf.get(key, "false") or "").strip().lower() == "true"
    secured = [k for k in SECURED if on(k)]
    if secured:  # the stream's frames are plaintext: Spark's own channels carry the factors
        if cfg.exchange == "stream":
            log.warning(
                "model.exchange = stream, but %s is set and the stream is not encrypted: "
                "using one Spark job per half-step",
                ", ".join(secured),
            )
        return "jobs" if cfg.exchange != "join" else cfg.exchange
    if cfg.exchange != "auto":
        return cfg.exchange
    if on("spark.dynamicAllocation.enabled"):
        return "jobs"  # barrier stages refuse dynamic allocation
    return "stream"


def fit(
    train: DataFrame | Triples | Keyed,
    n_users: int,
    n_items: int,
    cfg: ModelConfig,
    on_iteration: OnIteration | None = None,
    checkpoints: CheckpointStore | None = None,
    resume: bool = False,
    stats: TrainStats | None = None,
    top_n: int = 0,
    initial: Factors | None = None,
    blocks: SharedBlocks | None = None,
    user_ids: pa.Array | None = None,
) -> FitResult:
    """Fit factors to `train` (user_idx, item_idx int in 0..n-1, rating double; or the same held by
    the driver, ready.Triples, which the resident stage takes from the driver directly).

    Ways to run the half-steps, same factors (model.exchange):
      stream  one barrier stage builds the blocks and keeps them in its tasks for the whole fit; the
              driver streams the fixed side to them every half-step (mf_spark.als.engines.stream). Default.
      jobs    blocks built and cached as RDDs (one shuffle), then one broadcast and one Spark job per
              half-step (mf_spark.als.halfstep); chosen by auto under dynamic allocation, or when the
              resident stage cannot start (executors that cannot reach the driver, too few slots).
      frames  blocks in a cached DataFrame, one mapInArrow job per half-step (engines.frames): the
              DataFrame API only; auto's choice on a Spark Connect session for many ratings.
      driver  the ratings collected once, the blocks held and solved in this process (engines.held);
              auto's choice on a Spark Connect session for at most model.driver_max_ratings.
    With `top_n` > 0 and the stream exchange, the resident tasks also score every user's best top_n
    items by the final factors, the user's training items excluded, where the user blocks already
    are (FitResult.top; None with the other exchanges: score them with model.recommend_unseen_idx).
    `initial`: the factors to start from (a warm start, see `warm_factors`) instead of the seeded
    ones; a checkpoint found with `resume` still wins. `blocks`: the engine of these ratings started
    before (SharedBlocks), run with this fit's settings and left open. `user_ids`: the users' sorted
    IDs (index.IdMap.ids), which model.init = mllib / auto draws the initial factors from.
    Performance note: one aggregate (count, mean, range) unless `stats` is given; blocks are built
    once per fit and released before returning.
    """
    started = time.perf_counter()
    with session.row_batched_arrow(session_of(train)), session.single_threaded_blas():
        result = _fit(
            train, n_users, n_items, cfg, on_iteration, checkpoints, resume, stats, top_n, initial, blocks, user_ids
        )
    result.fit_seconds = time.perf_counter() - started
    result.startup_seconds = (result.startup_seconds or time.perf_counter()) - started
    return result


def _fit(
    train: DataFrame | Triples | Keyed,
    n_users: int,
    n_items: int,
    cfg: ModelConfig,
    on_iteration: OnIteration | None,
    checkpoints: CheckpointStore | None,
    resume: bool,
    stats: TrainStats | None,
    top_n: int,
    initial_factors: Factors | None,
    blocks: SharedBlocks | None,
    user_ids: pa.Array | None,
) -> FitResult:
    stats = stats or train_stats(train)
    with_bias = cfg.kind == "explicit" and cfg.biases
    spec = solve_spec(cfg, stats.mean if with_bias else 0.0)
    num_blocks = {"user": _num_blocks(cfg.num_user_blocks, train), "item": _num_blocks(cfg.num_item_blocks, train)}
    # The checkpoint is read before any half-step: a resident stage would hold the slots its read needs.
    initial, start = _start(cfg, spec, stats, n_users, n_items, checkpoints, resume, initial_factors, user_ids)

    def run(engine: Engine, close: bool = True) -> FitResult:
        """The iterations not done yet (after a fallback, from where the failed engine stopped)."""
        initial.exchange = engine.name
        done = initial.history[-1]["iteration"] if initial.history else start
        del initial.losses[2 * (done - start) :]  # a half-step of an unfinished iteration
        with engine if close else contextlib.nullcontext():
            result = _iterate(engine, initial, done, n_users, n_items, cfg, spec, on_iteration, checkpoints)
            if top_n > 0:
                result.top = _top_lists(engine, result.factors, n_users, top_n)
        return result

    if blocks is not None:
        try:
            return run(blocks.engine_for(spec), close=False)
        except stream.ExchangeError as e:
            if blocks.engine.name != "stream" or cfg.exchange == "stream":
                raise
            blocks.fall_back(e)
        return run(blocks.engine_for(spec), close=False)
    engine = _engine(train, cfg, spec, num_blocks, n_users, n_items, stats.n)
    try:
        return run(engine)
    except stream.ExchangeError as e:
        if engine.name != "stream" or cfg.exchange == "stream":
            raise
        log.warning("the resident stage failed for good (%s); going on with one Spark job per half-step", e)
    return run(BroadcastJobs(build_all(as_df(train), num_blocks), spec))


def strategy(cfg: ModelConfig, n_users: int, n_items: int) -> str:
    """broadcast or join (cfg.strategy_for), said in the log when it sets aside the stream exchange the
    config asks for: with strategy = auto, factors over the budget join, and the stream exchange runs
    the broadcast strategy only (strategy = join with exchange = stream is refused by the config)."""
    chosen = cfg.strategy_for(n_users, n_items)
    if chosen == "join" and cfg.exchange == "stream":
        log.warning(
            "model.exchange = stream is not used: the factors exceed model.broadcast_budget_mb = %d, so the "
            "fit goes by the join strategy (one Spark job per half-step)",
            cfg.broadcast_budget_mb,
        )
    return chosen


def _held(cfg: ModelConfig, spark, n_train: int, joined: bool) -> bool:
    """Whether this process holds the blocks: model.exchange = driver, or auto for at most
    model.driver_max_ratings under a local master (whose executors share this machine's cores, so
    the driver's threads solve as fast without a stage to start) or on a Spark Connect session (where
    each half-step of the frames exchange is a round trip to the server), unless the factors go by
    the join strategy (`joined`: too large to hold whole)."""
    if cfg.exchange == "driver":
        return True
    nearby = session.is_connect(spark) or session.is_local(spark)
    return cfg.exchange == "auto" and nearby and n_train <= cfg.driver_max_ratings and not joined


def _engine(
    train: DataFrame | Triples | Keyed,
    cfg: ModelConfig,
    spec: SolveSpec,
    num_blocks: dict[str, int],
    n_users: int,
    n_items: int,
    n_train: int,
) -> Engine:
    """The engine for this fit (model.strategy, model.exchange), started."""
    spark = session_of(train)
    if _held(cfg, spark, n_train, cfg.strategy_for(n_users, n_items) == "join"):
        if isinstance(train, Triples):
            return Held(train.u, train.i, train.r, spec, num_blocks)
        return Held.collect(as_df(train), spec, num_blocks)
    if cfg.exchange == "frames" or session.is_connect(spark):  # the DataFrame API only
        return Frames(as_df(train), spec, num_blocks)
    sc = spark.sparkContext
    if strategy(cfg, n_users, n_items) == "join":
        return Routed(sc, build_all(as_df(train), num_blocks), spec, reseed_every=cfg.checkpoint_interval or 5)
    if _exchange(cfg, sc) == "stream":
        slots = _slots(sc)
        if slots == 0:
            log.warning("no executor slots registered yet; using one Spark job per half-step")
        else:
            stage = _resident(train, min(max(num_blocks.values()), slots), spec, num_blocks, cfg)
            if stage is not None:
                return stage
    return BroadcastJobs(build_all(as_df(train), num_blocks), spec)


def _top_lists(engine: Engine, f: Factors, n_users: int, n: int) -> TopLists | None:
    """Every user's best n unseen items, scored where the engine's blocks are (None when it cannot)."""
    n = min(n, f.Y.shape[0])
    got = engine.top(f.X, (f.mu + f.user_bias) if f.user_bias is not None else None, f.Y, f.item_bias, n)
    return None if got is None else TopLists.from_flat(n_users, n, *got)


def _resident(
    train: DataFrame | Triples | Keyed, n_tasks: int, spec: SolveSpec, num_blocks: dict[str, int], cfg: ModelConfig
) -> "stream.Resident | None":
    """The resident stage over the first input it starts on (stream.resident_inputs, or the driver's
    arrays); None when it starts on none and model.exchange = auto (the caller then runs a job per
    half-step)."""
    maps = (train.users, train.items) if isinstance(train, Keyed) else None
    if isinstance(train, Triples):
        inputs = [train]
    else:
        rows = train if maps is None else train.rows if train.packed is None else train.packed
        inputs = stream.resident_inputs(rows, n_tasks, keyed=maps is not None)
    sc = session_of(train).sparkContext
    for attempt, rows in enumerate(inputs, 1):
        try:
            return stream.Resident(
                rows,
                spec,
                stream.driver_host(sc),
                num_blocks,
                n_tasks=n_tasks,
                deadline=cfg.exchange_timeout_seconds,
                stall_floor=cfg.stall_floor_seconds,
                maps=maps,
            ).start()
        except stream.ExchangeError as e:
            if attempt < len(inputs):
                log.info("resident stage did not start on the ratings as partitioned (%s); shuffling them", e)
            elif cfg.exchange == "stream":
                raise
            else:
                log.warning("resident blocks unavailable, falling back to one Spark job per half-step: %s", e)
    return None


MLLIB_BLOCKS = 10  # MLlib's numUserBlocks default: the layout of its initial factors for num_user_blocks = 0


def mllib_ids(cfg: ModelConfig, user_ids: pa.Array | None) -> np.ndarray | None:
    """The user IDs MLlib's initialization draws from (model.init), None where the fit starts from
    (seed, index): `index`, or `auto` without integer IDs in int's range (or without IDs at all)."""
    if cfg.init == "index" or (user_ids is None and cfg.init == "auto"):
        return None
    if user_ids is None:
        raise ValueError("model.init = 'mllib' needs the user IDs (fit's user_ids)")
    if pa.types.is_integer(user_ids.type):
        ids = user_ids.to_numpy(zero_copy_only=False).astype(np.int64)
        if not ids.size or (ids[0] >= -(2**31) and ids[-1] < 2**31):  # IdMap's IDs are sorted
            return ids
    if cfg.init == "mllib":
        raise InputError(
            f"model.init = 'mllib' draws the initial factors from integer user IDs in int's range, as MLlib "
            f"does; these user IDs are {user_ids.type} beyond it or not integers: use 'auto' or 'index'"
        )
    return None


def seeded_factors(
    cfg: ModelConfig, n_users: int, n_items: int, mu: float = 0.0, user_ids: pa.Array | None = None
) -> Factors:
    """The factors a fit starts from (model.init; `user_ids`, the users' sorted IDs, for MLlib's
    initialization); zero biases with biases. The first half-step solves the items from the users:
    exactly (MLlib's solve) it never reads the items' initial rows, by conjugate gradients it starts
    from them."""
    with_bias = cfg.kind == "explicit" and cfg.biases
    ids = mllib_ids(cfg, user_ids)
    blocks = cfg.num_user_blocks or MLLIB_BLOCKS
    return Factors(
        init_factors(cfg.seed, "user", np.arange(n_users), cfg.rank, cfg.nonnegative)
        if ids is None
        else mllib_factors(cfg.seed, ids, cfg.rank, blocks),
        init_factors(cfg.seed, "item", np.arange(n_items), cfg.rank, cfg.nonnegative),
        np.zeros(n_users, np.float32) if with_bias else None,
        np.zeros(n_items, np.float32) if with_bias else None,
        mu,
    )


def _start(
    cfg: ModelConfig,
    spec: SolveSpec,
    stats: TrainStats,
    n_users: int,
    n_items: int,
    checkpoints: CheckpointStore | None,
    resume: bool,
    initial: Factors | None,
    user_ids: pa.Array | None,
) -> tuple[FitResult, int]:
    """Initial factors (the given ones, else seeded), or the latest checkpoint's with --resume; and the
    iterations already done."""
    factors = (
        seeded_factors(cfg, n_users, n_items, spec.mu, user_ids)
        if initial is None
        else dataclasses.replace(initial, mu=spec.mu)
    )
    if factors.X.shape != (n_users, cfg.rank) or factors.Y.shape != (n_items, cfg.rank):
        raise ValueError(
            f"initial factors {factors.X.shape} x {factors.Y.shape}, the fit needs "
            f"({n_users}, {cfg.rank}) x ({n_items}, {cfg.rank})"
        )
    result = FitResult(factors, n_train=stats.n, rating_range=(stats.lo, stats.hi))
    start = 0
    if resume and checkpoints is not None:
        start = _restore(checkpoints, result, cfg, n_users, n_items)
    return result, start


def _iterate(
    engine: Engine,
    result: FitResult,
    start: int,
    n_users: int,
    n_items: int,
    cfg: ModelConfig,
    spec: SolveSpec,
    on_iteration: OnIteration | None,
    checkpoints: CheckpointStore | None,
) -> FitResult:
    n_u, n_i = engine.row_counts("user", n_users), engine.row_counts("item", n_items)
    result.row_counts = (n_u[0], n_i[0])
    if not result.startup_seconds:  # a clock reading here (once, a fallback goes on); fit() makes it a duration
        result.startup_seconds = time.perf_counter()
    for it in range(start, cfg.iterations):
        t0 = time.perf_counter()
        f = result.factors
        # Items first, from the initial user factors, as MLlib does: this order ends at a lower
        # objective and held-out RMSE than users first.
        items = engine.half_step("item", n_items, f.X, f.user_bias, HalfStepResult(f.Y, f.item_bias, 0, 0, 0))
        # The users' term here is the plain ridge's even with a history prior (its centre needs the
        # ratings, which the driver does not hold); the iteration's loss, after the user half-step,
        # is the prior's (the kernel reports lambda_u |x_u - z_u|^2).
        result.losses.append(items.data_loss + items.reg_loss + _reg_term(spec.on("user"), n_u, f.X, f.user_bias))
        users = engine.half_step("user", n_users, items.factors, items.bias, HalfStepResult(f.X, f.user_bias, 0, 0, 0))
        loss = users.data_loss + users.reg_loss + _reg_term(spec.on("item"), n_i, items.factors, items.bias)
        result.losses.append(loss)
        result.factors = Factors(users.factors, items.factors, users.bias, items.bias, spec.mu)
        _check_finite(it + 1, result.factors, loss, cfg, spec)
        entry = {
            "iteration": it + 1,
            "loss": loss,
            "train_rmse": float(np.sqrt(users.sq_err / result.n_train)) if cfg.kind == "explicit" else None,
            "test_rmse": None,
        }
        if on_iteration is not None:
            if not getattr(on_iteration, "spark_free", False):
                engine.pause()  # resident tasks hold every slot; the callback may run Spark jobs
            entry.update(on_iteration(it + 1, result.factors))
        stop = entry.pop("stop", False)
        converged = _converged(result.history, loss, cfg.tolerance)
        entry["seconds"] = time.perf_counter() - t0
        result.history.append(entry)
        log.info(
            "iteration %d/%d %s",
            it + 1,
            cfg.iterations,
            " ".join(f"{k}={v:.5g}" for k, v in entry.items() if isinstance(v, float)),
        )
        if (
            checkpoints is not None
            and cfg.checkpoint_interval
            and (it + 1) % cfg.checkpoint_interval == 0
            and it + 1 < cfg.iterations
        ):
            checkpoints.save(it + 1, result.factors, {"kind": cfg.kind, "seed": cfg.seed, "history": result.history})
        if stop:
            log.info("stopping after iteration %d: the iteration callback asked to", it + 1)
            break
        if converged:
            log.info(
                "stopping after iteration %d: the objective fell by less than model.tolerance = %g of itself",
                it + 1,
                cfg.tolerance,
            )
            break
    return result


def _converged(history: list[dict[str, Any]], loss: float, tolerance: float) -> bool:
    """Whether an iteration that ends at objective `loss` lowered it by at most `tolerance` of the
    objective after the iteration before (the last entry of `history`, so that a resumed fit stops
    where an uninterrupted one does)."""
    if not tolerance or not history:
        return False
    before = history[-1]["loss"]
    return before - loss <= tolerance * abs(before)


def _check_finite(iteration: int, f: Factors, loss: float, cfg: ModelConfig, spec: SolveSpec) -> None:
    """FitDiverged when iteration `iteration` left a factor, a bias or the objective NaN or infinite:
    such a model must never be published."""
    parts = {"user factors": f.X, "item factors": f.Y, "user biases": f.user_bias, "item biases": f.item_bias}
    bad = [name for name, a in parts.items() if a is not None and not np.isfinite(a).all()]
    if not np.isfinite(loss):
        bad.append("the objective")
    if not bad:
        return
    cause = (
        "ratings too large for float32 arithmetic (their squares overflow): rescale them"
        if spec.kind == "explicit"
        else "confidences 1 + alpha * r too large for float32: lower model.alpha or use model.confidence = log"
    )
    if cfg.reg == 0:
        cause += "; model.reg = 0 leaves rows with few ratings unregularized"
    raise FitDiverged(
        f"the fit diverged at iteration {iteration}: {', '.join(bad)} are not finite numbers; "
        f"likely cause: {cause}. Nothing was published."
    )


def _restore(checkpoints: CheckpointStore, result: FitResult, cfg: ModelConfig, n_users: int, n_items: int) -> int:
    """Load the latest checkpoint into `result`; returns the number of iterations already done."""
    found = checkpoints.latest()
    if found is None:
        log.info("--resume: no checkpoint under %s, starting from iteration 1", checkpoints.root)
        return 0
    state, factors = found
    want = {
        "rank": cfg.rank,
        "n_users": n_users,
        "n_items": n_items,
        "kind": cfg.kind,
        "seed": cfg.seed,
        "biases": result.factors.user_bias is not None,
    }
    diff = {k: (state.get(k), v) for k, v in want.items() if state.get(k) != v}
    if diff:
        raise InputError(
            f"--resume: checkpoint {checkpoints.root} does not match this run: "
            + ", ".join(f"{k} was {a!r}, now {b!r}" for k, (a, b) in diff.items())
        )
    result.factors = factors
    result.history = list(state.get("history", []))
    log.info("--resume: continuing after iteration %d from %s", state["iteration"], checkpoints.root)
    return int(state["iteration"])
