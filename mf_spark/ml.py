"""pyspark.ml drop-in: `ALS` (an Estimator) and `ALSModel` (a Model) with MLlib's names and schemas.

    als = ALS(maxIter=5, regParam=0.01, userCol="userId", itemCol="movieId", coldStartStrategy="drop")
    model = als.fit(training)                     # validate -> index -> fit, as the train job does
    model.transform(test)                         # + prediction (double)
    model.recommendForAllUsers(10)                # userId, recommendations array<struct<movieId, rating>>
    model.save("out/als")                         # JSON + Parquet, never pickle; ALSModel.load(...)

Every model hyperparameter is declared once, as a field of config.ModelConfig (or DataConfig): the
Params are generated from the fields (snake_case -> camelCase, default from the dataclass, type
converter from the type hint, doc from the field's declared doc), and values are validated as the jobs
validate a TOML file (config.from_dict), so a bad value raises the jobs' ConfigError. Only the MLlib
names that differ from ours are listed by hand (ALIASES), with MLlib's default where it wins.

`fit` reads the DataFrame as the train job reads a file (validate -> index -> als.fit): by the driver
front end (one collect, then numpy) for a small frame under a local master, else by Spark's stages;
both give the same factors (data.front_end, `frontEnd`): prepare.raw_frame and prepare.frame_ready.

A saved ALSModel folder is also a FactorModel folder (load_model and jobs/recommend.py --model read it):

    model.json, factors/users/, factors/items/   FactorModel.save
    seen/        Parquet user, item: the training pairs (only when fitted with excludeSeen)
    metadata/    pyspark.ml's DefaultParamsWriter JSON: class, uid, params, ID column types
"""

from __future__ import annotations

import dataclasses
import logging
import posixpath
import re
import typing
import uuid
from dataclasses import dataclass, replace
from typing import Any, Callable, Literal

import numpy as np
import pyarrow as pa
from pyspark.ml import Estimator, Model
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.util import (
    DefaultParamsReadable,
    DefaultParamsReader,
    DefaultParamsWriter,
    MLReadable,
    MLReader,
    MLWritable,
    MLWriter,
)
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from mf_spark.als.checkpoint import CheckpointStore, factor_table
from mf_spark.core import config, fs, session
from mf_spark.core.config import DataConfig, ModelConfig, RunConfig
from mf_spark.core.errors import ConfigError, InputError, ModelError
from mf_spark.core.types import ITEM, USER
from mf_spark.data import index, prepare, read
from mf_spark.model.factors import FactorModel, Ids, load_model
from mf_spark.run.pipeline import fit_model

__all__ = ["ALS", "ALSModel"]
log = logging.getLogger("mf_spark")

COLD_START = ("nan", "drop", "mean")


# ---- Params generated from the config dataclasses --------------------------------------------------
def _same(value: Any) -> Any:
    return value


@dataclass(frozen=True)
class _Spec:
    """One pyspark.ml Param: its name, default, type converter and doc; `section`.`field` is the
    config field it sets (None for MLlib's own column and compatibility params), through `to_field`."""

    name: str
    default: Any
    converter: Callable[[Any], Any]
    doc: str
    section: str | None = None
    field: str | None = None
    to_field: Callable[[Any], Any] = _same


_FIELD_DEFAULT = object()


@dataclass(frozen=True)
class _Alias:
    """MLlib's name for a config field it calls differently; `default` where MLlib's wins over ours."""

    field: str
    doc: str
    default: Any = _FIELD_DEFAULT
    to_field: Callable[[Any], Any] = _same
    converter: Callable[[Any], Any] | None = None  # None: from the field's type hint


