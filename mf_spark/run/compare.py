"""Methods side by side on one split: the simple models the field starts from beside ALS.

    explicit data   popularity, biases, svd (zero-filled), sgd (with biases), als, als_biases, nmf
    implicit data   popularity, svd (zero-filled), als (w0 = 1, Hu-Koren-Volinsky), wals at each
                    compare_w0 (w0 < 1), nmf

Every method gives factors (kernels.baselines: biases and popularity as rank-0 factors), so one
scorer, one top-N and one evaluation serve them all: held-out RMSE and MAE (explicit data; not for
popularity, which ranks), precision, recall, NDCG, MAP at eval.k and catalog coverage, with the
user's training items excluded, and the fit's seconds. The ALS methods are the run's [model]
settings with the one change their name says.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pyarrow as pa

from mf_spark import evaluate
from mf_spark.als import loop as als
from mf_spark.core.config import RunConfig
from mf_spark.core.types import ITEM_IDX, RATING, USER_IDX, Factors
from mf_spark.data.prepare import Ready
from mf_spark.data.ready import Triples, as_df, session_of
from mf_spark.kernels import baselines, sgd
from mf_spark.model import topn
from mf_spark.model.factors import FactorModel

log = logging.getLogger("mf_spark")

COLUMNS = ("method", "rmse", "mae", "precision_at_k", "recall_at_k", "ndcg_at_k", "map_at_k", "coverage", "fit_seconds")
W0S = (0.1, 0.3)  # the unobserved weights of the wals rows (implicit data)


@dataclass(frozen=True)
class Method:
    name: str
    fit: Callable[[Ready, RunConfig], Factors]
    predicts_ratings: bool = True  # False: a ranking only (popularity): no RMSE


def _arrays(ready: Ready) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The training triples on the driver (collected once when the Spark front end holds them)."""
    t = ready.train
    if isinstance(t, Triples):
        return t.u, t.i, t.r
    table = as_df(t).select(USER_IDX, ITEM_IDX, RATING).toArrow()
    return (table.column(USER_IDX).to_numpy(), table.column(ITEM_IDX).to_numpy(), table.column(RATING).to_numpy())


def _baseline(make: Callable[..., baselines.Baseline]) -> Callable[[Ready, RunConfig], Factors]:
    def fit(ready: Ready, run: RunConfig) -> Factors:
        return Factors(**vars(make(ready, run, *_arrays(ready))))

    return fit


def _svd(ready: Ready, run: RunConfig, u, i, r) -> baselines.Baseline:
    values = r if run.model.kind == "explicit" else np.ones_like(r)  # implicit: the 0/1 matrix
    return baselines.zero_filled_svd(u, i, values, ready.users.size, ready.items.size, run.model.rank, run.model.seed)


def _sgd(ready: Ready, run: RunConfig) -> Factors:
    got = sgd.fit_sgd(
        *_arrays(ready), ready.users.size, ready.items.size, sgd.SgdSpec(rank=run.model.rank, seed=run.model.seed)
    )
    return Factors(got.X, got.Y, got.user_bias, got.item_bias, got.mu)


def _als(**changes: Any) -> Callable[[Ready, RunConfig], Factors]:
    def fit(ready: Ready, run: RunConfig) -> Factors:
        cfg = dataclasses.replace(run.model, **changes)
        return als.fit(
            ready.train, ready.users.size, ready.items.size, cfg, stats=ready.stats, user_ids=ready.users.ids
        ).factors

    return fit


def methods(kind: str, w0s: tuple[float, ...] = W0S) -> list[Method]:
    """The methods compared on data of this kind, in the order of the table."""
    common = [
        Method(
            "popularity",
            _baseline(lambda ready, run, u, i, r: baselines.popularity(u, i, ready.users.size, ready.items.size)),
            predicts_ratings=False,
        )
    ]
    svd = Method("svd", _baseline(_svd))
    if kind == "explicit":
        return [
            *common,
            Method(
                "biases",
                _baseline(lambda ready, run, u, i, r: baselines.biases(u, i, r, ready.users.size, ready.items.size)),
            ),
            svd,
            Method("sgd", _sgd),
            Method("als", _als(biases=False)),
            Method("als_biases", _als(biases=True)),
            Method("nmf", _als(nonnegative=True, biases=False)),
        ]
    return [
        *common,
        svd,
        Method("als", _als(unobserved_weight=1.0)),
        *[Method(f"wals_w0_{w0:g}", _als(unobserved_weight=w0)) for w0 in w0s],
        Method("nmf", _als(nonnegative=True)),
    ]


def compare(ready: Ready, run: RunConfig, chosen: list[Method]) -> pa.Table:
    """One row per method (COLUMNS), fitted on `ready.train`, scored on `ready.heldout`."""
    kind, seen, remote = run.model.kind, None, None
    threshold = evaluate.relevance_threshold(run)
    if ready.heldout.whole:
        relevant = evaluate.relevant_items(ready.heldout, threshold)
        ranking = evaluate.RankingEvaluator(ready.train, relevant, ready.items.size, run.eval.k, on_driver=True)
        scored = lambda scorer: {**evaluate.error_metrics(scorer, ready.heldout), **ranking(scorer)}
    else:  # the driver holds a sample: every held-out row is scored where the tasks keep them
        remote = evaluate.InTasks(ready.heldout, ready.users, ready.items, threshold, run.eval.k)
        seen = topn.seen_lists(as_df(ready.train)).cache()
        scored = lambda scorer: remote(scorer, remote.lists(seen, scorer))
    spark = session_of(ready.train)
    rows = []
    for method in chosen:
        started = time.perf_counter()
        factors = method.fit(ready, run)
        seconds = time.perf_counter() - started
        model = FactorModel.trained(kind, factors, ready.users, ready.items, ready.stats, run.to_dict(), spark)
        scores = scored(model.scorer)
        if not method.predicts_ratings:
            scores.update(rmse=None, mae=None)
        row = {"method": method.name, **{k: scores[k] for k in COLUMNS[1:8]}, "fit_seconds": seconds}
        log.info(
            "compare: %s", " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())
        )
        rows.append(row)
    if remote is not None:
        remote.close()
        seen.unpersist()
    schema = pa.schema([("method", pa.string())] + [(c, pa.float64()) for c in COLUMNS[1:]])
    return pa.Table.from_pylist(rows, schema)


def table_text(table: pa.Table, k: int) -> str:
    """The comparison as an aligned text table (what the job prints and writes as comparison.txt)."""
    heads = ["method", "RMSE", "MAE", f"P@{k}", f"R@{k}", f"NDCG@{k}", f"MAP@{k}", "coverage", "fit s"]
    cells = [
        [r["method"]]
        + ["-" if r[c] is None else f"{r[c]:.4f}" if c != "fit_seconds" else f"{r[c]:.2f}" for c in COLUMNS[1:]]
        for r in table.to_pylist()
    ]
    widths = [max(len(h), *(len(row[n]) for row in cells)) for n, h in enumerate(heads)]
    line = lambda values: "  ".join(
        v.ljust(w) if n == 0 else v.rjust(w) for n, (v, w) in enumerate(zip(values, widths))
    )
    return "\n".join([line(heads), *(line(row) for row in cells)]) + "\n"
