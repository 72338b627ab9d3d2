"""Run configuration: one frozen dataclass per TOML section, each hyperparameter declared once.

`load(path, sets)` reads `conf/default.toml`-style TOML (parsed with tomllib, never executed), applies
`--set section.key=value` overrides (parsed into the field's declared type), and validates. Every error
is a ConfigError that names the TOML key, the value and what was expected.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

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


@dataclass(frozen=True)
class DataConfig:
    # Column names (CSV header / Parquet) or 0-based positions (headerless TSV, MovieLens ::).
    # "" = auto: common names (userId, user_id, user, ...) or positions 0, 1, 2, 3.
    user_col: str = ""
    item_col: str = ""
    rating_col: str = ""
    timestamp_col: str = ""
    # Largest fraction of input rows that may be rejected before the run fails (exit 2).
    max_bad_fraction: float = 0.01
    # Repeated (user, item) pairs: error | last (latest timestamp, else last read) | mean | sum.
    # "" = by model kind: mean for explicit, sum for implicit.
    duplicates: Literal["", "error", "last", "mean", "sum"] = ""
    # Implicit data: ratings <= 0 are rejected ("reject") or silently dropped but counted ("drop").
    nonpositive: Literal["reject", "drop"] = "reject"
    # Who reads, validates, splits and indexes the input (mf_spark.data.prepare): "driver" (Arrow and numpy
    # in the driver process, no Spark job; the same rows, splits and maps as Spark), "spark", or
    # "auto": the driver under a local master for local files up to front_end_max_mb, else Spark.
    front_end: Literal["auto", "driver", "spark"] = "auto"
    front_end_max_mb: float = 2048.0
    # Explicit data: [lo, hi] the ratings must lie in (e.g. [1, 5]); rows outside are rejected with a
    # reason. None = any finite rating.
    rating_range: tuple[float, float] | None = None
    # Texts (after trimming spaces) that mean "no value" in an ID, rating or timestamp field.
    null_values: tuple[str, ...] = ("", "NULL", "\\N", "null")

    def __post_init__(self) -> None:
        require_choices(self, "data")
        require(
            0.0 <= self.max_bad_fraction <= 1.0, "data.max_bad_fraction", self.max_bad_fraction, "a number in [0, 1]"
        )
        if self.rating_range is not None:
            require(
                self.rating_range[0] <= self.rating_range[1],
                "data.rating_range",
                list(self.rating_range),
                "[lo, hi] with lo <= hi",
            )
        require(self.front_end_max_mb >= 0, "data.front_end_max_mb", self.front_end_max_mb, "a number >= 0")

    def duplicates_policy(self, kind: str) -> str:
        return self.duplicates or ("sum" if kind == "implicit" else "mean")


@dataclass(frozen=True)
class SplitConfig:
    method: Literal["random", "per_user", "temporal"] = "random"
    test_fraction: float = 0.2
    seed: int = 42

    def __post_init__(self) -> None:
        require_choices(self, "split")
        require(
            0.0 < self.test_fraction < 1.0,
            "split.test_fraction",
            self.test_fraction,
            "a number strictly between 0 and 1",
        )


# Rank from which solver = "auto" uses conjugate gradients: below it forming and solving the k x k
# systems costs less than CG's products, from it more, with the same held-out quality at 16 and 24
# (README, "How it trains").
CG_FROM_RANK = 16


@dataclass(frozen=True)
class ModelConfig:
    kind: Literal["explicit", "implicit"] = "explicit"
    rank: int = 10  # latent factors k
    iterations: int = 10  # full ALS iterations (users then items)
    # > 0: stop before `iterations` once an iteration lowers the objective by at most this fraction
    # of it (ALS lowers it every iteration; past convergence the factors hardly move)
    tolerance: float = 0.0
    reg: float = 0.1  # lambda; multiplied by n_u^nu (n_i^nu) when reg_scaling = "count"
    reg_scaling: Literal["count", "none"] = "count"  # count = ALS-WR weighted-lambda (MLlib)
    # nu of the count scaling: 1 = ALS-WR (MLlib), between 0 and 1 the frequency-scaled lambda of
    # iALS (Rendle et al., "Revisiting the performance of iALS", 2021): rows with many ratings are
    # shrunk less than in proportion to their count.
    reg_exponent: float = 1.0
    biases: bool = False  # explicit only: learn mu + b_u + b_i
    # biases: their lambda over the factors' (the same n^nu scaling): a bias is one number fitted to
    # every rating of its row, and shrinks best at another strength than the k factors (LensKit's
    # separate bias damping)
    bias_reg: float = 1.0
    # explicit, with timestamps: > 0 fits after the factors an offset per (user, day), shrunk by this
    # lambda (mf_spark.als.days); 0 = none. A day is timestamp // day_length.
    day_bias_reg: float = 0.0
    day_length: int = 86400  # in the timestamps' unit: 86400 for seconds
    alpha: float = 1.0  # implicit confidence slope
    confidence: Literal["linear", "log"] = "linear"  # 1 + alpha*r  |  1 + alpha*log(1 + r/eps)
    epsilon: float = 1.0  # eps of the log confidence
    target: Literal["preference", "value"] = "preference"  # implicit p_ui: 1, or the observed value
    unobserved_weight: float = 1.0  # w0 (implicit only); 1 = Hu-Koren-Volinsky
    nonnegative: bool = False  # projected non-negative solves
    seed: int = 0  # factor initialization
    num_user_blocks: int = 0  # 0 = Spark default parallelism
    num_item_blocks: int = 0
    strategy: Literal["auto", "broadcast", "join"] = "auto"
    broadcast_budget_mb: int = 2048  # auto uses broadcast while fixed factors fit this
    exchange: Literal["auto", "stream", "jobs"] = "auto"  # resident block tasks | a Spark job per half-step
    # stream: seconds the driver waits for a half-step's replies (or the blocks' building) before it
    # drops the stage as frozen and submits it again
    exchange_timeout_seconds: float = 600.0
    checkpoint_interval: int = 5  # checkpoint factors every N iterations; 0 = never
    # exact: form and factor each row's k x k system; cg: cg_steps conjugate-gradient steps from the
    # previous factors (no k x k system); auto: cg from rank CG_FROM_RANK on, exact below.
    solver: Literal["auto", "exact", "cg"] = "auto"
    cg_steps: int = 3

    def __post_init__(self) -> None:
        require_choices(self, "model")
        require(self.rank >= 1, "model.rank", self.rank, "an integer >= 1")
        for name in (
            "reg",
            "reg_exponent",
            "bias_reg",
            "day_bias_reg",
            "alpha",
            "epsilon",
            "unobserved_weight",
            "tolerance",
        ):
            _finite(f"model.{name}", getattr(self, name))
        require(
            0 < self.exchange_timeout_seconds < float("inf"),
            "model.exchange_timeout_seconds",
            self.exchange_timeout_seconds,
            "a number of seconds > 0",
        )
        require(self.iterations >= 1, "model.iterations", self.iterations, "an integer >= 1")
        require(
            0.0 <= self.tolerance < 1.0, "model.tolerance", self.tolerance, "a number in [0, 1) (0 = never stop early)"
        )
        require(self.reg >= 0.0, "model.reg", self.reg, "a number >= 0")
        require(0.0 <= self.reg_exponent <= 2.0, "model.reg_exponent", self.reg_exponent, "a number in [0, 2]")
        require(self.bias_reg > 0.0, "model.bias_reg", self.bias_reg, "a number > 0")
        require(self.day_bias_reg >= 0.0, "model.day_bias_reg", self.day_bias_reg, "a number >= 0 (0 = no day biases)")
        require(
            self.day_length >= 1,
            "model.day_length",
            self.day_length,
            "an integer >= 1 (a day in the timestamps' unit: 86400 for seconds)",
        )
        require(self.alpha >= 0.0, "model.alpha", self.alpha, "a number >= 0")
        require(self.epsilon > 0.0, "model.epsilon", self.epsilon, "a number > 0")
        require(self.unobserved_weight >= 0.0, "model.unobserved_weight", self.unobserved_weight, "a number >= 0")
        require(self.num_user_blocks >= 0, "model.num_user_blocks", self.num_user_blocks, "an integer >= 0 (0 = auto)")
        require(self.num_item_blocks >= 0, "model.num_item_blocks", self.num_item_blocks, "an integer >= 0 (0 = auto)")
        require(self.broadcast_budget_mb >= 0, "model.broadcast_budget_mb", self.broadcast_budget_mb, "an integer >= 0")
        require(
            self.checkpoint_interval >= 0,
            "model.checkpoint_interval",
            self.checkpoint_interval,
            "an integer >= 0 (0 = never)",
        )
        require(self.cg_steps >= 1, "model.cg_steps", self.cg_steps, "an integer >= 1")

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
    top_n: int = 10
    exclude_seen: bool = True

    def __post_init__(self) -> None:
        require(self.top_n >= 1, "recommend.top_n", self.top_n, "an integer >= 1")


@dataclass(frozen=True)
class EvalConfig:
    k: int = 10  # cut-off of the ranking metrics
    relevant_threshold: float | None = None  # explicit: held-out rating >= this is relevant
    every_iteration: bool = True  # held-out RMSE and NDCG@k in the per-iteration history
    history_users: int = 1000  # users sampled for the per-iteration NDCG@k (final: all)

    def __post_init__(self) -> None:
        require(self.k >= 1, "eval.k", self.k, "an integer >= 1")
        require(self.history_users >= 1, "eval.history_users", self.history_users, "an integer >= 1")


# Model keys the tuning search may vary ([tune.space]); the rest of [model] is how to compute, not what.
TUNABLE = (
    "rank",
    "iterations",
    "reg",
    "reg_scaling",
    "reg_exponent",
    "biases",
    "bias_reg",
    "day_bias_reg",
    "alpha",
    "confidence",
    "epsilon",
    "target",
    "unobserved_weight",
    "nonnegative",
)
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
    """jobs/tune.py's search (mf_spark.run.tune). `space` maps a model key to a list of values, or for a
    number to a range {min, max, log}; keys not in it keep [model]'s value. Empty = the default
    space of the model kind (tune.DEFAULT_SPACES)."""

    method: Literal["halving", "random", "grid"] = "halving"
    trials: int = 0  # settings drawn (random, halving), 0 = the kind's (DEFAULT_TRIALS)
    metric: str = ""  # validation metric; "" = rmse (explicit), ndcg_at_k (implicit)
    validation_fraction: float = 0.2  # share of the training ratings held out for validation
    max_iterations: int = 30  # a trial's iterations at most ([tune.space] iterations: its own)
    patience: int = 3  # a trial stops once its metric has not improved for this many
    eta: int = 3  # halving: the best 1/eta of each rung go on, eta x the iterations
    min_iterations: int = 5  # halving: iterations of the first rung (fewer rank the settings badly)
    validation_users: int = 2000  # users sampled for a ranking metric (every user below this)
    seed: int = 0  # draws of the settings and of the sampled users
    space: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        require_choices(self, "tune")
        require(
            self.metric in ("", *TUNE_METRICS),
            "tune.metric",
            self.metric,
            "one of " + ", ".join(repr(m) for m in TUNE_METRICS) + ' (or "" for the kind\'s default)',
        )
        require(
            0.0 < self.validation_fraction < 1.0,
            "tune.validation_fraction",
            self.validation_fraction,
            "a number strictly between 0 and 1",
        )
        require(self.trials >= 0, "tune.trials", self.trials, "an integer >= 0 (0 = the model kind's default)")
        for name in ("max_iterations", "patience", "min_iterations", "validation_users"):
            require(getattr(self, name) >= 1, f"tune.{name}", getattr(self, name), "an integer >= 1")
        require(self.eta >= 2, "tune.eta", self.eta, "an integer >= 2")
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
    # MLflow tracking URI (file:///path/mlruns, http://host:5000, databricks); "" = no tracking.
    # Needs the mlflow package (pip install 'mf_spark[mlflow]').
    mlflow_uri: str = ""
    experiment: str = "mf_spark"  # MLflow experiment the runs are logged under


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    recommend: RecommendConfig = field(default_factory=RecommendConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    spark: dict[str, str] = field(default_factory=dict)  # passed to SparkSession.builder.config

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "split": SplitConfig,
    "model": ModelConfig,
    "recommend": RecommendConfig,
    "eval": EvalConfig,
    "tune": TuneConfig,
    "tracking": TrackingConfig,
}

DEFAULT_PATH = Path(__file__).resolve().parent.parent / "conf" / "default.toml"


def _finite(key: str, number: float) -> float:
    """No setting is NaN or infinite: such a value would reach the factors and publish a NaN model."""
    require(math.isfinite(number), key, number, "a finite number")
    return number


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