ALIASES: dict[str, _Alias] = {
    "maxIter": _Alias("iterations", "maximum number of iterations (>= 1)"),
    "regParam": _Alias(
        "reg",
        "regularization parameter lambda (>= 0); multiplied by each row's rating "
        "count when regScaling = 'count' (ALS-WR, as MLlib)",
    ),
    "implicitPrefs": _Alias(
        "kind",
        "whether to use implicit preference (weighted ALS)",
        default=False,
        to_field=lambda v: "implicit" if v else "explicit",
        converter=TypeConverters.toBoolean,
    ),
    # MLlib's 10 wins over our 0 (= Spark's default parallelism) so that code written for MLlib reads
    # back what it expects; the factors do not depend on the block count, so any value >= 0 is accepted.
    "numUserBlocks": _Alias(
        "num_user_blocks",
        "number of user blocks (0 = Spark's default parallelism); the factors do not depend on it",
        default=10,
    ),
    "numItemBlocks": _Alias(
        "num_item_blocks",
        "number of item blocks (0 = Spark's default parallelism); the factors do not depend on it",
        default=10,
    ),
    # MLlib's 10 wins over our 5: it only applies when a checkpoint directory is set, as in MLlib, and
    # ported code may rely on it. MLlib's -1 (never) is our 0.
    "checkpointInterval": _Alias(
        "checkpoint_interval",
        "checkpoint the factors every N iterations (-1 or 0 = "
        "never); used only when SparkContext.setCheckpointDir was called, ignored "
        "otherwise",
        default=10,
        to_field=lambda v: 0 if v == -1 else v,
    ),
}
# Fields of the [data] section that make sense for a DataFrame (the rest name files and columns), with a
# doc where the declared one speaks of files (None: the declared doc).
DATA_FIELDS: dict[str, str | None] = {
    "max_bad_fraction": None,
    "duplicates": None,
    "nonpositive": None,
    "front_end": "who validates and indexes the DataFrame: 'driver' (collected through Arrow, then numpy: one "
    "Spark job), 'spark' (Spark jobs), or 'auto': the driver under a local master when Spark's size "
    "estimate of the frame is at most frontEndMaxMb (a Python RDD's size is unknown: Spark), else Spark",
    "front_end_max_mb": "largest size estimate of the DataFrame, in MB, that frontEnd 'auto' validates on the driver",
}


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


def _converter(hint: Any) -> Callable[[Any], Any]:
    """pyspark.ml's converter for a config field's type (Literal choices are strings)."""
    if hint is bool:
        return TypeConverters.toBoolean
    if hint is int:
        return TypeConverters.toInt
    if hint is float:
        return TypeConverters.toFloat
    if hint is str or typing.get_origin(hint) is Literal:
        return TypeConverters.toString
    raise TypeError(f"no pyspark.ml converter for config type {hint!r}")


def _config_specs(
    cls: type, section: str, only: dict[str, str | None] | None = None, defaults: dict[str, Any] | None = None
) -> list[_Spec]:
    """The Params of a config dataclass's fields (ALIASES give MLlib's names where they differ); `only`:
    the fields to take, with a doc replacing the declared one where one is given; `defaults`: MLlib's
    default where it differs from the field's."""
    hints = typing.get_type_hints(cls)
    docs = {
        **{f.name: f.metadata["doc"] for f in dataclasses.fields(cls)},
        **{k: v for k, v in (only or {}).items() if v},
    }
    aliases = {a.field: (name, a) for name, a in ALIASES.items()} if cls is ModelConfig else {}
    specs = []
    for f in dataclasses.fields(cls):
        if only is not None and f.name not in only:
            continue
        hint, key = hints[f.name], f"config key {section}.{f.name}"
        if f.name in aliases:
            name, a = aliases[f.name]
            default = f.default if a.default is _FIELD_DEFAULT else a.default
            specs.append(
                _Spec(name, default, a.converter or _converter(hint), f"{a.doc} ({key})", section, f.name, a.to_field)
            )
            continue
        choices = typing.get_args(hint) if typing.get_origin(hint) is Literal else ()
        shown = f"one of {', '.join(repr(c) for c in choices)}; " if choices else ""
        doc = f"{docs.get(f.name) or f.name.replace('_', ' ')} ({shown}{key})"
        default = (defaults or {}).get(f.name, f.default)
        specs.append(_Spec(_camel(f.name), default, _converter(hint), doc, section, f.name))
    return specs


# MLlib's seed default is hash(class name), which Python salts per process: ours (0) wins, so that a
# fit is reproducible (with the same seed, model.init = auto gives MLlib's factors).
# MLlib reads an implicit 0 as no information and a negative value as a negative preference.
MODEL_SPECS = _config_specs(ModelConfig, "model") + _config_specs(
    DataConfig, "data", DATA_FIELDS, {"nonpositive": "negative"}
)

