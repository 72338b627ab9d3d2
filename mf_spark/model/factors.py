"""FactorModel: factors with their original IDs; predict, recommend, save and load (JSON + Parquet).

A saved model is a folder:

    model.json       kind, rank, mu, global mean, rating range, ID types, config, versions
    factors/users/   Parquet: id (original type), bias float (explicit + biases), factors array<float>
    factors/items/   the same for items
    factors/user_days/  Parquet: user (original type), day long, bias float: day biases (types.DayBiases),
                     with model.day_bias_reg > 0 only; factors array<float>: their factor offsets,
                     with model.day_factor_reg > 0 only
    features/users/, features/items/   Parquet: feature string, weights array<float>: the map from a
                     side's features to its factors (model.features), trained with --user-features /
                     --item-features only; its encoding is in model.json

The ID maps are the `id` columns: index = position of the ID in sorted order (see index.IdMap), so
nothing but sorted IDs and their factor rows is stored, and loading executes nothing (no pickle).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import posixpath
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from mf_spark.als.blocks import build_blocks
from mf_spark.als.checkpoint import factor_lists, factor_table, read_factor_table
from mf_spark.als.halfstep import half_step, solve_spec
from mf_spark.core import fs, session
from mf_spark.core.config import saved_model_config
from mf_spark.core.errors import InputError, ModelError
from mf_spark.core.types import ITEM, ITEM_IDX, NO_TIME, RATING, USER, USER_IDX, DayBiases, Factors
from mf_spark.data import index, validate
from mf_spark.data.index import IdMap
from mf_spark.kernels import compiled
from mf_spark.model.features import Encoding, FeatureMap, id_column, with_ids_as
from mf_spark.model.topn import item_blocks, recommend_indices, recommend_indices_blocked, recommend_indices_grouped

FORMAT_VERSION = 1
log = logging.getLogger("mf_spark")
# Item IDs for the candidate filters: a DataFrame with the item column, or IDs in a list or array.
Ids = DataFrame | list | tuple | np.ndarray | pa.Array | None


def _id_array(ids: Ids, col: str, what: str) -> pa.Array:
    """The IDs of a candidate list as an Arrow array (a DataFrame's `col` collected to the driver)."""
    if isinstance(ids, DataFrame):
        if col not in ids.columns:
            raise InputError(f"{what}: column {col!r} is missing; columns are {ids.columns}")
        got = ids.select(col).where(F.col(col).isNotNull()).distinct().toArrow().column(0)
        return got.combine_chunks() if isinstance(got, pa.ChunkedArray) else got
    return ids if isinstance(ids, pa.Array) else pa.array(list(ids) if not isinstance(ids, np.ndarray) else ids)


@dataclass(frozen=True)
class Scorer:
    """What executors need to score: factors, cold-start mean and the clipping range."""

    kind: str
    factors: Factors
    global_mean: float
    rating_range: tuple[float, float] | None
    days: DayBiases | None = None

    def predict_idx(
        self, u: np.ndarray, i: np.ndarray, t: np.ndarray | None = None, day_at: np.ndarray | None = None
    ) -> np.ndarray:
        """Predictions for index arrays (-1 = unknown ID), float64, clipped for explicit models.

        Known user and item: mu + b_u + b_i + x_u.y_i; otherwise the global mean plus known biases.
        With day biases and the ratings' timestamps `t` (types.NO_TIME where none), plus the user's
        offset on that day; `day_at`: the rows' DayBiases.positions instead of `t`, found before.
        """
        f = self.factors
        clip = self.rating_range if self.kind == "explicit" else None
        if self.days is not None and (t is not None or day_at is not None):
            at = day_at if day_at is not None else self.days.positions(u, t)
            pred = Scorer(self.kind, f, self.global_mean, None).predict_idx(u, i) + self.days.offsets(at, i, f.Y)
            return pred if clip is None else np.clip(pred, *clip)
        if compiled.chosen("auto"):
            return compiled.predict_rows(
                f.X, f.Y, f.user_bias, f.item_bias, np.asarray(u), np.asarray(i), f.mu, self.global_mean, clip
            )
        u = np.asarray(u, dtype=np.int64)
        i = np.asarray(i, dtype=np.int64)
        ku, ki = u >= 0, i >= 0
        uu, ii = np.where(ku, u, 0), np.where(ki, i, 0)
        both = ku & ki
        pred = np.where(both, f.mu, self.global_mean).astype(np.float64)
        pred += np.where(both, np.einsum("ij,ij->i", f.X[uu].astype(np.float64), f.Y[ii]), 0.0)
        if f.user_bias is not None:
            pred += np.where(ku, f.user_bias[uu], 0.0) + np.where(ki, f.item_bias[ii], 0.0)
        if clip is not None:
            pred = np.clip(pred, *clip)
        return pred


@dataclass
class FactorModel:
    """A fitted model. `users`/`items` map original IDs to the rows of the factor matrices."""

    kind: str
    factors: Factors
    users: IdMap
    items: IdMap
    global_mean: float  # cold-start prediction
    rating_range: tuple[float, float] | None  # explicit predictions are clipped to it
    config: dict[str, Any] = field(default_factory=dict)
    days: DayBiases | None = None  # explicit models with model.day_bias_reg or day_factor_reg > 0
    item_blocks: int = field(default=0, compare=False)  # > 0: top-N by item blocks, no broadcast of Y
    features: dict[str, FeatureMap] = field(default_factory=dict, compare=False)  # "users"/"items": side info
    _bc: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.users.size != self.factors.X.shape[0] or self.items.size != self.factors.Y.shape[0]:
            raise ValueError(
                f"{self.users.size} user IDs for {self.factors.X.shape[0]} factor rows, "
                f"{self.items.size} item IDs for {self.factors.Y.shape[0]}"
            )

    @classmethod
    def trained(
        cls,
        kind: str,
        factors: Factors,
        users: IdMap,
        items: IdMap,
        stats,
        config: dict[str, Any],
        spark: SparkSession,
        days: DayBiases | None = None,
    ) -> "FactorModel":
        """The model a fit on training ratings with `stats` (ready.TrainStats: mean, lo, hi) gives: an
        unknown pair scores the training mean for explicit models and, for implicit ones, whose scores
        estimate a preference in [0, 1], no evidence of one (0, not the mean raw count); explicit
        predictions are clipped to the training range."""
        explicit = kind == "explicit"
        return cls(
            kind,
            factors,
            users,
            items,
            stats.mean if explicit else 0.0,
            (stats.lo, stats.hi) if explicit else None,
            config,
            days,
            item_blocks=item_blocks(config, users.size, items.size, spark),
        )

    @property
    def rank(self) -> int:
        return int(self.factors.X.shape[1])

    @property
    def scorer(self) -> "Scorer":
        # Implicit scores estimate a preference: an unknown pair has none, whatever an older model.json says.
        cold = self.global_mean if self.kind == "explicit" else 0.0
        return Scorer(self.kind, self.factors, cold, self.rating_range, self.days)

    def predict_idx(self, u: np.ndarray, i: np.ndarray) -> np.ndarray:
        return self.scorer.predict_idx(u, i)

    def _broadcast(self, spark: SparkSession):
        """The Scorer, broadcast once per model and reused by every predict/recommend call."""
        if self._bc is None:
            self._bc = session.broadcast(spark, self.scorer)
        return self._bc

    def predict(
        self,
        df: DataFrame,
        user_col: str = "user",
        item_col: str = "item",
        output_col: str = "prediction",
        timestamp_col: str | None = None,
    ) -> DataFrame:
        """`df` with a `prediction` column (double) for every row; unknown IDs get cold predictions.
        With `timestamp_col` (read as the train job reads timestamps: numbers in the training data's
        unit, or date-times and timestamp types as seconds), a model with day biases adds the user's
        offset on the row's day (none where the value is not a time).

        Performance note: two broadcast joins with the ID maps and one broadcast of the factors.
        """
        for c in (user_col, item_col) + ((timestamp_col,) if timestamp_col else ()):
            if c not in df.columns:
                raise InputError(f"predict: column {c!r} is missing; columns are {df.columns}")
        enc = self.items.encode(self.users.encode(df, user_col, "__u"), item_col, "__i")
        if timestamp_col:
            enc = enc.withColumn("__t", validate.epoch_value(enc, timestamp_col))
        # mapInArrow cannot take a field name with a dot in its schema: plain names through it
        names, own = enc.columns, ("__u", "__i", "__t")
        enc = enc.toDF(*[c if c in own else f"_c{n}" for n, c in enumerate(names)])
        bc = self._broadcast(df.sparkSession)

        def score(batches):
            scorer = bc.value
            for b in batches:
                u = b.column("__u").fill_null(-1).to_numpy()
                i = b.column("__i").fill_null(-1).to_numpy()
                t = b.column("__t").fill_null(NO_TIME).to_numpy() if timestamp_col else None
                yield b.append_column(output_col, pa.array(scorer.predict_idx(u, i, t), pa.float64()))

        out_schema = T.StructType(enc.schema.fields + [T.StructField(output_col, T.DoubleType())])
        scored = enc.mapInArrow(score, out_schema).toDF(*names, output_col)
        return scored.select(*[validate.exact_column(c) for c in df.columns], validate.exact_column(output_col))

    def recommend_idx(self, users: DataFrame, n: int) -> DataFrame:
        """Top-n per row of `users` (user_idx int, seen array<int> or null): recommend_indices, or
        recommend_indices_blocked when `item_blocks` > 0 (item factors too big to broadcast)."""
        if self.item_blocks > 0:
            return recommend_indices_blocked(self.scorer, users, n, self.item_blocks)
        return recommend_indices(self._broadcast(users.sparkSession), users, n)

    def recommend_unseen_idx(self, pairs: DataFrame, n: int) -> DataFrame:
        """Top-n for every user in `pairs` (user_idx, item_idx: what each user rated, excluded):
        recommend_indices_grouped, or by item blocks (from seen lists) when `item_blocks` > 0."""
        if self.item_blocks > 0:
            seen = pairs.groupBy(USER_IDX).agg(F.collect_list(ITEM_IDX).alias("seen"))
            return recommend_indices_blocked(self.scorer, seen, n, self.item_blocks)
        parts = session.parallelism(pairs.sparkSession)
        return recommend_indices_grouped(self._broadcast(pairs.sparkSession), pairs, n, parts)

    def recommend(
        self,
        users: DataFrame | None,
        n: int = 10,
        seen: DataFrame | None = None,
        user_col: str = "user",
        item_col: str = "item",
        include: Ids = None,
        exclude: Ids = None,
    ) -> DataFrame:
        """Top-n items for the users in `users` (a column `user_col`; None = every known user).

        `seen` (user_col, item_col rows, e.g. the training data) lists items to exclude. `include`
        (only these items may be recommended) and `exclude` (never these) are candidate filters:
        DataFrames with an `item_col` column, or lists of item IDs; they compose with `seen`.
        Unknown users are skipped. Returns user, rank (1..n), item, score with original IDs.
        """
        mask = self.candidate_mask(include, exclude, item_col)
        if mask is not None:
            return self.restrict_items(mask).recommend(users, n, seen, user_col, item_col)
        spark = SparkSession.getActiveSession() if users is None else users.sparkSession
        if users is None:
            idx = spark.range(self.users.size).select(F.col("id").cast("int").alias(USER_IDX))
        else:
            if user_col not in users.columns:
                raise InputError(f"recommend: column {user_col!r} is missing; columns are {users.columns}")
            idx = (
                self.users.encode(users.select(user_col).distinct(), user_col, USER_IDX)
                .where(F.col(USER_IDX).isNotNull())
                .select(USER_IDX)
            )
        if seen is not None:
            for c in (user_col, item_col):
                if c not in seen.columns:
                    raise InputError(f"recommend: seen has no column {c!r}; columns are {seen.columns}")
            pairs = self.items.encode(self.users.encode(seen, user_col, USER_IDX), item_col, ITEM_IDX)
            lists = (
                pairs.where(F.col(USER_IDX).isNotNull() & F.col(ITEM_IDX).isNotNull())
                .groupBy(USER_IDX)
                .agg(F.collect_list(ITEM_IDX).alias("seen"))
            )
            idx = idx.join(lists, USER_IDX, "left")
        recs = self.recommend_idx(idx, n)
        return self.decode_recs(recs)

    # ---- candidate filters, the other side's view, fold-in ----------------------------------------
    def candidate_mask(self, include: Ids, exclude: Ids, item_col: str = "item") -> np.ndarray | None:
        """(n_items,) bool: the items that may be recommended under `include` / `exclude` (see
        recommend), or None when neither is given. IDs the model does not know are logged, not errors:
        a catalog list naturally holds items nobody has rated yet."""
        if include is None and exclude is None:
            return None
        mask = np.ones(self.items.size, bool)
        for what, ids in (("include", include), ("exclude", exclude)):
            if ids is None:
                continue
            idx = self.items.index_of(_id_array(ids, item_col, what))
            if (idx < 0).any():
                log.info("%s: %d of %d item IDs are not in the model", what, int((idx < 0).sum()), idx.size)
            listed = np.zeros(self.items.size, bool)
            listed[idx[idx >= 0]] = True
            mask &= listed if what == "include" else ~listed
        return mask

    def restrict_items(self, mask: np.ndarray) -> "FactorModel":
        """The model over the items where `mask` is True only (the same scores; fewer candidates)."""
        f = self.factors
        keep = np.flatnonzero(mask)
        factors = Factors(f.X, f.Y[keep], f.user_bias, None if f.item_bias is None else f.item_bias[keep], f.mu)
        items = IdMap(self.items.ids.take(pa.array(keep)), self.items.name)
        return dataclasses.replace(self, factors=factors, items=items, _bc=None)

    def transposed(self) -> "FactorModel":
        """Items as users and users as items: its recommend gives every item's best users (audiences).
        Scores are symmetric (mu + b_u + b_i + x_u.y_i), so they equal the model's."""
        f = self.factors
        return dataclasses.replace(
            self,
            factors=Factors(f.Y, f.X, f.item_bias, f.user_bias, f.mu),
            users=self.items,
            items=self.users,
            days=None,
            item_blocks=0,
            _bc=None,
        )

    def fold_in(
        self,
        history: DataFrame,
        side: str = "users",
        user_col: str = "user",
        item_col: str = "item",
        rating_col: str = "rating",
    ) -> "FactorModel":
        """Factors for the users (side="users") or items (side="items") of `history`, known to the
        model or not, from one half-step against the model's fixed other side, without retraining.

        `history` holds user_col, item_col and rating_col (optional for implicit models: 1 per row).
        The solve is the training half-step's (kernels.solve, through halfstep.half_step): biases
        for explicit models with biases, the Gramian for weighted ALS, the same regularization; exact
        solves even where training used conjugate gradients. Folding in a trained user's own training
        rows so gives the factors the fit's last half-step gave them. Repeated pairs are merged as the
        jobs merge them by default (mean for explicit, sum for implicit). Rows whose other-side ID the
        model does not know are dropped and counted in the log; so are the rows' owners left with none.

        Returns a FactorModel whose `side` holds only the history's rows and whose other side is
        this model's, so its recommend/predict work as usual.
        """
        rating = self._history_rating(history, side, user_col, item_col, rating_col)
        users_side = side == "users"
        row_col, fixed_col = (user_col, item_col) if users_side else (item_col, user_col)
        fixed_map = self.items if users_side else self.users
        f = self.factors
        fixed, fixed_bias = (f.Y, f.item_bias) if users_side else (f.X, f.user_bias)
        rows = history.select(F.col(row_col).alias("_row"), F.col(fixed_col).alias("_fixed"), rating.alias(RATING))
        rows = fixed_map.encode(rows, "_fixed", "_f").cache()
        usable = F.col("_row").isNotNull() & F.col(RATING).isNotNull() & F.col("_f").isNotNull()
        known = rows.where(usable)
        try:
            total, kept = rows.agg(F.count(F.lit(1)), F.count(F.when(usable, 1))).first()  # one action
            if total > kept:
                log.info(
                    "fold_in: %d of %d history rows have no ID or rating, or name %s the model does not know; left out",
                    total - kept,
                    total,
                    "items" if users_side else "users",
                )
            row_map = index.fit(known, "_row")
            if not row_map.size:
                raise InputError("fold_in: no history row names a known " + ("item" if users_side else "user"))
            solved = self._half_step(row_map.encode(known, "_row", "_r"), row_map.size, users_side, fixed, fixed_bias)
        finally:
            rows.unpersist()
        new_map = IdMap(row_map.ids, (self.users if users_side else self.items).name)
        if users_side:  # folded-in users: new rows, and no day of theirs was fitted
            factors, maps = (
                Factors(solved.factors, f.Y, solved.bias, f.item_bias, f.mu),
                {"users": new_map, "days": None},
            )
        else:
            factors, maps = Factors(f.X, solved.factors, f.user_bias, solved.bias, f.mu), {"items": new_map}
        return dataclasses.replace(self, factors=factors, **maps, _bc=None)

    def _history_rating(self, history: DataFrame, side: str, user_col: str, item_col: str, rating_col: str):
        """fold_in's rating column (1.0 per row for an implicit model without one); InputError naming
        what `history` lacks."""
        if side not in ("users", "items"):
            raise InputError(f"fold_in: side must be 'users' or 'items', got {side!r}")
        for c in (user_col, item_col):
            if c not in history.columns:
                raise InputError(f"fold_in: history has no column {c!r}; columns are {history.columns}")
        if rating_col in history.columns:
            return F.col(rating_col).cast("double")
        if self.kind == "implicit":
            return F.lit(1.0)
        raise InputError(
            f"fold_in: history has no column {rating_col!r} (an explicit model needs ratings); "
            f"columns are {history.columns}"
        )

    def _half_step(self, encoded: DataFrame, n_rows: int, users_side: bool, fixed: np.ndarray, fixed_bias):
        """The training half-step (exact solves) of the `n_rows` rows of `encoded` (_r row index, _f
        fixed index, rating; repeated pairs merged as the jobs merge them) against the fixed side.
        Performance note: one shuffle (the merge and the blocks), one Spark job."""
        merge = F.avg(RATING) if self.kind == "explicit" else F.sum(RATING)
        pairs = (
            encoded.groupBy("_r", "_f")
            .agg(merge.alias(RATING))
            .select(
                F.col("_r").alias(USER_IDX if users_side else ITEM_IDX),
                F.col("_f").alias(ITEM_IDX if users_side else USER_IDX),
                RATING,
            )
        )
        parallelism = session.parallelism(encoded.sparkSession)
        blocks = build_blocks(pairs, "user" if users_side else "item", parallelism)
        spec = solve_spec(saved_model_config(self.config, self.kind), self.factors.mu)
        spec = dataclasses.replace(spec.on("user" if users_side else "item"), cg_steps=0)
        try:
            return half_step(blocks, n_rows, fixed, spec, fixed_bias)
        finally:
            blocks.unpersist()

    def decode_recs(self, recs: DataFrame) -> DataFrame:
        """user_idx, rank, item_idx, score -> user, rank, item, score (original IDs)."""
        out = self.items.decode(self.users.decode(recs, USER_IDX, "user"), ITEM_IDX, "item")
        return out.select("user", "rank", "item", "score")

    # ---- persistence ---------------------------------------------------------------------------
    def save(self, path: str, spark: SparkSession | None = None, extra: dict[str, Any] | None = None) -> None:
        """Write model.json and factors/{users,items} under `path` (which must not hold a model yet)."""
        spark = spark or SparkSession.getActiveSession()
        f = self.factors
        for side, ids, fac, b in (
            ("users", self.users.ids, f.X, f.user_bias),
            ("items", self.items.ids, f.Y, f.item_bias),
        ):
            fs.write_parquet(spark, posixpath.join(path, "factors", side), factor_table(ids, fac, b))
        if self.days is not None:
            d = self.days
            fs.write_parquet(
                spark,
                posixpath.join(path, "factors", "user_days"),
                pa.table(
                    {
                        "user": self.users.ids.take(pa.array(d.users)),
                        "day": pa.array(d.days, pa.int64()),
                        "bias": pa.array(d.bias, pa.float32()),
                        **({} if d.factors is None else {"factors": factor_lists(d.factors)}),
                    }
                ),
            )
        for side, fmap in self.features.items():
            fs.write_parquet(spark, posixpath.join(path, "features", side), fmap.weights_table())
        fs.write_json(spark, posixpath.join(path, "model.json"), self.describe(extra))

    # ---- side information ------------------------------------------------------------------------
    def learn_features(self, side: str, table: pa.Table, reg: float = 0.0) -> "FactorModel":
        """This model with a map from `side`'s features ("users" or "items": a feature table, its
        ID column found by name or first) to its factors, learned on the table's rows the model knows
        (features.FeatureMap; `reg` 0: chosen by leave-one-out)."""
        rows_map = self.users if side == "users" else self.items
        id_col = id_column(table, USER if side == "users" else ITEM)
        encoding = Encoding.fit(table, id_col)
        rows = rows_map.index_of(with_ids_as(table.column(id_col).combine_chunks(), rows_map.ids.type))
        f = self.factors
        fac, bias = (f.X, f.user_bias) if side == "users" else (f.Y, f.item_bias)
        fmap = FeatureMap.fit(encoding, table, rows, fac, bias, reg)
        log.info(
            "%s features: %d columns (%d values), a map to the factors learned on %d rows (R^2 %.3f, reg %g); "
            "%d rows of the table have no ratings",
            side[:-1],
            len(encoding.columns),
            encoding.width,
            fmap.fit_rows,
            fmap.r2,
            fmap.reg,
            int(np.sum(rows < 0)),
        )
        return dataclasses.replace(self, features={**self.features, side: fmap})

    def with_features(self, side: str, table: pa.Table) -> "FactorModel":
        """This model and the rows of `table` (a feature table of `side`) it does not know, placed by
        the map learned at training (`learn_features`); known rows keep their fitted factors.
        InputError when the model has no map for that side."""
        fmap = self.features.get(side)
        if fmap is None:
            raise InputError(
                f"the model has no {side[:-1]} features: train it with --{side[:-1]}-features to place new "
                f"{side} by theirs"
            )
        ids, fac, bias = fmap.place(table)
        current = self.users if side == "users" else self.items
        ids = with_ids_as(ids, current.ids.type)
        new = pc.is_null(pc.index_in(ids, value_set=current.ids)).to_numpy(zero_copy_only=False) & pc.is_valid(
            ids
        ).to_numpy(zero_copy_only=False)
        if not new.any():
            return self
        _, first = np.unique(ids.filter(pa.array(new)).to_numpy(zero_copy_only=False), return_index=True)
        keep = np.flatnonzero(new)[np.sort(first)]
        all_ids = pa.concat_arrays([current.ids, ids.take(pa.array(keep))])
        order = pc.sort_indices(all_ids).to_numpy()
        f = self.factors
        old_fac, old_bias = (f.X, f.user_bias) if side == "users" else (f.Y, f.item_bias)
        merged = np.vstack([old_fac, fac[keep]])[order]
        merged_bias = None if old_bias is None else np.concatenate([old_bias, bias[keep]])[order]
        new_map = IdMap(all_ids.take(pa.array(order)), current.name)
        log.info("%d new %s placed by their features", keep.size, side)
        if side == "users":  # no day of a new user was fitted; day biases index users by position
            factors = Factors(merged, f.Y, merged_bias, f.item_bias, f.mu)
            return dataclasses.replace(self, factors=factors, users=new_map, days=None, _bc=None)
        factors = Factors(f.X, merged, f.user_bias, merged_bias, f.mu)
        return dataclasses.replace(self, factors=factors, items=new_map, _bc=None, item_blocks=0)

    def describe(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        f = self.factors
        return {
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "rank": self.rank,
            "mu": f.mu,
            "global_mean": self.global_mean,
            "biases": f.user_bias is not None,
            "rating_range": list(self.rating_range) if self.rating_range else None,
            "n_users": self.users.size,
            "n_items": self.items.size,
            **({"day_length": self.days.day_length, "n_user_days": self.days.size} if self.days else {}),
            "user_id_type": str(self.users.ids.type),
            "item_id_type": str(self.items.ids.type),
            "config": self.config,
            **({"features": {side: m.describe() for side, m in self.features.items()}} if self.features else {}),
            **(extra or {}),
        }


def load_model(path: str, spark: SparkSession | None = None) -> FactorModel:
    """Load a model folder written by FactorModel.save (or a training run's output folder).

    Raises ModelError naming the file when model.json or a factor table is missing, truncated or
    inconsistent (wrong rank, duplicate or missing IDs).
    """
    spark = spark or SparkSession.builder.getOrCreate()
    aside = fs.set_aside(spark, path)
    if aside is not None:  # a run is swapping its new output in (or was killed doing it)
        log.warning("%s is being replaced; reading its previous version from %s", path, aside)
        try:
            return load_model(aside, spark)
        except ModelError:  # the swap ended meanwhile (the aside folder is deleted after it)
            if not fs.exists(spark, path):
                raise
    meta_path = posixpath.join(path, "model.json")
    if not fs.exists(spark, meta_path):
        raise ModelError(f"{meta_path} does not exist: {path} is not a model folder (a training run's --output)")
    try:
        meta = json.loads(fs.read_text(spark, meta_path))
    except Exception as exc:  # missing file, unreadable, not JSON
        raise ModelError(
            f"{meta_path}: cannot read the model description ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''})"
        ) from None
    for key in ("format_version", "kind", "rank", "mu", "global_mean", "n_users", "n_items"):
        if key not in meta:
            raise ModelError(f"{meta_path}: key {key!r} is missing")
    if meta["format_version"] != FORMAT_VERSION:
        raise ModelError(f"{meta_path}: format_version {meta['format_version']}, this version reads {FORMAT_VERSION}")
    rank = int(meta["rank"])
    sides = []
    for side, n_key in (("users", "n_users"), ("items", "n_items")):
        where = posixpath.join(path, "factors", side)
        try:
            table = fs.read_parquet(spark, where).sort_by("id")
        except Exception as exc:
            raise ModelError(
                f"{where}: cannot read the factor table ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:300] if str(exc) else ''})"
            ) from None
        if table.num_rows != int(meta[n_key]):
            raise ModelError(f"{where}: {table.num_rows} rows, model.json says {meta[n_key]}")
        ids = table.column("id").combine_chunks()
        if ids.null_count or len(pc.unique(ids)) != len(ids):
            raise ModelError(f"{where}: IDs must be unique and not null")
        try:
            fac, bias = read_factor_table(table, rank, where)
        except InputError as exc:
            raise ModelError(str(exc)) from None
        if meta.get("biases") and bias is None:
            raise ModelError(f"{where}: the model has biases but the table has no bias column")
        sides.append((IdMap(ids, side), fac, bias if meta.get("biases") else None))
    (users, X, bu), (items, Y, bi) = sides
    rr = meta.get("rating_range")
    days = _load_days(spark, path, meta, users) if "day_length" in meta else None
    maps = {}
    for side, described in meta.get("features", {}).items():
        where = posixpath.join(path, "features", side)
        try:
            maps[side] = FeatureMap.load(described, fs.read_parquet(spark, where))
        except Exception as exc:
            raise ModelError(f"{where}: cannot read the feature map ({type(exc).__name__}: {exc})") from None
    return FactorModel(
        meta["kind"],
        Factors(X, Y, bu, bi, float(meta["mu"])),
        users,
        items,
        float(meta["global_mean"]),
        tuple(rr) if rr else None,
        meta.get("config", {}),
        days,
        item_blocks=item_blocks(meta.get("config", {}), X.shape[0], Y.shape[0], spark),
        features=maps,
    )


def _load_days(spark: SparkSession, path: str, meta: dict[str, Any], users: IdMap) -> DayBiases:
    """factors/user_days/ as DayBiases over `users`; ModelError for a table that does not match."""
    where = posixpath.join(path, "factors", "user_days")
    try:
        table = fs.read_parquet(spark, where)
        at = users.index_of(table.column("user"))
        day = table.column("day").cast(pa.int64()).to_numpy(zero_copy_only=False)
        bias = table.column("bias").cast(pa.float32()).to_numpy(zero_copy_only=False)
        offsets = None
        if "factors" in table.column_names:
            column = table.column("factors").combine_chunks()
            offsets = np.asarray(column.flatten().to_numpy(zero_copy_only=False), np.float32)
            offsets = offsets.reshape(table.num_rows, -1) if table.num_rows else offsets.reshape(0, 0)
    except Exception as exc:
        raise ModelError(
            f"{where}: cannot read the day biases ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:300] if str(exc) else ''})"
        ) from None
    if table.num_rows != int(meta.get("n_user_days", -1)):
        raise ModelError(f"{where}: {table.num_rows} rows, model.json says {meta.get('n_user_days')}")
    if (at < 0).any() or not np.isfinite(bias).all():
        raise ModelError(f"{where}: every user must be one of factors/users and every bias a finite number")
    if offsets is not None and (
        offsets.size != table.num_rows * int(meta.get("rank", -1)) or not np.isfinite(offsets).all()
    ):
        raise ModelError(f"{where}: every factor offset must be {meta.get('rank')} finite numbers")
    order = np.lexsort((day, at))
    try:
        return DayBiases(
            int(meta["day_length"]),
            at[order].astype(np.int32),
            day[order],
            bias[order],
            None if offsets is None else offsets[order],
        )
    except ValueError as exc:
        raise ModelError(f"{where}: {exc}") from None
