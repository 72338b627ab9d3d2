"""Biased matrix factorization by stochastic gradient descent (Funk SVD, Surprise's `SVD`): a baseline.

Each epoch visits every rating once, in a fresh random order, and takes one gradient step on it:

    e    = r_ui - (mu + b_u + b_i + x_u . y_i)
    b_u += lr (e - reg_b b_u)            b_i += lr (e - reg_b b_i)
    x_u += lr (e y_i - reg x_u)          y_i += lr (e x_u - reg y_i)     (both from the old x_u, y_i)

which descends, one term at a time, the objective reported after each epoch:

    J = sum_(u,i) e_ui^2 + reg (|x_u|^2 + |y_i|^2) + reg_b (b_u^2 + b_i^2)

(halved, the steps above are exactly its per-term gradients). With `biases=False` mu, b_u and b_i are
0 throughout (Surprise's `biased=False`). Training runs in float64; the result is float32 like ALS's.

The step loop is sequential by nature (each step reads what the last one wrote), so it is one
compiled pass over the ratings where numba is installed, and a per-rating numpy loop otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from mf_spark.kernels import compiled

# Streams of the seed: the initial factors, and one visiting order per epoch.
_INIT_STREAM, _ORDER_STREAM = 0, 1
# Ratings per chunk when the objective is summed: (chunk, k) float64 gathers of ~8 MiB at k = 8.
_LOSS_CHUNK = 1 << 17


@dataclass(frozen=True)
class SgdSpec:
    """Hyperparameters of one SGD fit. Defaults are Surprise's SVD (n_epochs=20, lr_all=0.005,
    reg_all=0.02, init_std_dev=0.1, biased=True) except the rank: Surprise uses 100 factors, we use
    ALS's default of 10 so the two baselines compare at one rank. Unlike Surprise, which visits the
    ratings in the same order every epoch, each epoch here takes a fresh order from (seed, epoch)."""

    rank: int = 10  # latent factors, >= 1
    epochs: int = 20  # passes over the ratings, >= 1
    learning_rate: float = 0.005  # lr, > 0
    reg: float = 0.02  # reg of the factors, >= 0
    reg_bias: float | None = None  # reg_b of the biases, >= 0; None: reg
    init_std: float = 0.1  # factors start N(0, init_std^2); 0 gives a biases-only fit
    seed: int = 0  # >= 0
    biases: bool = True  # fit mu, b_u, b_i

    def __post_init__(self) -> None:
        _require(_is_int(self.rank) and self.rank >= 1, "rank", self.rank, "an integer >= 1")
        _require(_is_int(self.epochs) and self.epochs >= 1, "epochs", self.epochs, "an integer >= 1")
        _require(
            np.isfinite(self.learning_rate) and self.learning_rate > 0,
            "learning_rate",
            self.learning_rate,
            "a number > 0",
        )
        _require(np.isfinite(self.reg) and self.reg >= 0, "reg", self.reg, "a number >= 0")
        _require(
            self.reg_bias is None or (np.isfinite(self.reg_bias) and self.reg_bias >= 0),
            "reg_bias",
            self.reg_bias,
            "None or a number >= 0",
        )
        _require(np.isfinite(self.init_std) and self.init_std >= 0, "init_std", self.init_std, "a number >= 0")
        _require(_is_int(self.seed) and self.seed >= 0, "seed", self.seed, "an integer >= 0")

    @property
    def bias_reg(self) -> float:
        """reg_b: reg_bias, or reg where it is None."""
        return self.reg if self.reg_bias is None else self.reg_bias


@dataclass(frozen=True)
class SgdFit:
    """Factors, biases and history of one SGD fit."""

    X: np.ndarray  # (n_users, k) float32
    Y: np.ndarray  # (n_items, k) float32
    user_bias: np.ndarray | None  # (n_users,) float32, None when spec.biases is False
    item_bias: np.ndarray | None  # (n_items,) float32, None when spec.biases is False
    mu: float  # mean training rating; 0 without biases
    losses: list[float] = field(default_factory=list)  # objective J after each epoch so far


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _require(ok: bool, name: str, value, what: str) -> None:
    if not ok:
        raise ValueError(f"{name} must be {what}, got {value!r}")


def init_factors(spec: SgdSpec, n_users: int, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """(X (n_users, k), Y (n_items, k)) float64 drawn N(0, init_std^2), X first, from the seed alone."""
    g = np.random.default_rng([spec.seed, _INIT_STREAM])
    X = g.normal(0.0, spec.init_std, (n_users, spec.rank))
    return X, g.normal(0.0, spec.init_std, (n_items, spec.rank))


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """(n,) int64: the order in which epoch `epoch` visits the n ratings, from (seed, epoch) alone."""
    return np.random.default_rng([seed, _ORDER_STREAM, epoch]).permutation(n)


def _epoch_numpy(u, i, r, order, X, Y, bu, bi, mu, lr, reg, reg_b, biased):
    """compiled.sgd_epoch with a numpy step per rating: the backend where numba is missing, and its reference."""
    for n in order:
        a, b = u[n], i[n]
        x, y = X[a].copy(), Y[b].copy()
        e = r[n] - mu - x @ y
        if biased:
            e -= bu[a] + bi[b]
            bu[a] += lr * (e - reg_b * bu[a])
            bi[b] += lr * (e - reg_b * bi[b])
        X[a] = x + lr * (e * y - reg * x)
        Y[b] = y + lr * (e * x - reg * y)


def sgd_epoch(
    users: np.ndarray,
    items: np.ndarray,
    ratings: np.ndarray,
    order: np.ndarray,
    X: np.ndarray,
    Y: np.ndarray,
    user_bias: np.ndarray,
    item_bias: np.ndarray,
    mu: float,
    spec: SgdSpec,
    backend: str = "auto",
) -> None:
    """One step per rating, in `order`, updating X, Y (float64, (n, k)) and the biases (float64, (n,))
    in place. Without spec.biases the biases are neither read nor written. `backend`: one of
    compiled.BACKENDS (the compiled loop, or the per-rating numpy loop)."""
    for name, a in (("X", X), ("Y", Y), ("user_bias", user_bias), ("item_bias", item_bias)):
        if a.dtype != np.float64 or not a.flags.c_contiguous:
            raise ValueError(f"{name} must be a C-contiguous float64 array (updated in place), got {a.dtype}")
    args = (
        np.asarray(users, np.int64),
        np.asarray(items, np.int64),
        np.asarray(ratings, np.float64),
        np.asarray(order, np.int64),
        X,
        Y,
        user_bias,
        item_bias,
        float(mu),
        float(spec.learning_rate),
        float(spec.reg),
        float(spec.bias_reg),
        bool(spec.biases),
    )
    if compiled.chosen(backend):
        compiled.sgd_epoch(*args)
    else:
        _epoch_numpy(*args)


def _check_ids(ids: np.ndarray, n: int, name: str, n_name: str, allow_unknown: bool = False) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
        raise ValueError(f"{name} must be a 1-d integer array, got shape {ids.shape} dtype {ids.dtype}")
    lo = -1 if allow_unknown else 0
    if ids.size and (ids.min() < lo or ids.max() >= n):
        bad = ids[(ids < lo) | (ids >= n)][0]
        raise ValueError(f"{name}: id {int(bad)} outside [{lo}, {n_name}={n})")
    return ids.astype(np.int64)


def objective(
    users: np.ndarray,
    items: np.ndarray,
    ratings: np.ndarray,
    X: np.ndarray,
    Y: np.ndarray,
    user_bias: np.ndarray | None,
    item_bias: np.ndarray | None,
    mu: float,
    spec: SgdSpec,
) -> float:
    """J (module docstring) in float64: squared errors plus each rating's share of the penalties."""
    sq = 0.0
    for s in range(0, users.size, _LOSS_CHUNK):
        u, i = users[s : s + _LOSS_CHUNK], items[s : s + _LOSS_CHUNK]
        p = mu + np.einsum("ij,ij->i", X[u].astype(np.float64), Y[i].astype(np.float64))
        if user_bias is not None:
            p += user_bias[u].astype(np.float64) + item_bias[i].astype(np.float64)
        sq += float(np.sum((ratings[s : s + _LOSS_CHUNK] - p) ** 2))
    n_u = np.bincount(users, minlength=X.shape[0]).astype(np.float64)
    n_i = np.bincount(items, minlength=Y.shape[0]).astype(np.float64)
    pen = spec.reg * (n_u @ np.sum(np.square(X, dtype=np.float64), 1) + n_i @ np.sum(np.square(Y, dtype=np.float64), 1))
    if user_bias is not None:
        pen += spec.bias_reg * (
            n_u @ np.square(user_bias, dtype=np.float64) + n_i @ np.square(item_bias, dtype=np.float64)
        )
    return sq + float(pen)