# On ALS and ALSModel, as MLlib's _ALSModelParams (plus ours).
SHARED_SPECS = [
    _Spec("userCol", "user", TypeConverters.toString, "column of user IDs: integers, longs or strings"),
    _Spec("itemCol", "item", TypeConverters.toString, "column of item IDs: integers, longs or strings"),
    _Spec(
        "ratingCol",
        "rating",
        TypeConverters.toString,
        "column of ratings ('' = 1.0 for every row); also the rating column of foldInUsers/foldInItems",
    ),
    _Spec(
        "timestampCol",
        "",
        TypeConverters.toString,
        "column of the ratings' timestamps (numbers in the unit of dayLength, or a timestamp type: seconds; "
        "'' = none): with dayBiasReg > 0 the fit learns an offset per user and day, and transform adds it "
        "to the rows of a day the user rated in training",
    ),
    _Spec("predictionCol", "prediction", TypeConverters.toString, "prediction column name (float)"),
    _Spec(
        "coldStartStrategy",
        "nan",
        lambda v: TypeConverters.toString(v).lower(),  # MLlib accepts any case
        "prediction for a user or item the model has not seen: 'nan' (NaN), 'drop' (the row is dropped) or "
        "'mean' (the training mean plus the known side's bias; 0 for implicit models)",
    ),
    _Spec(
        "blockSize",
        4096,
        TypeConverters.toInt,
        "accepted for MLlib compatibility; no effect (top-N scores users in chunks of its own)",
    ),
    _Spec(
        "excludeSeen",
        False,
        TypeConverters.toBoolean,
        "recommendations leave out what each user rated in training (the model then keeps the training "
        "pairs, and saves them)",
    ),
]
ALS_ONLY_SPECS = [
    *[
        _Spec(
            f"{side}FeaturesPath",
            "",
            TypeConverters.toString,
            f"a table of {side} features (Parquet, or CSV with a header: an ID column and numbers, categories or "
            f"'a|b' tags; '' = none): fit learns a map from them to the {side} factors, with which "
            f"ALSModel.place{side.capitalize()}s gives new {side}s factors",
        )
        for side in ("user", "item")
    ],
    _Spec(
        "intermediateStorageLevel",
        "MEMORY_AND_DISK",
        TypeConverters.toString,
        "accepted for MLlib compatibility; no effect (the factors live in the driver)",
    ),
    _Spec(
        "finalStorageLevel",
        "MEMORY_AND_DISK",
        TypeConverters.toString,
        "accepted for MLlib compatibility; no effect (the factors live in the driver)",
    ),
]


def _declare(*specs: _Spec):
    """Class decorator: a Param, a getX and a setX (returning self) for every spec, and the defaults."""

    def accessors(name: str):
        def get(self):
            return self.getOrDefault(name)

        def put(self, value):
            return self._set(**{name: value})

        cap = name[0].upper() + name[1:]
        get.__name__, put.__name__ = f"get{cap}", f"set{cap}"
        get.__doc__, put.__doc__ = f"Gets the value of {name} or its default.", f"Sets the value of {name}."
        return get, put

    def decorate(cls):
        for s in specs:
            setattr(cls, s.name, Param(Params._dummy(), s.name, s.doc, typeConverter=s.converter))
            get, put = accessors(s.name)
            setattr(cls, get.__name__, get)
            setattr(cls, put.__name__, put)
        cls._specs = tuple(getattr(cls, "_specs", ())) + specs
        return cls

    return decorate


@_declare(*SHARED_SPECS)
class _SharedParams(Params):
    """Params of ALS and ALSModel: column names, cold-start strategy, excludeSeen."""

    _specs: tuple[_Spec, ...]

    def __init__(self) -> None:
        super().__init__()
        self._setDefault(**{s.name: s.default for s in self._specs})

    def setParams(self, **kwargs: Any):
        """Set any params by name (as the constructor does)."""
        known = {s.name for s in self._specs}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise TypeError(
                f"{type(self).__name__}: unknown param(s) {', '.join(unknown)}; params are " + ", ".join(sorted(known))
            )
        for name in [k for k, v in kwargs.items() if v is None]:  # None leaves a param at its default, as in MLlib
            self.clear(getattr(self, name))
            del kwargs[name]
        return self._set(**kwargs)

    def _set(self, **kwargs: Any):
        super()._set(**kwargs)
        if all(self.isDefined(s.name) for s in self._specs):  # not midway through copy()'s copying
            self._check()
        return self

    def _check(self) -> None:
        """ConfigError for a bad value: at set time, and again at fit and transform time (Params.set,
        which pyspark's loaders use, skips _set)."""
        strategy = self.getOrDefault("coldStartStrategy")
        if strategy not in COLD_START:
            raise ConfigError(
                f"param coldStartStrategy: got {strategy!r}, expected one of " + ", ".join(repr(s) for s in COLD_START)
            )


