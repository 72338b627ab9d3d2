"""Side information: users and items without ratings placed in the factor space by their features.

    encoding = Encoding.fit(table, id_col)   numbers standardized, text one-hot, "a|b|c" tag lists multi-hot
    fmap = FeatureMap.fit(encoding, table, ids, factors, bias, reg)
    ids, factors, bias = fmap.place(table)   the factors (and bias) the map gives each row of a table

The map is a learned feature-to-factor regression, as LightFM's feature embeddings are, but fitted
after the factorization in closed form (ridge regression from a row's features to its fitted factors
and bias, over the rows that have both): the fit itself is untouched, rows with ratings keep their
fitted factors, and only rows the model does not know take the map's. Pure numpy on the driver:
feature tables are catalogs (items, users), not events.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mf_spark.core.errors import InputError
from mf_spark.data import read

TAG_SEPARATOR = "|"
# Values of one text column kept as features (the most frequent): a free-text column would otherwise
# give a feature per row and a map that only memorizes.
MAX_VALUES = 1000


@dataclass(frozen=True)
class Encoding:
    """How each feature column becomes numbers: [{"name", "kind": numeric|category|tags, ...}]."""

    id_col: str
    columns: tuple[dict[str, Any], ...]

    @property
    def width(self) -> int:
        return sum(1 if c["kind"] == "numeric" else len(c["values"]) for c in self.columns)

    @property
    def names(self) -> list[str]:
        out = []
        for c in self.columns:
            out += [c["name"]] if c["kind"] == "numeric" else [f"{c['name']}={v}" for v in c["values"]]
        return out

    @classmethod
    def fit(cls, table: pa.Table, id_col: str) -> Encoding:
        """The encoding of `table`'s columns other than `id_col`; InputError for a table with no
        other column, or a column of another type than numbers, booleans or text."""
        columns = []
        for name in table.column_names:
            if name == id_col:
                continue
            col = table.column(name)
            t = col.type
            if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t):
                x = col.cast(pa.float64()).to_numpy(zero_copy_only=False)
                x = x[np.isfinite(x)]
                mean = float(x.mean()) if x.size else 0.0
                std = float(x.std()) if x.size and x.std() > 0 else 1.0
                columns.append({"name": name, "kind": "numeric", "mean": mean, "std": std})
            elif pa.types.is_string(t) or pa.types.is_large_string(t):
                text = col.cast(pa.string())
                tags = pc.any(pc.match_substring(text, TAG_SEPARATOR)).as_py() or False
                parts = pc.list_flatten(pc.split_pattern(text, TAG_SEPARATOR)) if tags else text
                parts = pc.utf8_trim_whitespace(parts.filter(pc.is_valid(parts)))
                counts = pc.value_counts(parts.filter(pc.not_equal(parts, "")))
                values = counts.field("values").to_pylist()
                order = np.argsort(-counts.field("counts").to_numpy(), kind="stable")[:MAX_VALUES]
                kept = sorted(values[k] for k in order)
                columns.append({"name": name, "kind": "tags" if tags else "category", "values": kept})
            else:
                raise InputError(
                    f"feature column {name!r} has type {t}: features are numbers, booleans or text "
                    f"(a category, or tags separated by {TAG_SEPARATOR!r})"
                )
        if not columns:
            raise InputError(f"the feature table has no column besides its ID column {id_col!r}")
        return cls(id_col, tuple(columns))

    def matrix(self, table: pa.Table) -> np.ndarray:
        """(rows, width) float64 features of `table` (which has this encoding's columns); a missing
        number counts as the mean, a missing or unseen text as none of the values."""
        n = table.num_rows
        blocks = []
        for c in self.columns:
            if c["name"] not in table.column_names:
                raise InputError(f"the feature table has no column {c['name']!r} (the model's features: {self.names})")
            col = table.column(c["name"])
            if c["kind"] == "numeric":
                x = col.cast(pa.float64()).to_numpy(zero_copy_only=False)
                blocks.append(np.where(np.isfinite(x), (x - c["mean"]) / c["std"], 0.0)[:, None])
                continue
            text = col.cast(pa.string()).combine_chunks()
            if c["kind"] == "tags":  # one entry per (row, tag), trimmed as `fit` trims them
                lists = pc.split_pattern(text, TAG_SEPARATOR)
                rows = np.repeat(np.arange(n), pc.list_value_length(lists).fill_null(0).to_numpy())
                parts = pc.list_flatten(lists)
            else:
                rows, parts = np.arange(n), text
            at = pc.index_in(pc.utf8_trim_whitespace(parts), value_set=pa.array(c["values"], pa.string()))
            found = at.is_valid().to_numpy(zero_copy_only=False)
            block = np.zeros((n, len(c["values"])))
            block[rows[found], at.filter(at.is_valid()).to_numpy()] = 1.0
            blocks.append(block)
        return np.hstack(blocks) if blocks else np.zeros((n, 0))

    def to_json(self) -> dict[str, Any]:
        return {"id_col": self.id_col, "columns": [dict(c) for c in self.columns]}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Encoding:
        return cls(d["id_col"], tuple(d["columns"]))


@dataclass(frozen=True)
class FeatureMap:
    """Ridge regression from a row's encoded features (and an intercept) to its factors and bias."""

    encoding: Encoding
    weights: np.ndarray  # (width + 1, rank [+ 1]) float64: the intercept's row last, the bias column last
    reg: float
    with_bias: bool
    fit_rows: int  # rows it was learned on
    r2: float  # share of the factors' variance (over those rows) the map explains

    @classmethod
    def fit(
        cls,
        encoding: Encoding,
        table: pa.Table,
        rows: np.ndarray,
        factors: np.ndarray,
        bias: np.ndarray | None,
        reg: float,
    ) -> FeatureMap:
        """The map learned on the rows of `table` whose model row (`rows`, -1 for none) is known:
        W = (A'A + reg I)^-1 A'T over centered features A and targets T (their factors, and bias),
        and an intercept; `reg` 0 chooses it by leave-one-out error over REG_GRID (closed form for
        ridge). Every known row weighs the same: weighing rows by their ratings (a rarely rated row's
        factors are mostly its regularization) placed new items worse (docs/quality.md). InputError
        when no row of `table` is known to the model."""
        known = rows >= 0
        if not known.any():
            raise InputError(
                f"no ID of the feature table (column {encoding.id_col!r}) is in the model: the map from "
                f"features to factors is learned on rows that have both"
            )
        A = encoding.matrix(table.filter(pa.array(known)))
        T = factors[rows[known]].astype(np.float64)
        if bias is not None:
            T = np.hstack([T, bias[rows[known]].astype(np.float64)[:, None]])
        # Centered, the intercept is the means' difference and takes no penalty.
        a_mean, t_mean = A.mean(axis=0), T.mean(axis=0)
        Ac, Tc = A - a_mean, T - t_mean
        s, V = np.linalg.eigh(Ac.T @ Ac)
        s = np.maximum(s, 0.0)
        P, PT = Ac @ V, V.T @ (Ac.T @ Tc)
        chosen = reg if reg > 0 else _leave_one_out(P, s, PT, Tc)
        W = V @ (PT / (s + chosen)[:, None])
        residual = Tc - Ac @ W
        spread = float(np.sum(Tc**2))
        r2 = 1.0 - float(np.sum(residual**2)) / spread if spread > 0 else 0.0
        weights = np.vstack([W, (t_mean - a_mean @ W)[None, :]])
        return cls(encoding, weights, float(chosen), bias is not None, int(known.sum()), r2)

    def place(self, table: pa.Table) -> tuple[pa.Array, np.ndarray, np.ndarray | None]:
        """(IDs, (n, rank) float32 factors, (n,) float32 bias or None) of every row of `table`."""
        out = _with_intercept(self.encoding.matrix(table)) @ self.weights
        ids = table.column(self.encoding.id_col).combine_chunks()
        if self.with_bias:
            return ids, out[:, :-1].astype(np.float32), out[:, -1].astype(np.float32)
        return ids, out.astype(np.float32), None

    def describe(self) -> dict[str, Any]:
        """model.json's entry (the weights go to a Parquet table of their own)."""
        return {
            "encoding": self.encoding.to_json(),
            "reg": self.reg,
            "bias": self.with_bias,
            "fit_rows": self.fit_rows,
            "r2": self.r2,
        }

    def weights_table(self) -> pa.Table:
        names = [*self.encoding.names, "(intercept)"]
        flat = pa.array(self.weights.astype(np.float32).ravel())
        return pa.table(
            {
                "feature": pa.array(names, pa.string()),
                "weights": pa.FixedSizeListArray.from_arrays(flat, self.weights.shape[1]).cast(pa.list_(pa.float32())),
            }
        )

    @classmethod
    def load(cls, meta: dict[str, Any], table: pa.Table) -> FeatureMap:
        encoding = Encoding.from_json(meta["encoding"])
        by_name = dict(zip(table.column("feature").to_pylist(), table.column("weights").to_pylist()))
        names = [*encoding.names, "(intercept)"]  # a table read back may come in another row order
        if sorted(by_name) != sorted(names) or len(by_name) != table.num_rows:
            raise InputError("the feature map's weights do not match its encoding in model.json")
        W = np.array([by_name[n] for n in names], np.float64)
        return cls(encoding, W, float(meta["reg"]), bool(meta["bias"]), int(meta["fit_rows"]), float(meta["r2"]))


REG_GRID = tuple(10.0**e for e in range(-3, 5))


def _leave_one_out(P: np.ndarray, s: np.ndarray, PT: np.ndarray, Tc: np.ndarray) -> float:
    """The REG_GRID value of least leave-one-out squared error: a ridge fit's held-out residual of row
    i is its residual over (1 - h_ii), h the hat matrix's diagonal (P = A V, s the eigenvalues of
    A'A = V diag(s) V', PT = V'A'T)."""
    best, best_err = REG_GRID[0], np.inf
    for lam in REG_GRID:
        inv = 1.0 / (s + lam)
        fitted = P @ (PT * inv[:, None])
        h = np.minimum(np.sum(P**2 * inv, axis=1), 1.0 - 1e-9)
        err = float(np.sum(((Tc - fitted) / (1.0 - h)[:, None]) ** 2))
        if err < best_err:
            best, best_err = lam, err
    return best


def _with_intercept(features: np.ndarray) -> np.ndarray:
    return np.hstack([features, np.ones((features.shape[0], 1))])


def id_column(table: pa.Table, side: str) -> str:
    """The feature table's ID column for `side` (a ratings column: user or item): the first whose name
    is one of the names the readers recognize for it (read.COMMON_NAMES), else its first column."""
    normed = [read.norm(c) for c in table.column_names]
    for n in read.COMMON_NAMES[side]:
        if n in normed:
            return table.column_names[normed.index(n)]
    return table.column_names[0]


def with_ids_as(ids: pa.Array, like: pa.DataType) -> pa.Array:
    """The feature table's IDs in the model's ID type (integer text to int64 where the model's IDs
    are integers); InputError naming the first that cannot be."""
    if ids.type == like:
        return ids
    try:
        return ids.cast(like)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise InputError(f"feature table IDs of type {ids.type} cannot be the model's {like} IDs") from None