def fit_sgd(
    users: np.ndarray,
    items: np.ndarray,
    ratings: np.ndarray,
    n_users: int,
    n_items: int,
    spec: SgdSpec = SgdSpec(),
    on_epoch: Callable[[int, SgdFit], None] | None = None,
    backend: str = "auto",
) -> SgdFit:
    """Fit biased MF by SGD (module docstring) to ratings r[n] of (users[n], items[n]).

    Parameters
    ----------
    users, items : (nnz,) int      dense indices in [0, n_users), [0, n_items)
    ratings : (nnz,) float         finite values
    n_users, n_items : int         rows of X and Y, >= 0
    spec : SgdSpec
    on_epoch : callable(epoch, fit), optional   called after each epoch with a snapshot (float32 copies)
    backend : str                   "auto" | "compiled" | "numpy" (compiled.BACKENDS)
    Returns SgdFit. Raises ValueError naming the bad argument.
    """
    _require(_is_int(n_users) and n_users >= 0, "n_users", n_users, "an integer >= 0")
    _require(_is_int(n_items) and n_items >= 0, "n_items", n_items, "an integer >= 0")
    u = _check_ids(users, n_users, "users", "n_users")
    i = _check_ids(items, n_items, "items", "n_items")
    r = np.asarray(ratings, np.float64)
    if r.shape != u.shape or i.shape != u.shape:
        raise ValueError(f"ratings: users {u.shape}, items {i.shape} and ratings {r.shape} must have one shape")
    if not np.all(np.isfinite(r)):
        raise ValueError("ratings must be finite")
    compiled.chosen(backend)  # a bad backend name fails before any work
    X, Y = init_factors(spec, n_users, n_items)
    bu, bi = np.zeros(n_users), np.zeros(n_items)
    mu = float(r.mean()) if spec.biases and r.size else 0.0
    losses: list[float] = []

    def snapshot() -> SgdFit:
        b = (bu.astype(np.float32), bi.astype(np.float32)) if spec.biases else (None, None)
        return SgdFit(X.astype(np.float32), Y.astype(np.float32), b[0], b[1], mu, list(losses))

    for epoch in range(spec.epochs):
        sgd_epoch(u, i, r, epoch_order(spec.seed, epoch, r.size), X, Y, bu, bi, mu, spec, backend)
        losses.append(objective(u, i, r, X, Y, bu if spec.biases else None, bi if spec.biases else None, mu, spec))
        if on_epoch is not None:
            on_epoch(epoch, snapshot())
    return snapshot()


def predict(fit: SgdFit, users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """(m,) float64 mu + b_u + b_i + x_u . y_i per pair; an index of -1 (unknown) contributes neither
    its bias nor the product, so an unknown user gets mu + b_i and an unknown pair mu."""
    u = _check_ids(users, fit.X.shape[0], "users", "n_users", allow_unknown=True)
    i = _check_ids(items, fit.Y.shape[0], "items", "n_items", allow_unknown=True)
    if u.shape != i.shape:
        raise ValueError(f"users {u.shape} and items {i.shape} must have one shape")
    out = np.full(u.size, fit.mu, np.float64)
    known_u, known_i = u >= 0, i >= 0
    both = known_u & known_i
    for s in range(0, u.size, _LOSS_CHUNK):
        sl = np.flatnonzero(both[s : s + _LOSS_CHUNK]) + s
        out[sl] += np.einsum("ij,ij->i", fit.X[u[sl]].astype(np.float64), fit.Y[i[sl]].astype(np.float64))
    if fit.user_bias is not None:
        out[known_u] += fit.user_bias[u[known_u]]
        out[known_i] += fit.item_bias[i[known_i]]
    return out