@_declare(*ALS_ONLY_SPECS, *MODEL_SPECS)
class _ALSParams(_SharedParams):
    """Params of ALS: the shared ones plus the model hyperparameters (generated from the config)."""

    def _check(self) -> None:
        super()._check()
        self.run_config()

    def run_config(self) -> RunConfig:
        """The RunConfig these params describe (their model and data sections), built by config.from_dict
        as the jobs build a TOML file's: a bad value raises the jobs' ConfigError, here naming the
        param too."""
        doc: dict[str, dict[str, Any]] = {"model": {}, "data": {}}
        for s in MODEL_SPECS:
            doc[s.section][s.field] = s.to_field(self.getOrDefault(s.name))
        try:
            return config.from_dict(doc, source="ALS params")
        except ConfigError as exc:
            m = re.search(r"config key (\w+)\.(\w+)", str(exc))
            name = next((s.name for s in MODEL_SPECS if m and (s.section, s.field) == m.groups()), None)
            raise ConfigError(f"param {name}: {exc}" if name else str(exc)) from None


# ---- fitting -----------------------------------------------------------------------------------------
_col = prepare.exact_column


def _require_columns(df: DataFrame, where: str, cols: dict[str, str]) -> None:
    """InputError naming the param and the column when `df` lacks one of `cols` (param -> column)."""
    for param, col in cols.items():
        if col not in df.columns:
            raise InputError(f"{where}: column {col!r} ({param}) is missing; columns are {df.columns}")


CHECKPOINT_DIR_KEY = "spark.checkpoint.dir"


def _checkpoint_store(spark: SparkSession, cfg: ModelConfig) -> CheckpointStore | None:
    """MLlib's rule: checkpoints only under SparkContext's checkpoint directory, when one is set (a
    fresh folder per fit, removed after it); None otherwise. Our factors live in the driver, so there
    is no lineage to cut: the checkpoints only cost their writes. A Spark Connect client has no
    SparkContext: there the folder is the session's spark.checkpoint.dir, when it is set."""
    if session.is_connect(spark):
        folder = spark.conf.get(CHECKPOINT_DIR_KEY, None)
    else:
        folder = spark.sparkContext.getCheckpointDir()
    if not folder or not cfg.checkpoint_interval:
        return None
    return CheckpointStore(spark, posixpath.join(folder, f"mf_spark-als-{uuid.uuid4().hex}"))


