"""Run configuration: one frozen dataclass per TOML section, each hyperparameter declared once.

`load(path, sets)` reads `conf/default.toml`-style TOML (parsed with tomllib, never executed), applies
`--set section.key=value` overrides (parsed into the field's declared type), and validates. Every error
is a ConfigError that names the TOML key, the value and what was expected.
"""

from __future__ import annotations

import dataclasses
import json
import math
import textwrap
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from mf_spark.core.errors import ConfigError


def require(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(f"config key {key}: got {value!r}, expected {expected}")


def require_choices(section: Any, name: str) -> None:
    """ConfigError for a Literal field of a config section holding another value: a section built in
    Python (not parsed from TOML, where _coerce checks it) is held to the same choices."""
    for f in dataclasses.fields(section):
        hint = typing.get_type_hints(type(section))[f.name]
        if typing.get_origin(hint) is Literal:
            value = getattr(section, f.name)
            choices = typing.get_args(hint)
            require(
                value in choices, f"{name}.{f.name}", value, "one of " + ", ".join(repr(c) for c in choices if c != "")
            )


def _finite(key: str, number: float) -> float:
    """No setting is NaN or infinite: such a value would reach the factors and publish a NaN model."""
    require(math.isfinite(number), key, number, "a finite number")
    return number


@dataclass(frozen=True)
class Check:
    """The range rule of a setting: `ok(value)` holds for a valid value; `expected` says which are."""

    ok: Callable[[Any], bool]
    expected: str


def at_least(lo: float, what: str = "an integer", note: str = "") -> Check:
    return Check(lambda v: v >= lo, f"{what} >= {lo:g}{note}")


def setting(default: Any, doc: str, check: Check | None = None, finite: bool = False, tunable: bool = False) -> Any:
    """A config key, declared once: its default, its doc (the README's configuration table and the
    estimator's Param docs are made from it) and its rule (`check`; `finite`: no NaN or infinity),
    held on construction whether the section was parsed from TOML or built in Python. `tunable`: a
    model key the tune job may search ([tune.space]): what to fit, not how to compute it."""
    meta = {"doc": doc, "check": check, "finite": finite, "tunable": tunable}
    if isinstance(default, dict):
        return field(default_factory=dict, metadata=meta)
    return field(default=default, metadata=meta)


def doc_of(section: type, name: str) -> str:
    """The declared doc of a config key."""
    return next(f.metadata["doc"] for f in dataclasses.fields(section) if f.name == name)


def check_settings(section: Any, name: str) -> None:
    """ConfigError naming the first key of `section` (a config dataclass, `name` its TOML section)
    whose value breaks its declared choices, finiteness or range."""
    require_choices(section, name)
    fields = dataclasses.fields(section)
    for f in fields:
        if f.metadata.get("finite"):
            _finite(f"{name}.{f.name}", getattr(section, f.name))
    for f in fields:
        check, value = f.metadata.get("check"), getattr(section, f.name)
        if check is not None and value is not None:
            require(check.ok(value), f"{name}.{f.name}", value, check.expected)


@dataclass(frozen=True)
class DataConfig:
    user_col: str = setting(
        "",
        'column of user IDs: a name or a 0-based position; "" = auto (common names such as `userId`, `user_id`, '
        "`user`, else position 0)",
    )
    item_col: str = setting(
        "",
        'column of item IDs: a name or a 0-based position; "" = auto (`movieId`, `item_id`, `item`, ..., else '
        "position 1)",
    )
    rating_col: str = setting(
        "",
        'column of ratings: a name or a 0-based position; "" = auto (`rating`, ..., else position 2; implicit '
        'data without one is an event log, each row 1); "-" = none, an event log (implicit only)',
    )
    timestamp_col: str = setting(
        "",
        'column of timestamps: a name or a 0-based position; "" = auto (`timestamp`, ..., else position 3 when there '
        "is one)",
    )
    max_bad_fraction: float = setting(
        0.01,
        "largest share of rejected rows before the run fails (exit 2)",
        Check(lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]"),
    )
    duplicates: Literal["", "error", "last", "mean", "sum"] = setting(
        "",
        'repeated (user, item): `error`, `last` (latest timestamp, else last read), `mean`, `sum`; "" = `mean` for '
        "explicit, `sum` for implicit",
    )
    nonpositive: Literal["reject", "drop", "negative"] = setting(
        "reject",
        "implicit data: ratings <= 0 are rejected, or `drop`ped (counted), or `negative`: a value < 0 is a "
        "negative preference with confidence 1 + alpha * abs(r) and a 0, which tells nothing, is dropped "
        "(counted), as MLlib reads them",
    )
    front_end: Literal["auto", "driver", "spark"] = setting(
        "auto",
        "where the input is read, validated, split and indexed (the same functions either way): `driver` (in the "
        "driver process, no Spark job), `spark` (in executor tasks, one Spark job: the ratings never pass through "
        "the driver), `auto` (the driver under a local master for local inputs up to `front_end_max_mb`, else "
        "`spark`); an input Arrow cannot read exactly as Spark would goes to Spark SQL's reader (logged)",
    )
    front_end_max_mb: float = setting(
        2048.0, "`auto`: the largest input (MB on disk) the driver reads itself", at_least(0, "a number")
    )
    rating_range: tuple[float, float] | None = setting(
        None,
        "explicit data: `[lo, hi]` the ratings must lie in (e.g. `--set data.rating_range=[1,5]`); ratings outside it "
        "are rejected with a reason; unset = any finite rating",
    )
    null_values: tuple[str, ...] = setting(
        ("", "NULL", "\\N", "null"),
        'field texts (after trimming spaces) that mean "no value" in an ID, rating or timestamp',
    )
    fingerprint: Literal["stat", "content"] = setting(
        "stat",
        "what `--resume` holds the input files to: `stat` (size and modification time) or `content` (also a SHA-256 "
        "of every byte: reads the input once more, and notices an edit that keeps size and time)",
    )

    def __post_init__(self) -> None:
        check_settings(self, "data")
        if self.rating_range is not None:
            require(
                self.rating_range[0] <= self.rating_range[1],
                "data.rating_range",
                list(self.rating_range),
                "[lo, hi] with lo <= hi",
            )

    def duplicates_policy(self, kind: str) -> str:
        return self.duplicates or ("sum" if kind == "implicit" else "mean")


@dataclass(frozen=True)
class SplitConfig:
    method: Literal["random", "per_user", "temporal"] = setting(
        "random",
        "`random`; `per_user` (each user with >= 2 ratings keeps >= 1 in train); `temporal` (each user's latest "
        "ratings held out)",
    )
    test_fraction: float = setting(
        0.2, "share held out, in (0, 1)", Check(lambda v: 0.0 < v < 1.0, "a number strictly between 0 and 1")
    )
    seed: int = setting(42, "the split depends only on (seed, user, item), never on partitioning")

    def __post_init__(self) -> None:
        check_settings(self, "split")


# Rank from which solver = "auto" uses conjugate gradients: below it forming and solving the k x k
# systems costs less than CG's products, from it more, with the same held-out quality at 16 and 24
# (README, "How it trains").
CG_FROM_RANK = 16


@dataclass(frozen=True)
class ModelConfig:
    kind: Literal["explicit", "implicit"] = setting("explicit", "`explicit` ALS; `implicit` weighted ALS")
    rank: int = setting(10, "latent factors k", at_least(1), tunable=True)
    iterations: int = setting(10, "full iterations (users, then items)", at_least(1), tunable=True)
    tolerance: float = setting(
        0.0,
        "`> 0`: stop before `model.iterations` once an iteration lowers the objective by at most this fraction of it "
        "(convergence); 0 runs every iteration",
        Check(lambda v: 0.0 <= v < 1.0, "a number in [0, 1) (0 = never stop early)"),
        finite=True,
    )
    reg: float = setting(
        0.1,
        "lambda; multiplied by n_u^reg_exponent (n_i^reg_exponent) when `reg_scaling` = `count`",
        at_least(0, "a number"),
        finite=True,
        tunable=True,
    )
    reg_scaling: Literal["count", "none"] = setting(
        "count",
        "`count`: lambda x (ratings of the row; implicit: its values > 0, as MLlib counts)^`reg_exponent` "
        "(ALS-WR, as MLlib); `none`: plain lambda",
        tunable=True,
    )
    reg_exponent: float = setting(
        1.0,
        "nu of the count scaling, in [0, 2]: 1 is ALS-WR; below 1, rows with many ratings are shrunk less than in "
        "proportion (the frequency-scaled lambda of iALS, Rendle et al. 2021)",
        Check(lambda v: 0.0 <= v <= 2.0, "a number in [0, 2]"),
        finite=True,
        tunable=True,
    )
    biases: bool = setting(False, "explicit: learn a global mean and user and item biases", tunable=True)
    bias_reg: float = setting(
        1.0,
        "biases: their lambda over the factors' (`reg * n^reg_exponent * bias_reg`); 1 = the same; below 1 fits "
        "rarely rated items' biases more fully: lower RMSE, worse top-N lists (LensKit's separate bias damping)",
        Check(lambda v: v > 0.0, "a number > 0"),
        finite=True,
        tunable=True,
    )
    item_reg_scale: float = setting(
        1.0,
        "the items' ridge over the users': the item half-step solves with lambda x this (the item biases' ridge "
        "too); 1 = the same lambda on both sides, as MLlib",
        Check(lambda v: v > 0.0, "a number > 0"),
        finite=True,
        tunable=True,
    )
    day_bias_reg: float = setting(
        0.0,
        "explicit, with timestamps: `> 0` fits, after the factors, an offset per (user, day): the mean residual of "
        "the user's ratings that day, shrunk by this lambda (`sum / (count + day_bias_reg)`); 0 = none",
        at_least(0, "a number", " (0 = no day biases)"),
        finite=True,
        tunable=True,
    )
    day_factor_reg: float = setting(
        0.0,
        "explicit, with timestamps: `> 0` fits, after the factors and the day biases (if any), a factor offset d "
        "per (user, day) with two or more ratings, the ridge solution (this lambda) of the day's residuals on the "
        "item factors; a prediction for that user and day adds `d . y_i` (Koren's day-specific user factor); "
        "0 = none",
        at_least(0, "a number", " (0 = no day factor offsets)"),
        finite=True,
        tunable=True,
    )
    history_prior: float = setting(
        0.0,
        "explicit: shrink each user's factors toward gamma |N(u)|^-1/2 times the sum of the factors of the items "
        "they rated (gamma = this) instead of toward zero: the rated items, whatever the ratings, set the prior "
        "(SVD++'s implicit term with its item vectors tied to the item factors); 0 = plain ridge, as MLlib",
        at_least(0, "a number", " (0 = plain ridge)"),
        finite=True,
        tunable=True,
    )
    day_length: int = setting(
        86400,
        "a day for `day_bias_reg`, in the timestamps' unit (86400 for seconds, 86400000 for milliseconds)",
        at_least(1, note=" (a day in the timestamps' unit: 86400 for seconds)"),
    )
    alpha: float = setting(
        1.0,
        "implicit: the confidence slope, `1 + alpha*r` (linear) or `1 + alpha*log(1 + r/epsilon)` (log)",
        at_least(0, "a number"),
        finite=True,
        tunable=True,
    )
    confidence: Literal["linear", "log"] = setting(
        "linear",
        "implicit: `linear` confidence `1 + alpha*r`, or `log` `1 + alpha*log(1 + r/epsilon)` for heavy-tailed counts",
        tunable=True,
    )
    epsilon: float = setting(
        1.0,
        "implicit, `log` confidence: the count at which the log starts to bend",
        Check(lambda v: v > 0.0, "a number > 0"),
        finite=True,
        tunable=True,
    )
    target: Literal["preference", "value"] = setting(
        "preference",
        "implicit: the target p_ui of an observed pair, 1 (`preference`) or the observed value (`value`, the WALS "
        "form)",
        tunable=True,
    )
    unobserved_weight: float = setting(
        1.0,
        "implicit: w0, the weight of every unobserved pair; 1 = Hu-Koren-Volinsky (MLlib's implicitPrefs)",
        at_least(0, "a number"),
        finite=True,
        tunable=True,
    )
    nonnegative: bool = setting(False, "non-negative factors (projected solves)", tunable=True)
    feature_reg: float = setting(
        0.0,
        "--user-features / --item-features: lambda of the ridge map from features to factors; 0 = the value of "
        "least leave-one-out error",
        at_least(0, "a number", " (0 = chosen by leave-one-out)"),
        finite=True,
    )
    seed: int = setting(0, "the initial factors' seed (`init`)")
    init: Literal["auto", "mllib", "index"] = setting(
        "auto",
        "the initial factors: `mllib` draws the users' as Spark MLlib's ALS does, from `seed`, the user IDs and "
        "`num_user_blocks` (MLlib's 10 when 0), so that MLlib's settings give MLlib's model for the same input and "
        "seed; `index` from (seed, index) alone; `auto`: `mllib` where the user IDs are integers in int's range (as "
        "MLlib requires), else `index`. Where the fit runs never changes them",
    )
    num_user_blocks: int = setting(0, "user blocks; 0 = Spark's default parallelism", at_least(0, note=" (0 = auto)"))
    num_item_blocks: int = setting(0, "item blocks; 0 = Spark's default parallelism", at_least(0, note=" (0 = auto)"))
    strategy: Literal["auto", "broadcast", "join"] = setting(
        "auto",
        "`broadcast`: every block gets the whole fixed side; `join`: each block gets only the factor rows it rates "
        "(routing tables); `auto`: broadcast while the bigger side's factors fit `broadcast_budget_mb`",
    )
    broadcast_budget_mb: int = setting(
        2048, "factor size (MB) up to which `auto` broadcasts; above it, training and top-N go by blocks", at_least(0)
    )
    exchange: Literal["auto", "stream", "jobs", "frames", "driver"] = setting(
        "auto",
        "broadcast strategy only. `stream`: one barrier stage keeps the blocks in its tasks for the whole fit and the "
        "driver streams factors to them over TCP; `jobs`: one Spark job and broadcast per half-step; `frames`: the "
        "blocks a cached DataFrame, one mapInArrow job per half-step (the DataFrame API only); `driver`: one collect "
        "brings the training ratings to the process that runs the fit (a Spark Connect client too), whose threads "
        "solve every half-step, no Spark job; `auto`: driver for at most `driver_max_ratings` training ratings under "
        "a local master or on a Spark Connect session, else stream unless dynamic allocation is on (frames on Spark "
        "Connect)",
    )
    driver_max_ratings: int = setting(
        2_000_000,
        "the most training ratings `exchange = auto` fits in the driver under a local master or on a Spark Connect "
        "session (there, in the client): 12 bytes each on the way, two sides of 8 while the fit holds them; 0 = never",
        at_least(0, note=" (0 = never)"),
    )
    exchange_timeout_seconds: float = setting(
        600.0,
        "stream: how long the driver waits for a half-step's replies (or for the blocks to be built) before it takes "
        "the stage for frozen, drops it and submits it again; the cap of `stall_floor_seconds`' deadline",
        Check(lambda v: 0 < v < float("inf"), "a number of seconds > 0"),
    )
    stall_floor_seconds: float = setting(
        45.0,
        "stream: once half-steps have been timed, one whose replies take longer than max(this, 20 x the slowest of "
        "the last 8) is a stall (a frozen task): the stage is dropped and submitted again at once, the reason logged",
        Check(lambda v: 0 < v < float("inf"), "a number of seconds > 0"),
    )
    checkpoint_interval: int = setting(
        5, "checkpoint factors every N iterations (for `--resume`); 0 = never", at_least(0, note=" (0 = never)")
    )
    solver: Literal["auto", "exact", "cg"] = setting(
        "auto",
        f"`exact`: form and solve each row's `k x k` system; `cg`: `model.cg_steps` conjugate-gradient steps from the "
        f"current factors; `auto`: `cg` from rank {CG_FROM_RANK} (never with `nonnegative`)",
    )
    cg_steps: int = setting(3, "conjugate-gradient steps per row and half-step", at_least(1))

    def __post_init__(self) -> None:
        check_settings(self, "model")
        require(
            not (self.history_prior and self.nonnegative),
            "model.history_prior",
            self.history_prior,
            "0 with model.nonnegative = true (the prior centres factors that may be negative)",
        )
        require(
            not (self.strategy == "join" and self.exchange == "stream"),
            "model.exchange",
            self.exchange,
            '"auto" or "jobs" with model.strategy = "join" (the stream exchange runs the broadcast strategy)',
        )

    def cg_steps_for(self) -> int:
        """Conjugate-gradient steps per row solve, 0 for exact solves (always exact when nonnegative)."""
        use = self.solver == "cg" or (self.solver == "auto" and self.rank >= CG_FROM_RANK)
        return self.cg_steps if use and not self.nonnegative else 0

    def strategy_for(self, n_users: int, n_items: int) -> str:
        """broadcast while the bigger side's factors (+ bias) fit broadcast_budget_mb, else join (auto)."""
        if self.strategy != "auto":
            return self.strategy
        biggest_mb = max(n_users, n_items) * (self.rank + 1) * 4 / 2**20
        return "join" if biggest_mb > self.broadcast_budget_mb else "broadcast"


@dataclass(frozen=True)
class RecommendConfig:
    top_n: int = setting(10, "recommendations per user", at_least(1))
    exclude_seen: bool = setting(True, "never recommend items the user rated in train")

    def __post_init__(self) -> None:
        check_settings(self, "recommend")


@dataclass(frozen=True)
class EvalConfig:
    k: int = setting(10, "cut-off of the ranking metrics", at_least(1))
    relevant_threshold: float | None = setting(
        None, "explicit: held-out ratings >= this count as relevant; unset = every held-out item"
    )
    every_iteration: bool = setting(True, "held-out RMSE and NDCG@k after every iteration in the history")
    history_users: int = setting(
        1000, "users sampled for the per-iteration NDCG@k (the final metrics use every user)", at_least(1)
    )
    driver_rows: int = setting(
        2_000_000,
        "held-out rows the driver keeps when the executors read the input: past it, the rows of a seeded "
        "sample of users serve the per-iteration history and the tune job's validation, and the final "
        "metrics are computed where every held-out row is",
        at_least(1),
    )

    def __post_init__(self) -> None:
        check_settings(self, "eval")


# Model keys the tuning search may vary ([tune.space]), in their declared order.
TUNABLE = tuple(f.name for f in dataclasses.fields(ModelConfig) if f.metadata["tunable"])

# Trials of a search by model kind when tune.trials is 0. The explicit space has more dimensions
# (biases and their own lambda): fewer trials chose worse models there, while the implicit searches
# chose the same with 27 as with 81 on every data set measured (the commit that set these says which).
DEFAULT_TRIALS = {"explicit": 81, "implicit": 27}
TUNE_METRICS = {
    "rmse": True,
    "mae": True,
    "precision_at_k": False,
    "recall_at_k": False,
    "ndcg_at_k": False,
    "map_at_k": False,
}  # metric -> lower is better


@dataclass(frozen=True)
class TuneConfig:
    """jobs/tune.py's search (mf_spark.run.tune)."""

    method: Literal["halving", "random", "grid"] = setting(
        "halving",
        "`halving` (successive halving: all trials a few iterations, the best third three times as many, ...), "
        "`random`, or `grid` (every combination of the lists)",
    )
    trials: int = setting(
        0,
        "settings drawn (random, halving); 0 = the model kind's: 81 explicit, 27 implicit",
        at_least(0, note=" (0 = the model kind's default)"),
    )
    metric: str = setting(
        "",
        'validation metric: `rmse`, `mae`, `ndcg_at_k`, `map_at_k`, `precision_at_k`, `recall_at_k`; "" = rmse '
        "(explicit), ndcg_at_k (implicit)",
        Check(
            lambda v: v in ("", *TUNE_METRICS),
            "one of " + ", ".join(repr(m) for m in TUNE_METRICS) + ' (or "" for the kind\'s default)',
        ),
    )
    validation_fraction: float = setting(
        0.2,
        "share of the training ratings held out for validation, by `split.method`'s rules",
        Check(lambda v: 0.0 < v < 1.0, "a number strictly between 0 and 1"),
    )
    max_iterations: int = setting(
        30, "a trial's iterations at most (the chosen `model.iterations` is its best iteration)", at_least(1)
    )
    patience: int = setting(
        3, "a trial stops once its validation metric has not improved for this many iterations", at_least(1)
    )
    eta: int = setting(3, "halving: the best 1/eta of each rung go on with eta times the iterations", at_least(2))
    min_iterations: int = setting(
        5, "halving: iterations of the first rung (fewer rank the settings badly)", at_least(1)
    )
    validation_users: int = setting(2000, "users sampled for a ranking metric (every user below this)", at_least(1))
    budget_minutes: float = setting(
        0.0,
        "time budget of the search: once spent, no trial starts or goes on (those begun keep their iterations so "
        "far, and trial 0, `[model]`'s own settings, always runs); the best so far is chosen; 0 = none",
        Check(lambda v: 0.0 <= v < float("inf"), "a number of minutes >= 0 (0 = no budget)"),
    )
    extend_rounds: int = setting(
        2,
        "rounds of trials past the space's edges: a best setting on the edge of its list or range (or a best "
        "iteration at the last one) is tried one step beyond, from the best trial, while that improves; 0 = none",
        at_least(0),
    )
    seeds: int = setting(
        3,
        "model seeds the finalists (the best three trials and trial 0, `[model]`'s own settings) are run with; the "
        "choice and its iterations follow the seeds' mean validation metric; 1 = one seed",
        at_least(1),
    )
    seed: int = setting(0, "draws of the settings and of the sampled users")
    space: dict = setting(
        {},
        "model key -> list of values, or for a number `{min, max, log}`; keys not in it keep `[model]`'s value; empty "
        '= the kind\'s default space (see "Tuning")',
    )

    def __post_init__(self) -> None:
        check_settings(self, "tune")
        require(isinstance(self.space, dict), "tune.space", self.space, "a table of model keys")
        hints = typing.get_type_hints(ModelConfig)
        for name, choice in self.space.items():
            key = f"tune.space.{name}"
            require(name in TUNABLE, key, choice, "a tunable model key: " + ", ".join(TUNABLE))
            hint = hints[name]
            if isinstance(choice, dict):
                require(
                    hint in (int, float) and set(choice) <= {"min", "max", "log"} and {"min", "max"} <= set(choice),
                    key,
                    choice,
                    "a list of values, or for a number a range {min = a, max = b, log = true|false}",
                )
                lo, hi = (_coerce(f"{key}.{b}", hint, choice[b], False) for b in ("min", "max"))
                log_scale = _coerce(f"{key}.log", bool, choice.get("log", False), False)
                require(lo <= hi and (not log_scale or lo > 0), key, choice, "min <= max (and min > 0 for a log range)")
                object.__setattr__(self, "space", {**self.space, name: {"min": lo, "max": hi, "log": log_scale}})
            else:
                require(
                    isinstance(choice, (list, tuple)) and len(choice) >= 1,
                    key,
                    choice,
                    "a non-empty list of values, or a range {min, max, log}",
                )
                values = [_coerce(f"{key}[{n}]", hint, v, False) for n, v in enumerate(choice)]
                for v in values:  # each value must make a valid [model] section on its own
                    ModelConfig(**{name: v})
                object.__setattr__(self, "space", {**self.space, name: values})

    def metric_for(self, kind: str) -> str:
        return self.metric or ("rmse" if kind == "explicit" else "ndcg_at_k")

    def trials_for(self, kind: str) -> int:
        return self.trials or DEFAULT_TRIALS[kind]


@dataclass(frozen=True)
class TrackingConfig:
    mlflow_uri: str = setting(
        "",
        "MLflow tracking URI (`file:///path/mlruns`, `http://host:5000`, `databricks`); set, each run logs its "
        "config, history, metrics, report and model (needs `pip install 'mf_spark[mlflow]'`); \"\" = no tracking",
    )
    experiment: str = setting("mf_spark", "the MLflow experiment the runs are logged under")


@dataclass(frozen=True)
class OutputConfig:
    """Where a run's outputs go besides its output folder (--output-table)."""

    table_format: str = setting(
        "parquet",
        "--output-table: the tables' format when they are created (`parquet`, `orc`, or `delta` / `iceberg` with "
        "their jars on the classpath); an existing table keeps its own",
        Check(lambda v: bool(v.strip()), "a table format name (e.g. parquet)"),
    )


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    recommend: RecommendConfig = field(default_factory=RecommendConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    spark: dict[str, str] = field(default_factory=dict)  # passed to SparkSession.builder.config

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def events(self) -> bool:
        """Whether a file without a rating column is an event log, each row one interaction
        (data.read.ratings' `events`): implicit data."""
        return self.model.kind == "implicit"


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "split": SplitConfig,
    "model": ModelConfig,
    "recommend": RecommendConfig,
    "eval": EvalConfig,
    "tune": TuneConfig,
    "tracking": TrackingConfig,
    "output": OutputConfig,
}

DEFAULT_PATH = Path(__file__).resolve().parent.parent / "conf" / "default.toml"


def _coerce(key: str, hint: Any, value: Any, from_text: bool) -> Any:
    """Turn a TOML value (or, with from_text, a --set string) into the field's declared type."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is Literal:
        text = str(value)
        require(text in args, key, value, "one of " + ", ".join(repr(a) for a in args if a != ""))
        return text
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and type(None) in args:
        if value is None or (from_text and str(value).strip().lower() in ("", "none", "null")):
            return None
        inner = next(a for a in args if a is not type(None))
        return _coerce(key, inner, value, from_text)
    if origin is tuple:
        if from_text and isinstance(value, str):  # --set data.rating_range=[1,5]: a TOML array
            try:
                value = tomllib.loads(f"v = {value}")["v"]
            except tomllib.TOMLDecodeError:
                raise ConfigError(
                    f"config key {key}: got {value!r}, expected a TOML array such as {_example(args)}"
                ) from None
        fixed = Ellipsis not in args
        value = list(value) if isinstance(value, tuple) else value  # from RunConfig.to_dict()
        require(
            isinstance(value, list) and (not fixed or len(value) == len(args)),
            key,
            value,
            f"an array like {_example(args)}",
        )
        kinds = args if fixed else (args[0],) * len(value)
        return tuple(_coerce(f"{key}[{n}]", h, v, False) for n, (h, v) in enumerate(zip(kinds, value)))
    if hint is dict:
        if from_text and isinstance(value, str):  # --set tune.space={rank = [8, 16]}: a TOML inline table
            try:
                value = tomllib.loads(f"v = {value}")["v"]
            except tomllib.TOMLDecodeError:
                raise ConfigError(f"config key {key}: got {value!r}, expected a TOML inline table") from None
        require(isinstance(value, dict), key, value, "a table")
        return dict(value)
    if hint is bool:
        if from_text and isinstance(value, str):
            low = value.strip().lower()
            require(low in ("true", "false"), key, value, "true or false")
            return low == "true"
        require(isinstance(value, bool), key, value, "true or false")
        return value
    if hint is int:
        if from_text and isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                raise ConfigError(f"config key {key}: got {value!r}, expected an integer") from None
        require(isinstance(value, int) and not isinstance(value, bool), key, value, "an integer")
        return value
    if hint is float:
        if from_text and isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                raise ConfigError(f"config key {key}: got {value!r}, expected a number") from None
            return _finite(key, number)
        require(isinstance(value, (int, float)) and not isinstance(value, bool), key, value, "a number")
        return _finite(key, float(value))
    if hint is str:
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)  # a column position written as a bare TOML integer
        require(isinstance(value, str), key, value, "a string")
        return value
    raise ConfigError(f"config key {key}: unsupported type {hint!r}")  # pragma: no cover


def _example(args: tuple) -> str:
    return "[1, 5]" if float in args else '["", "NULL"]'


def _build(section: str, cls: type, values: dict[str, Any], text_keys: set[str]) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for name, value in values.items():
        key = f"{section}.{name}"
        if name not in names:
            raise ConfigError(f"unknown config key {key}; known keys in [{section}]: " + ", ".join(sorted(names)))
        kwargs[name] = _coerce(key, hints[name], value, key in text_keys)
    return cls(**kwargs)


def parse_set(text: str) -> tuple[str, str, str]:
    """'model.rank=32' -> ('model', 'rank', '32')."""
    key, sep, value = text.partition("=")
    section, dot, name = key.strip().partition(".")
    if not sep or not dot or not name:
        raise ConfigError(f"--set {text!r}: expected section.key=value, e.g. model.rank=32")
    return section, name.strip(), value.strip()


def _flatten_spark(body: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """[spark] keys as Spark conf strings; unquoted dotted keys (spark.executor.memory = "4g") are
    nested tables in TOML and are joined back into one dotted key."""
    out: dict[str, str] = {}
    for k, v in body.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten_spark(v, key + "."))
        elif isinstance(v, (list, tuple)):
            raise ConfigError(f"config key spark.{key}: got a list, expected a single value")
        else:
            out[key] = str(v).lower() if isinstance(v, bool) else str(v)
    return out


def from_dict(doc: dict[str, Any], sets: list[str] = (), source: str = "config") -> RunConfig:
    """Build a RunConfig from a parsed TOML document plus --set overrides (later wins)."""
    merged: dict[str, dict[str, Any]] = {}
    for section, body in doc.items():
        if section == "spark":
            if not isinstance(body, dict):
                raise ConfigError(f"{source}: [spark] must be a table of Spark conf keys")
            merged["spark"] = _flatten_spark(body)
            continue
        if section not in SECTIONS:
            raise ConfigError(
                f"{source}: unknown config section [{section}]; known sections: "
                + ", ".join(sorted([*SECTIONS, "spark"]))
            )
        if not isinstance(body, dict):
            raise ConfigError(f"{source}: [{section}] must be a table")
        merged[section] = dict(body)
    text_keys: set[str] = set()
    for item in sets:
        section, name, value = parse_set(item)
        if section == "spark":
            merged.setdefault("spark", {})[name] = value
            continue
        if section not in SECTIONS:
            raise ConfigError(
                f"--set {item!r}: unknown config section {section!r}; known sections: "
                + ", ".join(sorted([*SECTIONS, "spark"]))
            )
        head, dot, tail = name.partition(".")
        if dot and typing.get_type_hints(SECTIONS[section]).get(head) is dict:  # --set tune.space.rank=[8, 16]
            try:
                parsed = tomllib.loads(f"v = {value}")["v"]
            except tomllib.TOMLDecodeError:
                raise ConfigError(
                    f"--set {item!r}: expected a TOML value such as [8, 16] or {{min = 0.01, max = 1, log = true}}"
                ) from None
            body = merged.setdefault(section, {})
            body[head] = {**body.get(head, {}), tail.strip(): parsed}
            continue
        merged.setdefault(section, {})[name] = value
        text_keys.add(f"{section}.{name}")
    parts = {section: _build(section, cls, merged.get(section, {}), text_keys) for section, cls in SECTIONS.items()}
    return RunConfig(**parts, spark=merged.get("spark", {}))


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string: JSON's escapes are TOML's
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no TOML form for {value!r}")


def to_toml(run: RunConfig, header: str = "") -> str:
    """`run` as a TOML document that `load` reads back to an equal RunConfig (unset optional keys,
    None, are left out: absent is how TOML says it)."""
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    for section in SECTIONS:
        lines += ["", f"[{section}]"]
        for name, value in dataclasses.asdict(getattr(run, section)).items():
            if value is not None:
                lines.append(f"{name} = {_toml_value(value)}")
    lines += ["", "[spark]"] + [f"{json.dumps(k)} = {json.dumps(v)}" for k, v in run.spark.items()]
    return "\n".join(lines).lstrip("\n") + "\n"


# The [spark] section is Spark's own keys, declared by Spark: the one row of the table no field makes.
SPARK_ROW = (
    "| `[spark]` | — | any Spark conf key, passed to the session; keys spark-submit sets win over the job's defaults, "
    "and `spark.sql.shuffle.partitions` left unset becomes twice the task slots (at least 8) |"
)


def _shown(value: Any) -> str:
    """A default as the README's table shows it."""
    return "unset" if value is None else f"`{_toml_value(value)}`"


def _default(f: dataclasses.Field) -> Any:
    """A declared key's default (a table's, made by its factory, is empty)."""
    return {} if f.default is dataclasses.MISSING else f.default


def markdown_table() -> str:
    """The README's configuration table, a row per key, made from the declarations."""
    rows = ["| key | default | meaning |", "|---|---|---|"]
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            default = _default(f)
            rows.append(f"| `{section}.{f.name}` | {_shown(default)} | {f.metadata['doc']} |")
    return "\n".join(rows + [SPARK_ROW]) + "\n"


def defaults_toml() -> str:
    """conf/default.toml, made from the declarations: every key at its default, its doc above it (an
    unset key commented out: TOML has no null)."""
    lines = [
        "# mf_spark defaults, made from the declarations in mf_spark/core/config.py by scripts/config_docs.py.",
        "# Every key is optional; --set section.key=value overrides any of them. Parsed (tomllib), never executed.",
    ]
    for section, cls in SECTIONS.items():
        lines += ["", f"[{section}]"]
        for f in dataclasses.fields(cls):
            lines += ["# " + line for line in textwrap.wrap(f.metadata["doc"], 98)]
            default = _default(f)
            lines.append(f"# {f.name} = (unset)" if default is None else f"{f.name} = {_toml_value(default)}")
    lines += [
        "",
        "[spark]",
        "# Any Spark conf key, passed to the session, e.g.:",
        '# "spark.sql.shuffle.partitions" = "16"',
    ]
    return "\n".join(lines) + "\n"


def saved_model_config(config: dict[str, Any], kind: str) -> ModelConfig:
    """The [model] section of a saved model's config (model.json), keys this version does not know
    left out, its kind forced to the model's (a model built in Python may carry no config)."""
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    body = {k: v for k, v in (config or {}).get("model", {}).items() if k in known}
    return _build("model", ModelConfig, {**body, "kind": kind}, set())


def load(path: str | Path | None = None, sets: list[str] = ()) -> RunConfig:
    """Read the TOML at `path`; None gives the built-in defaults (the values of conf/default.toml)."""
    doc: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            with open(path, "rb") as fh:
                doc = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        except OSError as exc:
            raise ConfigError(f"config file {path} cannot be read: {exc}") from None
    return from_dict(doc, list(sets), source)