class ALS(Estimator, _ALSParams, DefaultParamsReadable, MLWritable):
    """Alternating least squares (explicit, or weighted ALS with implicitPrefs) with MLlib's Params.

    `fit` validates and de-duplicates the rows as the train job does (rows with a missing ID or a
    bad rating are rejected; more than maxBadFraction of them is an InputError), maps IDs of any type
    to dense indices and fits on every row given (no split). checkpointInterval applies only when
    `spark.sparkContext.setCheckpointDir` was called, as in MLlib.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        self.setParams(**kwargs)

    def setNumBlocks(self, value: int) -> "ALS":
        """Sets both numUserBlocks and numItemBlocks (as MLlib's)."""
        return self._set(numUserBlocks=value, numItemBlocks=value)

    def _fit(self, dataset: DataFrame) -> "ALSModel":
        self._check()
        session.check_worker_python(dataset.sparkSession)
        run = self.run_config()
        user, item, rating, ts = self.getUserCol(), self.getItemCol(), self.getRatingCol(), self.getTimestampCol()
        _require_columns(
            dataset,
            "ALS.fit",
            {
                "userCol": user,
                "itemCol": item,
                **({"ratingCol": rating} if rating else {}),
                **({"timestampCol": ts} if ts else {}),
            },
        )
        ready, pairs = prepare.frame_ready(
            prepare.raw_frame(dataset, user, item, rating, ts), run, self.getExcludeSeen()
        )
        store = _checkpoint_store(dataset.sparkSession, run.model)
        try:
            model = fit_model(ready, run, checkpoints=store)[1]
        finally:
            ready.release()
            if store is not None:
                store.clear()
        for side in ("user", "item"):
            path = self.getOrDefault(f"{side}FeaturesPath")
            if path:
                table = read.feature_table(dataset.sparkSession, path, f"param {side}FeaturesPath")
                model = model.learn_features(f"{side}s", table, run.model.feature_reg)
        return self._copyValues(ALSModel(model, pairs))

    def write(self) -> MLWriter:
        """A writer of the params as pyspark.ml's metadata JSON (ALS.load reads it back)."""
        return _Writer(self, lambda instance, path, spark: DefaultParamsWriter.saveMetadata(instance, path, spark))


# ---- the model ---------------------------------------------------------------------------------------
def _grouped(recs: DataFrame, key_col: str, other_col: str, key_type: str, other_type: str) -> DataFrame:
    """FactorModel.recommend's rows (user, rank, item, score) as MLlib's
    [key_col, recommendations: array<struct<other_col, rating: float>>], best first.

    Performance note: one shuffle (the group by key).
    """
    entry = F.struct(
        F.col("rank").alias("_rank"),
        F.col(ITEM).cast(other_type).alias("_other"),
        F.col("score").cast("float").alias("rating"),
    )
    # The key is never null and the list never empty; declared as MLlib declares them (a non-null key,
    # a nullable list of nullable entries), so that schemas compare equal, nullability included.
    never_null = F.lit("" if key_type == "string" else 0).cast(key_type)
    key = F.coalesce(F.col(USER).cast(key_type), never_null).alias(key_col)
    lists = recs.groupBy(key).agg(F.array_sort(F.collect_list(entry)).alias("_recs"))
    best = F.transform(  # when(): conditions that always hold, but not constants (those fold away)
        "_recs",
        lambda e: F.when(e["_rank"] > 0, F.struct(e["_other"].alias(other_col), e["rating"].alias("rating"))),
    )
    return lists.select(_col(key_col), F.when(F.size("_recs") > 0, best).alias("recommendations"))


def _int_ids(col: str, where: str) -> Column:
    """Numeric IDs as int, as MLlib gives them; a value that is not a whole number in int's range
    fails the query, naming it (MLlib refuses those too)."""
    c = _col(col)
    whole = (c >= np.iinfo(np.int32).min) & (c <= np.iinfo(np.int32).max) & (c == F.floor(c))
    message = F.concat(F.lit(f"{where}: "), c.cast("string"), F.lit(" is not a whole number in int's range"))
    return F.when(c.isNull() | whole, c.cast("int")).otherwise(F.raise_error(message))


def _renamed(df: DataFrame, col: str, to: str, where: str, param: str) -> DataFrame:
    _require_columns(df, where, {param: col})
    return df.select(_col(col).alias(to))


def _candidates(ids: Ids, col: str, to: str, where: str, param: str) -> Ids:
    """include/exclude: a DataFrame's `col` renamed to what FactorModel.recommend reads; lists as given."""
    return _renamed(ids, col, to, where, param) if isinstance(ids, DataFrame) else ids


class ALSModel(Model, _SharedParams, MLReadable, MLWritable):
    """A fitted model: predictions (`transform`), top-N lists, factors, fold-in, save and load.

    Wraps a FactorModel (`factorModel`); outputs carry the IDs in the type of the columns it was
    fitted on. `ALSModel.fromFactorModel(load_model("out/"))` wraps a train job's output.
    """

    def __init__(self, model: FactorModel | None = None, seen: DataFrame | None = None) -> None:
        super().__init__()
        # MLlib never clips a prediction: a pair scores the same in transform and in recommendForAllUsers.
        self._model = (
            model if model is None or model.rating_range is None else replace(model, rating_range=None, _bc=None)
        )
        self._seen = seen  # user, item: the training pairs (excludeSeen)
        self._id_types = {} if model is None else {USER: _map_type(model.users), ITEM: _map_type(model.items)}

    @classmethod
    def fromFactorModel(cls, model: FactorModel, seen: DataFrame | None = None, **params: Any) -> "ALSModel":
        """An ALSModel over a FactorModel (e.g. `load_model` of a train job's output); `seen`: user,
        item pairs that excludeSeen leaves out."""
        return cls(model, seen).setParams(**params)

    # ---- what MLlib's model has ------------------------------------------------------------------
    @property
    def factorModel(self) -> FactorModel:
        if self._model is None:
            raise ModelError("this ALSModel holds no factors (make it with ALS.fit or ALSModel.load)")
        return self._model

    @property
    def rank(self) -> int:
        return self.factorModel.rank

    @property
    def userFactors(self) -> DataFrame:
        """id (the user column's type), features array<float>, and bias float for models with biases."""
        f = self.factorModel.factors
        return self._factors(self.factorModel.users.ids, f.X, f.user_bias, self._id_types[USER])

    @property
    def itemFactors(self) -> DataFrame:
        """id (the item column's type), features array<float>, and bias float for models with biases."""
        f = self.factorModel.factors
        return self._factors(self.factorModel.items.ids, f.Y, f.item_bias, self._id_types[ITEM])

    @staticmethod
    def _factors(ids: pa.Array, factors: np.ndarray, bias: np.ndarray | None, id_type: str) -> DataFrame:
        """A factor table (made on the driver, no Spark job) in MLlib's column names and nullability."""
        table = factor_table(ids, factors, bias)
        exact = {"id": pa.field("id", table.schema.field("id").type, nullable=False)}
        exact["factors"] = pa.field("factors", pa.large_list(pa.field("item", pa.float32(), nullable=False)))
        table = table.cast(pa.schema([exact.get(f.name, f) for f in table.schema]))
        df = SparkSession.active().createDataFrame(table)
        return df.select(
            F.col("id").cast(id_type).alias("id"),
            F.col("factors").alias("features"),
            *([F.col("bias")] if bias is not None else []),
        )

    def _transform(self, dataset: DataFrame) -> DataFrame:
        """`dataset` plus predictionCol (float, as MLlib's; never clipped, so a pair scores as in the
        recommendations) from FactorModel.predict. Rows whose user or item the model does not know get NaN ('nan'), are
        dropped ('drop') or get FactorModel's cold prediction ('mean').

        Performance note: two broadcast joins with the ID maps (four with 'nan' or 'drop', which look
        the IDs up to find the unknown ones), one broadcast of the factors; no shuffle.
        """
        self._check()
        user, item, out = self.getUserCol(), self.getItemCol(), self.getPredictionCol()
        _require_columns(dataset, "ALSModel.transform", {"userCol": user, "itemCol": item})
        m, strategy = self.factorModel, self.getColdStartStrategy()
        ts = self.getTimestampCol() if m.days is not None and self.getTimestampCol() in dataset.columns else None

        def as_float(df: DataFrame) -> DataFrame:  # MLlib's types: a float prediction (never null), int IDs
            nan = F.lit(float("nan")).cast("float")
            df = df.withColumn(out, F.coalesce(_col(out).cast("float"), nan))
            for side, col, param in ((USER, user, "userCol"), (ITEM, item, "itemCol")):
                kind = df.schema[col].dataType
                if (
                    self._id_types[side] == "int"
                    and isinstance(kind, T.NumericType)
                    and not isinstance(kind, T.IntegerType)
                ):
                    df = df.withColumn(col, _int_ids(col, f"ALSModel.transform: {param} {col!r}"))
            return df

        if strategy == "mean":
            return as_float(m.predict(dataset, user, item, out, ts))
        flags = ("_mf_known_user", "_mf_known_item")
        looked_up = m.items.encode(m.users.encode(dataset, user, flags[0]), item, flags[1])
        known = F.col(flags[0]).isNotNull() & F.col(flags[1]).isNotNull()
        if strategy == "drop":
            return as_float(m.predict(looked_up.where(known), user, item, out, ts).drop(*flags))
        pred = m.predict(looked_up, user, item, out, ts)
        return as_float(pred.withColumn(out, F.when(known, _col(out)).otherwise(F.lit(float("nan")))).drop(*flags))

    def recommendForAllUsers(self, numItems: int, include: Ids = None, exclude: Ids = None) -> DataFrame:
        """[userCol, recommendations: array<struct<itemCol, rating: float>>], the numItems best items
        of every user, best first. `include` / `exclude`: only / never these items (a DataFrame with
        itemCol, or a list of IDs). With excludeSeen, each user's training items are left out."""
        return self._recommend("user", numItems, None, include, exclude, "recommendForAllUsers")

    def recommendForAllItems(self, numUsers: int, include: Ids = None, exclude: Ids = None) -> DataFrame:
        """[itemCol, recommendations: array<struct<userCol, rating: float>>], every item's numUsers
        best users; `include` / `exclude` list users (userCol)."""
        return self._recommend("item", numUsers, None, include, exclude, "recommendForAllItems")

    def recommendForUserSubset(
        self, dataset: DataFrame, numItems: int, include: Ids = None, exclude: Ids = None
    ) -> DataFrame:
        """recommendForAllUsers for the users in dataset[userCol] only (unknown users are left out)."""
        return self._recommend("user", numItems, dataset, include, exclude, "recommendForUserSubset")

    def recommendForItemSubset(
        self, dataset: DataFrame, numUsers: int, include: Ids = None, exclude: Ids = None
    ) -> DataFrame:
        """recommendForAllItems for the items in dataset[itemCol] only (unknown items are left out)."""
        return self._recommend("item", numUsers, dataset, include, exclude, "recommendForItemSubset")

    def _recommend(
        self, side: str, n: int, subset: DataFrame | None, include: Ids, exclude: Ids, name: str
    ) -> DataFrame:
        """Top-n of the other side for `side`'s IDs (FactorModel.recommend; for items, on its
        transposed model, where items are the users), grouped as MLlib groups them."""
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
            raise ValueError(f"ALSModel.{name}: the number of recommendations must be an integer >= 1, got {n!r}")
        where = f"ALSModel.{name}"
        by_user = side == USER
        m = self.factorModel if by_user else self.factorModel.transposed()
        key, other = (USER, ITEM) if by_user else (ITEM, USER)
        cols = {USER: ("userCol", self.getUserCol()), ITEM: ("itemCol", self.getItemCol())}
        rows = None if subset is None else _renamed(subset, cols[key][1], USER, where, cols[key][0])
        seen = self._seen_pairs(where)
        if seen is not None and not by_user:
            seen = seen.select(F.col(ITEM).alias(USER), F.col(USER).alias(ITEM))
        recs = m.recommend(
            rows,
            int(n),
            seen,
            USER,
            ITEM,
            include=_candidates(include, cols[other][1], ITEM, f"{where} include", cols[other][0]),
            exclude=_candidates(exclude, cols[other][1], ITEM, f"{where} exclude", cols[other][0]),
        )
        return _grouped(recs, cols[key][1], cols[other][1], self._id_types[key], self._id_types[other])

    def _seen_pairs(self, where: str) -> DataFrame | None:
        if not self.getExcludeSeen():
            return None
        if self._seen is None:
            raise ConfigError(
                f"{where}: excludeSeen is set, but this model kept no training pairs "
                f"(fit it with ALS(excludeSeen=True))"
            )
        return self._seen

    # ---- fold-in -------------------------------------------------------------------------------
    def foldInUsers(self, history: DataFrame) -> "ALSModel":
        """An ALSModel for the users of `history` (userCol, itemCol, ratingCol rows; ratings optional
        for implicit models), known to this model or new, from one half-step against this model's item
        factors: no retraining (FactorModel.fold_in). Its users are the history's only, its items this
        model's, so its transform, userFactors and recommendFor* serve them; with excludeSeen, their
        recommendations leave out the history's items."""
        return self._folded(history, "users")

    def foldInItems(self, history: DataFrame) -> "ALSModel":
        """The mirror of foldInUsers: a model whose items are the history's items (new or known),
        solved against this model's user factors."""
        return self._folded(history, "items")

    def placeItems(self, features: DataFrame) -> "ALSModel":
        """This model and the items of `features` (the itemFeaturesPath table's layout) it does not
        know, with factors from the map fit learned; known items keep theirs (FactorModel.with_features)."""
        return self._copyValues(ALSModel(self.factorModel.with_features("items", features.toArrow()), self._seen))

    def placeUsers(self, features: DataFrame) -> "ALSModel":
        """The mirror of placeItems for new users (userFeaturesPath)."""
        return self._copyValues(ALSModel(self.factorModel.with_features("users", features.toArrow()), self._seen))

    def _folded(self, history: DataFrame, side: str) -> "ALSModel":
        user, item, rating = self.getUserCol(), self.getItemCol(), self.getRatingCol()
        where = "ALSModel.foldInUsers" if side == "users" else "ALSModel.foldInItems"
        _require_columns(history, where, {"userCol": user, "itemCol": item})
        folded = self.factorModel.fold_in(history, side, user, item, rating)
        seen = history.select(_col(user).alias(USER), _col(item).alias(ITEM)) if self.getExcludeSeen() else None
        return self._copyValues(ALSModel(folded, seen))

    # ---- persistence ---------------------------------------------------------------------------
    def write(self) -> MLWriter:
        """A writer of the model folder (see the module docstring); `overwrite()` replaces a folder."""
        return _Writer(self, ALSModel._save_to)

    @staticmethod
    def _save_to(model: "ALSModel", path: str, spark: SparkSession) -> None:
        model.factorModel.save(path, spark)
        if model._seen is not None:
            fs.write_parquet(spark, posixpath.join(path, "seen"), model._seen)
        # The metadata last: a folder a failed save left behind has none, and loading it fails clearly.
        DefaultParamsWriter.saveMetadata(
            model, path, spark, extraMetadata={"idTypes": model._id_types, "seen": model._seen is not None}
        )

    @classmethod
    def read(cls) -> "MLReader[ALSModel]":
        return _ModelReader()


def _map_type(ids: index.IdMap) -> str:
    """MLlib's ID type, int, for integral IDs that fit one (MLlib refuses others); beyond it, ours:
    bigint for larger integers, string for strings."""
    if pa.types.is_string(ids.ids.type):
        return "string"
    values = ids.ids.to_numpy(zero_copy_only=False)
    fits = values.size == 0 or (values.min() >= np.iinfo(np.int32).min and values.max() <= np.iinfo(np.int32).max)
    return "int" if fits else "bigint"


class _Writer(MLWriter):
    """Refuses an existing folder unless overwrite() was called (then removes it first, as MLlib
    does), then writes with `write(instance, path, spark)`. Through core.fs, not the JVM writer's
    overwrite, so that it also saves from a Spark Connect client."""

    def __init__(self, instance: Params, write: Callable[[Any, str, SparkSession], None]) -> None:
        super().__init__()
        self.instance, self._write = instance, write

    def save(self, path: str) -> None:
        if self.shouldOverwrite:
            fs.delete(self.sparkSession, path)
        self.saveImpl(path)

    def saveImpl(self, path: str) -> None:
        if fs.exists(self.sparkSession, path):
            raise FileExistsError(f"{path} already exists; use write().overwrite().save(path) to replace it")
        self._write(self.instance, path, self.sparkSession)


class _ModelReader(MLReader):
    """Reads a folder ALSModel.write saved: FactorModel's JSON + Parquet, the seen pairs, the params."""

    def load(self, path: str) -> ALSModel:
        spark = self.sparkSession
        if not fs.exists(spark, posixpath.join(path, "metadata")):
            raise ModelError(f"{path} is not a saved ALSModel: it has no metadata folder")
        meta = DefaultParamsReader.loadMetadata(path, spark)
        expected = f"{ALSModel.__module__}.{ALSModel.__name__}"
        if meta.get("class") != expected:
            raise ModelError(f"{path} holds a {meta.get('class')}, not an {expected}")
        seen = None
        if meta.get("seen"):  # copied out of the folder: saving the model over it must not lose them
            seen = spark.read.parquet(posixpath.join(path, "seen")).localCheckpoint(eager=True)
        model = ALSModel(load_model(path, spark), seen)
        model._resetUid(meta["uid"])
        DefaultParamsReader.getAndSetParams(model, meta)
        return model
