"""The run's report: one self-contained report.html that the train, tune and compare jobs write into
their output folder. It holds, as sections:

    metrics          held-out quality (RMSE, MAE, ranking at k, coverage), sizes, time per phase, [model]
    history          the objective, train / held-out RMSE and held-out ranking metrics per iteration
    data             rows read / used / rejected / dropped / merged, the rating distribution, and the
                     long tails of ratings per user and per item
    recommendations  catalog coverage, and how much of the top-N goes to the most popular items
    comparison       the compare job's methods side by side, the best value of each column marked
    tuning           metric by trial, metric against each searched parameter, validation curves, top 10

The page opens offline and anywhere: CSS and SVG charts inline, no script, no font, no external URL
(its Content-Security-Policy forbids them, so a stray one fails loudly in a browser). It is also
well-formed XML, so tests read it with ElementTree. Each builder copes with what a run may lack (an
implicit model has no RMSE, a failed trial no metric, a one-iteration fit no curve): a missing value
reads "n/a", a chart without data becomes a one-line note. Charts come from three helpers, `_plot`
(lines and points), `_bars` (bars, grouped bars, histograms) and `_stack` (one stacked bar), over one
axis helper (nice linear ticks, decade ticks on log axes, categories).
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Sequence

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from mf_spark.core.types import ITEM_IDX, RATING, USER_IDX
from mf_spark.data.ready import Keyed, TrainStats, Triples, as_df, rated, value_counts

# Tableau 10: distinct in print and for the common colour-vision deficiencies.
PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#b07aa1", "#edc948", "#9c755f", "#ff9da7", "#bab0ac")
BLUE, ORANGE, GREEN, RED, TEAL, PURPLE = PALETTE[:6]
GREY = PALETTE[9]
BEST = ORANGE  # the best trial, method or value, wherever it is marked
MAX_DISTINCT = 20  # up to this many distinct rating values: one histogram bin per value
N_BINS = 30
LOG_SPAN = 100.0  # positive ratings with max / min above this: log-spaced bins
MAX_POINTS = 400  # points of a long-tail curve: the shape survives, the page stays small
W, H = 640, 260  # a full-width chart
SMALL = (312, 220)  # one of a row of small multiples

LABELS = {
    "rmse": "RMSE",
    "mae": "MAE",
    "precision_at_k": "precision@{k}",
    "recall_at_k": "recall@{k}",
    "ndcg_at_k": "NDCG@{k}",
    "map_at_k": "MAP@{k}",
    "coverage": "coverage",
    "loss": "objective",
    "train_rmse": "train RMSE",
    "test_rmse": "held-out RMSE",
    "fit_seconds": "fit seconds",
}
LOWER_IS_BETTER = {"rmse", "mae", "loss", "fit_seconds", "train_rmse", "test_rmse"}
QUALITY = {
    "rmse": "root mean squared error of the held-out ratings (clipped predictions)",
    "mae": "mean absolute error of the held-out ratings",
    "precision_at_k": "share of each top-k list that is a relevant held-out item",
    "recall_at_k": "share of each user's relevant held-out items found in the top-k",
    "ndcg_at_k": "rank-discounted gain of the top-k; 1 = the relevant items ranked first",
    "map_at_k": "mean average precision of the top-k",
    "coverage": "share of the catalog in some evaluated user's top-k",
}
RUN_FACTS = (
    ("n_train", "training ratings"),
    ("n_test", "held-out ratings"),
    ("n_test_cold", "held out, cold"),
    ("n_users", "users"),
    ("n_items", "items"),
    ("k", "k"),
    ("n_users_evaluated", "users evaluated"),
    ("fit_seconds", "fit seconds"),
    ("fit_startup_seconds", "fit startup seconds"),
    ("n_user_days", "day biases (user, day pairs)"),
    ("exchange", "exchange"),
    ("front_end", "front end"),
)
SERIES_COLOURS = {
    "loss": BLUE,
    "train_rmse": BLUE,
    "test_rmse": ORANGE,
    "train_mae": GREEN,
    "test_mae": RED,
    "ndcg_at_k": GREEN,
    "precision_at_k": PURPLE,
    "recall_at_k": TEAL,
    "map_at_k": RED,
}


@dataclass(frozen=True)
class Section:
    heading: str
    html: str  # body HTML, built by the section builders below


@dataclass(frozen=True)
class DataProfile:
    """What the training ratings look like: for the report's data section."""

    kind: str  # "explicit" | "implicit"
    n_ratings: int
    n_users: int
    n_items: int
    # (b+1,) float64 histogram bin edges of the rating values. Up to MAX_DISTINCT distinct values:
    # one bin per value v_j, [v_j, v_j+1), the last closed and as wide as the one before it.
    rating_edges: np.ndarray
    rating_counts: np.ndarray  # (b,) int64
    user_activity: np.ndarray  # (n_users,) int64 ratings per user, sorted descending
    item_activity: np.ndarray  # (n_items,) int64 ratings per item, indexed by item index (NOT sorted)

    @classmethod
    def of(
        cls,
        train: Triples | Keyed | DataFrame,
        n_users: int,
        n_items: int,
        kind: str,
        activity: tuple[np.ndarray, np.ndarray] | None = None,
        stats: TrainStats | None = None,
    ) -> "DataProfile":
        """The profile of training ratings held by the driver (Triples) or by Spark (user_idx,
        item_idx, rating). Both give the same profile. `activity`: the ratings per user and per
        item when already counted (a fit's engine counts them, als.FitResult.row_counts); `stats`:
        theirs, whose distinct values, when counted, give the histogram.

        Performance note (DataFrame): without `activity` two aggregations, each a shuffle of counts
        (per user, per item); then one per distinct rating (up to MAX_DISTINCT + 1 rows) and, for more
        distinct ratings, two more (the range, then the count per bin); the n_users + n_items counts
        are collected, never the ratings.
        """
        if isinstance(train, Triples):
            users, items = activity or (
                np.bincount(train.u, minlength=n_users),
                np.bincount(train.i, minlength=n_items),
            )
            edges, counts = _histogram(np.asarray(train.r, np.float64))
        else:
            users, items = activity or tuple(
                _spark_counts(as_df(train), col, n) for col, n in ((USER_IDX, n_users), (ITEM_IDX, n_items))
            )
            if stats is not None and stats.values is not None:
                edges, counts = _counted_histogram(stats.values)
            else:
                edges, counts = _spark_histogram(rated(train).select(F.col(RATING).cast("double").alias(RATING)))
        return cls(
            kind,
            int(items.sum()),
            n_users,
            n_items,
            edges,
            counts,
            np.sort(users.astype(np.int64))[::-1].copy(),
            items.astype(np.int64),
        )


def _distinct_edges(values: np.ndarray) -> np.ndarray:
    """Edges of one bin per distinct value (ascending), each bin starting at its value."""
    last = values[-1] - values[-2] if values.size > 1 else 1.0
    return np.append(values, values[-1] + last).astype(np.float64)


def _bin_edges(lo: float, hi: float, integer: bool) -> np.ndarray:
    """About N_BINS bins [e_j, e_j+1) over [lo, hi] (lo < hi; the last bin closed), log-spaced for
    heavy tails. Integer ratings (counts) get integer edges, so every bin holds whole values and
    none is empty for falling between two of them: at the low end of a log scale, one value a bin."""
    log = lo > 0 and hi / lo > LOG_SPAN
    if not integer:
        return np.geomspace(lo, hi, N_BINS + 1) if log else np.linspace(lo, hi, N_BINS + 1)
    if log:
        return np.unique(np.round(np.geomspace(lo, hi + 1, N_BINS + 1)))
    width = math.ceil((hi + 1 - lo) / N_BINS)
    return lo + width * np.arange(math.ceil((hi + 1 - lo) / width) + 1, dtype=np.float64)


def _bins_spark(col, edges: np.ndarray):
    """The bin of each rating as a Spark column: plain comparisons with the edges, exact as
    np.searchsorted's on the driver, so both front ends count a rating on an edge alike."""
    out = F.lit(edges.size - 2)
    for j in range(edges.size - 2, 0, -1):
        out = F.when(col < float(edges[j]), j - 1).otherwise(out)
    return out


def _histogram(r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Edges and counts of the ratings on the driver, in linear time (ready.value_counts)."""
    if r.size == 0:
        return np.array([0.0, 1.0]), np.zeros(1, np.int64)
    few = value_counts(r, MAX_DISTINCT)
    return (_distinct_edges(few[0]), few[1]) if few is not None else _binned(r)


def _counted_histogram(values: tuple[tuple[float, int], ...]) -> tuple[np.ndarray, np.ndarray]:
    """The same edges and counts from the ratings' distinct values and their counts (TrainStats.values)."""
    v = np.array([x for x, _ in values], np.float64)
    c = np.array([n for _, n in values], np.int64)
    return (_distinct_edges(v), c) if v.size <= MAX_DISTINCT else _binned(v, c)


def _binned(v: np.ndarray, counts: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Edges of equal bins over the values `v` and how many ratings fall in each (`counts`: of each
    value; None: one each)."""
    edges = _bin_edges(float(v.min()), float(v.max()), bool(np.all(v == np.round(v))))
    bins = np.minimum(np.searchsorted(edges, v, side="right") - 1, edges.size - 2)
    return edges, np.bincount(bins, weights=counts, minlength=edges.size - 1).astype(np.int64)


def _spark_counts(df: DataFrame, col: str, n: int) -> np.ndarray:
    t = df.groupBy(col).count().toArrow()
    out = np.zeros(n, np.int64)
    out[t.column(col).to_numpy()] = t.column("count").to_numpy()
    return out


def _spark_histogram(ratings: DataFrame) -> tuple[np.ndarray, np.ndarray]:
    few = ratings.groupBy(RATING).count().limit(MAX_DISTINCT + 1).toArrow().sort_by(RATING)
    if few.num_rows == 0:
        return np.array([0.0, 1.0]), np.zeros(1, np.int64)
    if few.num_rows <= MAX_DISTINCT:
        return _distinct_edges(few.column(RATING).to_numpy()), few.column("count").to_numpy().astype(np.int64)
    r = F.col(RATING)
    lo, hi, fractional = ratings.agg(F.min(r), F.max(r), F.count(F.when(r != F.round(r), 1))).first()
    edges = _bin_edges(float(lo), float(hi), fractional == 0)
    t = ratings.groupBy(_bins_spark(r, edges).alias("bin")).count().toArrow()
    counts = np.zeros(edges.size - 1, np.int64)
    counts[t.column("bin").to_numpy()] = t.column("count").to_numpy()
    return edges, counts


# ---- text -----------------------------------------------------------------------------------------
_e = html.escape


def _num(v: Any) -> float:
    """A metric value as a float; NaN for missing, non-numeric or boolean values."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
        return math.nan
    return float(v)


def _fmt(v: Any) -> str:
    """A value's text: n/a when missing, thousands separators for counts, else 4 significant digits."""
    if isinstance(v, np.generic):
        v = v.item()
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if v == 0:
            return "0"
        if 1e4 <= abs(v) < 1e15:
            return f"{v:,.0f}"
        return f"{v:.3e}" if abs(v) < 1e-3 else f"{v:.4g}"
    return str(v)


def _pct(share: float | None) -> str:
    if share is None or not math.isfinite(share):
        return "n/a"
    return "<0.1%" if 0 < share < 0.001 else f"{share:.1%}".replace(".0%", "%")


def _secs(v: Any) -> str:
    return "n/a" if math.isnan(_num(v)) else f"{_fmt(float(v))} s"


def _short(v: float) -> str:
    """A tick label: 4 digits at most, k and M for thousands and millions."""
    a = abs(v)
    if a >= 1e6:
        return f"{v / 1e6:.4g}M"
    if a >= 1e4:
        return f"{v / 1e3:.4g}k"
    return f"{v:.4g}"


def _label(name: str, k: Any = None) -> str:
    """Display name of a metric key: ndcg_at_k -> NDCG@10."""
    text = LABELS.get(name) or LABELS.get(name.removeprefix("test_")) or name.replace("_", " ")
    if name.startswith("test_") and name not in LABELS:
        text = "held-out " + text
    return text.format(k="k" if k is None else k)


def _note(text: str) -> str:
    return f'<p class="note">{_e(text)}</p>'


class _Text(str):
    """A table cell formatted already (a share, a rank): counts as a number for the alignment."""


def _table(head: Sequence[str], rows: Sequence[Sequence[Any]], best: set[tuple[int, int]] = frozenset()) -> str:
    """An HTML table; columns of (mostly) numbers are right-aligned, `best` (row, column) cells marked."""

    def numeric_column(col: Sequence[Any]) -> bool:  # mostly numbers (formatted cells count as such)
        kinds = [isinstance(v, _Text) or not math.isnan(_num(v)) for v in col if v is not None]
        return bool(kinds) and 2 * sum(kinds) >= len(kinds)

    numeric = [numeric_column(col) for col in zip(*rows)] if rows else [False] * len(head)
    out = ["<table><thead><tr>"]
    out += [f'<th class="num">{_e(h)}</th>' if numeric[j] else f"<th>{_e(h)}</th>" for j, h in enumerate(head)]
    out.append("</tr></thead><tbody>")
    for i, row in enumerate(rows):
        cells = []
        for j, v in enumerate(row):
            classes = " ".join(c for c, on in (("num", numeric[j]), ("best", (i, j) in best)) if on)
            text = _e(v if isinstance(v, _Text) else _fmt(v))
            cells.append(f'<td class="{classes}">{text}</td>' if classes else f"<td>{text}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    return "".join(out) + "</tbody></table>"


def _kv(pairs: dict[str, Any]) -> str:
    """Settings as a compact grid of key = value."""
    cells = "".join(
        f"<dt>{_e(str(k))}</dt><dd>{_e(_fmt(v) if v is not None else 'none')}</dd>" for k, v in pairs.items()
    )
    return f'<dl class="kv">{cells}</dl>'


# ---- charts ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Axis:
    """One chart axis: the data range it spans, its ticks, and how they read."""

    lo: float
    hi: float
    ticks: tuple[float, ...]
    log: bool = False
    cats: tuple[str, ...] = ()  # categorical: category j sits at j
    fmt: Callable[[float], str] = _short

    def to(self, v: Any, a: float, b: float) -> np.ndarray:
        """Data values -> pixels, lo at a and hi at b."""
        v, lo, hi = np.asarray(v, np.float64), self.lo, self.hi
        if self.log:
            v, lo, hi = np.log10(np.maximum(v, 1e-300)), math.log10(lo), math.log10(hi)
        return a + (v - lo) / (hi - lo) * (b - a)

    def text(self, t: float) -> str:
        return self.cats[int(round(t))] if self.cats else self.fmt(t)


def _nice(x: float) -> float:
    """The smallest 1, 2, 2.5 or 5 x 10^e at least x: a tick step that reads easily."""
    e = 10.0 ** math.floor(math.log10(x))
    return next(m * e for m in (1, 2, 2.5, 5, 10) if m * e >= x * (1 - 1e-9))


def _axis(
    values: Any,
    log: bool = False,
    zero: bool = False,
    integer: bool = False,
    fmt: Callable[[float], str] = _short,
    pad: float = 0.0,
) -> _Axis:
    """An axis over the finite (log: positive) values, ending on ticks: decades on a log axis (with
    2 and 5 between when it spans two or fewer), else about five 1-2-2.5-5 steps."""
    v = np.asarray(values, np.float64).ravel()
    v = v[np.isfinite(v) & (v > 0)] if log else v[np.isfinite(v)]
    if log:
        lo_e, hi_e = (math.floor(math.log10(v.min())), math.ceil(math.log10(v.max()))) if v.size else (0, 1)
        step = max(1, math.ceil((hi_e - lo_e) / 6))
        hi_e = lo_e + step * max(1, math.ceil((hi_e - lo_e) / step))
        ticks = [10.0**e for e in range(lo_e, hi_e + 1, step)]
        if hi_e - lo_e <= 2:
            ticks = [m * 10.0**e for e in range(lo_e, hi_e) for m in (1, 2, 5)] + [10.0**hi_e]
        return _Axis(10.0**lo_e, 10.0**hi_e, tuple(ticks), log=True, fmt=fmt)
    lo, hi = (float(v.min()), float(v.max())) if v.size else (0.0, 1.0)
    if zero:
        lo, hi = min(lo, 0.0), max(hi, 0.0)
    # `pad` keeps points clear of the frame, never taking a non-negative axis below 0
    lo, hi = (max(0.0, lo - pad * (hi - lo)) if lo >= 0 else lo - pad * (hi - lo)), hi + pad * (hi - lo)
    if hi - lo <= 1e-12 * max(abs(lo), abs(hi)):  # one value: a range around it
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = (lo, lo + pad) if zero and lo == 0 else (lo - pad, hi + pad)
    step = _nice((hi - lo) / 5)
    if integer:
        step = max(1.0, math.ceil(step))
    lo, hi = math.floor(lo / step + 1e-9) * step, math.ceil(hi / step - 1e-9) * step
    ticks = tuple(float(f"{lo + j * step:.12g}") for j in range(int(round((hi - lo) / step)) + 1))
    return _Axis(lo, hi, ticks, fmt=fmt)


def _cats(labels: Sequence[str]) -> _Axis:
    return _Axis(-0.5, len(labels) - 0.5, tuple(range(len(labels))), cats=tuple(labels))


def _legend(entries: Sequence[tuple[str, str, bool]], right: float, y: float) -> str:
    """Legend swatches (a line or a dot) with labels, laid out leftwards from `right`."""
    out, x = [], right
    for label, colour, dot in reversed(entries):
        x -= 7.0 * len(label) + 28  # ~7 px a character at 11 px (DejaVu Sans, the widest)
        mark = (
            f'<circle cx="{x + 7:.1f}" cy="{y - 4:.1f}" r="4" fill="{colour}"/>'
            if dot
            else f'<line x1="{x:.1f}" y1="{y - 4:.1f}" x2="{x + 14:.1f}" y2="{y - 4:.1f}" stroke="{colour}" '
            f'stroke-width="2.5"/>'
        )
        out.append(f'{mark}<text x="{x + 19:.1f}" y="{y:.1f}">{_e(label)}</text>')
    return "".join(out)


def _svg(w: int, h: int, title: str, body: Sequence[str]) -> str:
    return (
        f'<div class="chart"><svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
        f'viewBox="0 0 {w} {h}" role="img" aria-label="{_e(title)}">'
        f'<text class="title" x="2" y="15">{_e(title)}</text>{"".join(body)}</svg></div>'
    )


def _frame(
    x: _Axis, y: _Axis, box: tuple[float, float, float, float], xlabel: str, ylabel: str, xgrid: bool = False
) -> list[str]:
    """Grid lines, ticks, tick labels, axis lines and axis labels of the plot area box (l, t, r, b)."""
    l, t, r, b = box
    out = []
    for v in y.ticks:
        py = float(y.to(v, b, t))
        out.append(
            f'<line class="grid" x1="{l}" y1="{py:.1f}" x2="{r}" y2="{py:.1f}"/>'
            f'<text x="{l - 6}" y="{py + 3.5:.1f}" text-anchor="end">{_e(y.text(v))}</text>'
        )
    every = max(1, math.ceil(len(x.ticks) * 44 / max(r - l, 1)))  # labels at least ~44 px apart
    for j, v in enumerate(x.ticks):
        px = float(x.to(v, l, r))
        if xgrid:
            out.append(f'<line class="grid" x1="{px:.1f}" y1="{t}" x2="{px:.1f}" y2="{b}"/>')
        out.append(f'<line class="axis" x1="{px:.1f}" y1="{b}" x2="{px:.1f}" y2="{b + 4}"/>')
        if j % every == 0:
            out.append(f'<text x="{px:.1f}" y="{b + 16}" text-anchor="middle">{_e(x.text(v)[:14])}</text>')
    out.append(f'<line class="axis" x1="{l}" y1="{b}" x2="{r}" y2="{b}"/>')
    if xlabel:
        out.append(f'<text class="label" x="{(l + r) / 2:.1f}" y="{b + 32}" text-anchor="middle">{_e(xlabel)}</text>')
    if ylabel:
        out.append(
            f'<text class="label" transform="translate(12,{(t + b) / 2:.1f}) rotate(-90)" '
            f'text-anchor="middle">{_e(ylabel)}</text>'
        )
    return out


@dataclass(frozen=True)
class _Series:
    """One line and/or set of points of a plot; a label of None keeps it out of the legend."""

    label: str | None
    x: Any
    y: Any
    colour: str
    width: float = 2.0  # line width; 0: no line
    radius: float = 0.0  # point radius; 0: no points
    opacity: float = 1.0
    tips: Sequence[str] = ()  # hover text per point (an SVG <title>: no script needed)


def _plot(
    series: Sequence[_Series],
    title: str,
    xlabel: str = "",
    ylabel: str = "",
    xlog: bool = False,
    ylog: bool = False,
    xcats: Sequence[str] = (),
    xint: bool = False,
    yfmt: Callable = _short,
    size: tuple[int, int] = (W, H),
) -> str:
    """Lines and points on shared axes. Non-finite points (and non-positive ones on a log axis) are
    left out, and a line breaks there. A note instead when no series has a point."""

    def keep(s: _Series) -> np.ndarray:
        x, y = np.asarray(s.x, np.float64), np.asarray(s.y, np.float64)
        ok = np.isfinite(x) & np.isfinite(y)
        return ok & (x > 0 if xlog else True) & (y > 0 if ylog else True)

    masks = [keep(s) for s in series]
    if not any(m.any() for m in masks):
        return _note(f"{title}: no values to plot.")
    xs = np.concatenate([np.asarray(s.x, np.float64)[m] for s, m in zip(series, masks)])
    ys = np.concatenate([np.asarray(s.y, np.float64)[m] for s, m in zip(series, masks)])
    x = _cats(xcats) if xcats else _axis(xs, log=xlog, integer=xint)
    y = _axis(ys, log=ylog, fmt=yfmt, pad=0.04)
    w, h = size
    box = (56.0, 30.0, w - 20.0, h - (44.0 if xlabel else 28.0))
    out = _frame(x, y, box, xlabel, ylabel)
    for s, m in zip(series, masks):
        px, py = x.to(s.x, box[0], box[2]), y.to(s.y, box[3], box[1])
        attrs = f' opacity="{s.opacity}"' if s.opacity < 1 else ""
        if s.width:
            # one polyline per run of kept points
            runs = np.split(np.arange(m.size), np.flatnonzero(np.diff(m.astype(np.int8))) + 1)
            for run in (r for r in runs if r.size and m[r[0]]):
                pts = " ".join(f"{px[j]:.1f},{py[j]:.1f}" for j in run)
                out.append(
                    f'<polyline points="{pts}" fill="none" stroke="{s.colour}" stroke-width="{s.width}" '
                    f'stroke-linejoin="round"{attrs}/>'
                )
        if s.radius:
            for j in np.flatnonzero(m):
                tip = f"<title>{_e(s.tips[j])}</title>" if j < len(s.tips) else ""
                out.append(
                    f'<circle cx="{px[j]:.1f}" cy="{py[j]:.1f}" r="{s.radius}" fill="{s.colour}" '
                    f'stroke="#fff" stroke-width="0.8"{attrs}>{tip}</circle>'
                )
    out.append(
        _legend([(s.label, s.colour, not s.width) for s, m in zip(series, masks) if s.label and m.any()], w - 8, 15)
    )
    return _svg(w, h, title, out)


def _bars(
    labels: Sequence[str],
    series: Sequence[tuple[str | None, Any, str | Sequence[str]]],
    title: str,
    xlabel: str = "",
    ylabel: str = "",
    horizontal: bool = False,
    edges: Any = None,
    xlog: bool = False,
    fmt: Callable[[float], str] = _short,
    values: bool = True,
    size: tuple[int, int] = (W, H),
) -> str:
    """Bars per category, one per series (label, values, colour or a colour per bar), grouped; or, with
    `edges` (vertical only, one series), a histogram's bars over a numeric axis. Horizontal bars
    name their categories on the left, and the chart grows with them. Missing values draw no bar."""
    vals = [np.asarray(v, np.float64) for _, v, _ in series]
    if not labels and edges is None or not any(np.isfinite(v).any() for v in vals):
        return _note(f"{title}: no values to plot.")
    value_axis = _axis(np.concatenate(vals), zero=True, fmt=fmt)
    n, ns = len(vals[0]), len(series)
    w, h = size
    out: list[str] = []
    if horizontal:
        left = min(220.0, 16 + 6.6 * max(len(s) for s in labels))
        row = 16.0 * ns + 8
        h = int(36 + row * n + (44 if xlabel else 28))
        box = (left, 26.0, w - 56.0, h - (44.0 if xlabel else 28.0))
        out = _frame(value_axis, _Axis(0, 1, ()), box, xlabel, "", xgrid=True)
        for j, name in enumerate(labels):
            y0 = box[1] + j * row + 4
            out.append(f'<text x="{left - 8:.1f}" y="{y0 + row / 2:.1f}" text-anchor="end">{_e(name[:32])}</text>')
    else:
        cat_axis = _axis(edges, log=xlog) if edges is not None else _cats(labels)
        box = (56.0, 30.0, w - 20.0, h - (44.0 if xlabel else 28.0))
        out = _frame(cat_axis, value_axis, box, xlabel, ylabel)
    for s, ((_label, _, colour), v) in enumerate(zip(series, vals)):
        colours = [colour] * n if isinstance(colour, str) else list(colour)
        for j in np.flatnonzero(np.isfinite(v)):
            tip = f"<title>{_e(f'{labels[j]}: ' if len(labels) > j else '')}{_e(fmt(v[j]))}</title>"
            if horizontal:
                y0 = box[1] + j * row + 4 + 16.0 * s
                x0, x1 = sorted(float(p) for p in value_axis.to([0.0, v[j]], box[0], box[2]))
                out.append(
                    f'<rect x="{x0:.1f}" y="{y0:.1f}" width="{max(x1 - x0, 1):.1f}" height="14" '
                    f'fill="{colours[j]}">{tip}</rect>'
                )
                if values:
                    out.append(f'<text x="{x1 + 4:.1f}" y="{y0 + 11:.1f}">{_e(fmt(v[j]))}</text>')
                continue
            if edges is not None:
                a, b = (float(p) for p in cat_axis.to([edges[j], edges[j + 1]], box[0], box[2]))
                a, b = a + 0.5, max(b - 0.5, a + 1)
            else:
                slot = (box[2] - box[0]) / n
                a = box[0] + slot * (j + 0.1 + 0.8 * s / ns)
                b = a + slot * 0.8 / ns
            y0, y1 = sorted(float(p) for p in value_axis.to([0.0, v[j]], box[3], box[1]))
            out.append(
                f'<rect x="{a:.1f}" y="{y0:.1f}" width="{b - a:.1f}" height="{max(y1 - y0, 0.5):.1f}" '
                f'fill="{colours[j]}">{tip}</rect>'
            )
            if values and edges is None and n * ns <= 12:
                out.append(f'<text x="{(a + b) / 2:.1f}" y="{y0 - 3:.1f}" text-anchor="middle">{_e(fmt(v[j]))}</text>')
    if ns > 1:
        out.append(_legend([(lab, c, True) for lab, _, c in series if lab and isinstance(c, str)], w - 8, 15))
    return _svg(w, h, title, out)


def _stack(parts: Sequence[tuple[str, float]], title: str, width: int = W) -> str:
    """One horizontal bar split into the parts' shares, each listed with its count and share below."""
    total = sum(v for _, v in parts)
    if total <= 0:
        return _note(f"{title}: nothing to show.")
    out, x, l, r = [], 2.0, 2.0, width - 2.0
    for j, (label, v) in enumerate(parts):
        dx = (r - l) * v / total
        if dx > 0:
            out.append(
                f'<rect x="{x:.1f}" y="24" width="{dx:.1f}" height="24" fill="{PALETTE[j]}">'
                f"<title>{_e(label)}: {_e(_fmt(v))} ({_e(_pct(v / total))})</title></rect>"
            )
        x += dx
    lx, ly = l, 68
    for j, (label, v) in enumerate(parts):
        text = f"{label}: {_fmt(v)} ({_pct(v / total)})"
        if lx > l and lx + 7 * len(text) + 15 > r:  # the legend wraps
            lx, ly = l, ly + 18
        out.append(
            f'<rect x="{lx:.1f}" y="{ly - 9}" width="10" height="10" fill="{PALETTE[j]}"/>'
            f'<text x="{lx + 15:.1f}" y="{ly}">{_e(text)}</text>'
        )
        lx += 7 * len(text) + 36
    return _svg(width, ly + 10, title, out)


def _sample_ranks(n: int) -> np.ndarray:
    """At most MAX_POINTS ranks of n, dense at the head, where a long tail falls fastest."""
    if n <= MAX_POINTS:
        return np.arange(n)
    return np.unique(
        np.concatenate([np.linspace(0, n - 1, MAX_POINTS // 2), np.geomspace(1, n, MAX_POINTS // 2) - 1]).astype(
            np.int64
        )
    )


def _best_index(v: np.ndarray, lower_is_better: bool) -> int | None:
    """Position of the best finite value (the first on ties), None when there is none."""
    if not np.isfinite(v).any():
        return None
    return int(np.nanargmin(v) if lower_is_better else np.nanargmax(v))


# ---- sections -------------------------------------------------------------------------------------
def metrics_section(metrics: dict) -> Section:
    """Held-out metrics (those computed), run facts, time per phase and the [model] settings."""
    m = metrics or {}
    k = m.get("k")
    quality = [(_label(key, k), m[key], what) for key, what in QUALITY.items() if m.get(key) is not None]
    facts = [(label, m[key]) for key, label in RUN_FACTS if m.get(key) is not None]
    parts = [
        '<div class="cols"><div>',
        _table(["metric", "value", "what it measures"], quality)
        if quality
        else _note("No held-out metrics: there were no test rows, or none applies to this model."),
        "</div><div>",
        _table(["run", ""], facts) if facts else "",
        "</div></div>",
    ]
    timings = m.get("timings") or {}
    phases = [(str(p), _num(s)) for p, s in timings.items() if p != "total" and _num(s) == _num(s)]
    if phases:
        total = timings.get("total", sum(s for _, s in phases))
        parts.append(
            _bars(
                [p.replace("_", " ") for p, _ in phases],
                [(None, [s for _, s in phases], BLUE)],
                f"Time per phase (total {_secs(total)})",
                xlabel="seconds",
                horizontal=True,
                fmt=lambda v: _fmt(float(v)),
            )
        )
    model = (m.get("config") or {}).get("model") if isinstance(m.get("config"), dict) else None
    if isinstance(model, dict) and model:
        parts += ["<h3>Model settings [model]</h3>", _kv(model)]
    versions = m.get("versions")
    if isinstance(versions, dict) and versions:
        parts.append(f'<p class="note">{_e(", ".join(f"{name} {v}" for name, v in versions.items()))}</p>')
    return Section("Results", "".join(parts))


def history_section(history: list[dict], kind: str) -> Section:
    """Per-iteration curves: the objective alone (its scale is its own), the RMSE / MAE ones together,
    and the held-out ranking metrics together; with each metric's final and best value."""
    rows = [h for h in (history or []) if isinstance(h, dict)]
    if not rows:
        return Section("Training history", _note("No iterations were recorded."))
    it = np.array([_num(h.get("iteration", n + 1)) for n, h in enumerate(rows)])
    keys = list(
        dict.fromkeys(
            key for h in rows for key, v in h.items() if key not in ("iteration", "seconds") and not math.isnan(_num(v))
        )
    )
    col = {key: np.array([_num(h.get(key)) for h in rows]) for key in keys}
    radius = 3.0 if len(rows) <= 40 else 0.0
    series = lambda ks: [
        _Series(
            _label(key),
            it,
            col[key],
            SERIES_COLOURS.get(key, PALETTE[n % 10]),
            radius=radius,
        )
        for n, key in enumerate(ks)
    ]
    errors = [key for key in keys if "rmse" in key or "mae" in key]
    ranking = [key for key in keys if key != "loss" and key not in errors]
    seconds = np.array([_num(h.get("seconds")) for h in rows])
    parts = []
    if np.isfinite(seconds).any():
        parts.append(
            f'<p class="lead">{len(rows)} iteration{"s" if len(rows) != 1 else ""}, '
            f"{_secs(float(np.nanmean(seconds)))} each on average.</p>"
        )
    finals = []
    for key in keys:
        best = _best_index(col[key], key in LOWER_IS_BETTER or "rmse" in key or "mae" in key)
        last = col[key][np.isfinite(col[key])][-1]
        finals.append((_label(key), float(last), float(col[key][best]), _Text(_fmt(it[best]))))
    if finals:
        parts.append(_table(["metric", "final", "best", "at iteration"], finals))
    parts.append(
        _plot(series(["loss"]), "Objective per iteration", "iteration", "objective", xint=True)
        if "loss" in col
        else _note("The objective was not recorded.")
    )
    if errors:
        parts.append(_plot(series(errors), "RMSE per iteration", "iteration", "RMSE", xint=True))
    elif kind == "explicit":
        parts.append(_note("No RMSE per iteration was recorded."))
    if ranking:
        parts.append(_plot(series(ranking), "Held-out ranking metrics per iteration", "iteration", "", xint=True))
    else:
        parts.append(_note("Ranking metrics were not tracked per iteration (eval.every_iteration is off)."))
    return Section("Training history", "".join(parts))


def _top_share(desc: np.ndarray, fraction: float) -> tuple[int, float | None]:
    """How many entries are the top `fraction` (at least one), and their share of the sum."""
    n = max(1, math.ceil(desc.size * fraction))
    total = float(desc.sum())
    return n, (float(desc[:n].sum()) / total if total else None)


def _tail(desc: np.ndarray, who: str, title: str) -> str:
    """The long tail of ratings per user (or item) by rank, log y, and the sentence that sums it up."""
    if desc.size == 0:
        return _note(f"No {who}s.")
    n, share = _top_share(desc, 0.1)
    single = int(np.count_nonzero(desc == 1))
    text = (
        f"The top 10% of {who}s ({_fmt(n)}) hold {_pct(share)} of the ratings; the median {who} has "
        f"{_fmt(float(np.median(desc)))} ratings, and {_fmt(single)} ({_pct(single / desc.size)}) have a single one."
    )
    ranks = _sample_ranks(desc.size)
    return f'<p class="lead">{_e(text)}</p>' + _plot(
        [_Series(None, ranks + 1, desc[ranks], BLUE)],
        title,
        f"{who} rank (1 = most ratings)",
        "ratings (log)",
        ylog=True,
    )


def data_section(counts: dict, profile: DataProfile | None) -> Section:
    """What was read and what was kept, and with a profile, what the training ratings look like."""
    c = counts or {}
    n_read = c.get("n_read")
    rows = [
        ("rows read", "n_read"),
        ("used (clean)", "n_clean"),
        ("rejected (see rejected/)", "n_rejected"),
        ("dropped (rating <= 0)", "n_dropped"),
        ("duplicates merged", "n_duplicates_merged"),
        ("training ratings", "n_train"),
        ("held-out ratings", "n_test"),
    ]
    table = [
        (label, c.get(key), _Text(_pct(c[key] / n_read) if n_read and c.get(key) is not None else ""))
        for label, key in rows
        if key in c
    ]
    parts = [_table(["rows", "count", "of rows read"], table) if table else _note("The row counts are not known.")]
    kept = [(label, c[key]) for label, key in rows[1:5] if _num(c.get(key)) == _num(c.get(key))]
    if kept and sum(v for _, v in kept) > 0:
        parts.append(_stack(kept, "Rows read"))
    if _num(c.get("n_train")) >= 0 and _num(c.get("n_test")) >= 0:
        parts.append(_stack([("training", c["n_train"]), ("held out", c["n_test"])], "Split"))
    if profile is not None:
        parts.append(_profile(profile))
    return Section("Data", "".join(parts))


def _profile(p: DataProfile) -> str:
    cells = p.n_users * p.n_items
    lead = (
        f"{_fmt(p.n_ratings)} {p.kind} ratings by {_fmt(p.n_users)} users of {_fmt(p.n_items)} items: "
        f"{_pct(p.n_ratings / cells) if cells else 'n/a'} of the user x item matrix is observed."
    )
    edges, counts = np.asarray(p.rating_edges, np.float64), np.asarray(p.rating_counts, np.float64)
    log = bool(edges[0] > 0 and edges[-1] / edges[0] > LOG_SPAN)
    if counts.size <= MAX_DISTINCT and not log:  # one bar a rating value, named by it
        hist = _bars(
            [_short(e) for e in edges[:-1]],
            [(None, counts, BLUE)],
            "Rating distribution",
            "rating",
            "ratings",
            fmt=_short,
        )
    else:
        hist = _bars(
            [f"{_short(a)}-{_short(b)}" for a, b in zip(edges[:-1], edges[1:])],
            [(None, counts, BLUE)],
            "Rating distribution",
            "rating" + (" (log-spaced bins)" if log else ""),
            "ratings",
            edges=edges,
            xlog=log,
        )
    items = np.sort(np.asarray(p.item_activity))[::-1]
    return (
        f'<h3>Training ratings</h3><p class="lead">{_e(lead)}</p>{hist}'
        + _tail(np.asarray(p.user_activity), "user", "Ratings per user")
        + _tail(items, "item", "Ratings per item")
    )


@dataclass(frozen=True)
class RecommendationStats:
    """Where recommendations go, by the items' training popularity (rank 0 = most rated; ties by index)."""

    n_recommended: int  # recommendations made (entries >= 0)
    n_distinct: int  # distinct items recommended
    coverage: float | None  # n_distinct / n_items
    decile_share: np.ndarray  # (10,) share of recommendations per popularity decile, 0 = top 10%
    train_decile_share: np.ndarray  # (10,) share of training ratings per decile, for reference
    top1: float | None  # share going to the ceil(1%) most popular items
    top10: float | None  # ... to the ceil(10%) most popular (= decile_share[0])
    train_top1: float | None
    train_top10: float | None


def recommendation_stats(recommended_items: np.ndarray, item_activity: np.ndarray) -> RecommendationStats:
    """Coverage and popularity deciles of the recommended item indices (-1 = no item, ignored); item
    j is in decile rank_j * 10 // n_items, so decile 0 is the ceil(n_items / 10) most rated items."""
    pop = np.asarray(item_activity, np.int64)
    n = pop.size
    rec = np.asarray(recommended_items).ravel().astype(np.int64)
    rec = rec[(rec >= 0) & (rec < n)]
    rank = np.empty(n, np.int64)
    rank[np.argsort(-pop, kind="stable")] = np.arange(n)
    decile = rank * 10 // max(n, 1)
    share = lambda weights, total: np.bincount(decile, weights, 10)[:10] / total if total else np.full(10, np.nan)
    rec_per_item = np.bincount(rec, minlength=n).astype(np.float64)
    top1 = rank * 100 < n
    frac = lambda weights, total: float(weights[top1].sum() / total) if total else None
    dec, train = share(rec_per_item, rec.size), share(pop.astype(np.float64), pop.sum())
    return RecommendationStats(
        int(rec.size),
        int(np.unique(rec).size),
        np.unique(rec).size / n if n else None,
        dec,
        train,
        frac(rec_per_item, rec.size),
        float(dec[0]) if rec.size else None,
        frac(pop, pop.sum()),
        float(train[0]) if pop.sum() else None,
    )


def recommendations_section(recommended_items: np.ndarray, profile: DataProfile, top_n: int) -> Section:
    """Catalog coverage of the top-N lists and the share of them going to each popularity decile."""
    if profile is None:
        return Section("Recommendations", _note("No data profile: coverage and popularity are not known."))
    s = recommendation_stats(
        np.asarray(recommended_items if recommended_items is not None else []), profile.item_activity
    )
    if s.n_recommended == 0:
        return Section("Recommendations", _note("No recommendations were made."))
    rows = [
        (f"recommendations (top-{top_n} lists)", s.n_recommended, _Text("")),
        ("distinct items recommended", s.n_distinct, _Text("")),
        ("catalog coverage", _Text(_pct(s.coverage)), _Text("")),
        ("to the top 1% most rated items", _Text(_pct(s.top1)), _Text(_pct(s.train_top1))),
        ("to the top 10% most rated items", _Text(_pct(s.top10)), _Text(_pct(s.train_top10))),
    ]
    lead = (
        f"{_pct(s.coverage)} of the {_fmt(profile.n_items)} items appear in some top-{top_n} list; the 10% "
        f"most rated items get {_pct(s.top10)} of the recommendations (they hold {_pct(s.train_top10)} "
        f"of the training ratings)."
    )
    chart = _bars(
        [str(d + 1) for d in range(10)],
        [("recommendations", s.decile_share, BLUE), ("training ratings", s.train_decile_share, GREY)],
        "Recommendations by item popularity decile",
        "popularity decile (1 = the 10% most rated items)",
        "share",
        fmt=lambda v: f"{v:.0%}",
    )
    return Section(
        "Recommendations",
        f'<p class="lead">{_e(lead)}</p>' + _table(["", "recommendations", "training ratings"], rows) + chart,
    )


COMPARE = ("rmse", "mae", "precision_at_k", "recall_at_k", "ndcg_at_k", "map_at_k", "coverage", "fit_seconds")


def comparison_section(table: pa.Table, k: int) -> Section:
    """The methods' metrics, the best of each column marked, with RMSE and NDCG@k as bars."""
    rows = table.to_pylist() if table is not None else []
    if not rows:
        return Section("Method comparison", _note("No methods were compared."))
    cols = [c for c in COMPARE if c in table.column_names]
    methods = [str(r.get("method")) for r in rows]
    best = set()
    for j, c in enumerate(cols):
        v = np.array([_num(r.get(c)) for r in rows])
        b = _best_index(v, c in LOWER_IS_BETTER)
        best |= {(i, j + 1) for i in np.flatnonzero(v == v[b])} if b is not None else set()
    cells = [[m] + [r.get(c) for c in cols] for m, r in zip(methods, rows)]
    parts = [_table(["method"] + [_label(c, k) for c in cols], cells, best)]
    for c in ("rmse", "ndcg_at_k"):
        v = np.array([_num(r.get(c)) for r in rows])
        have = np.flatnonzero(np.isfinite(v))
        if not have.size:
            parts.append(_note(f"No method has a {_label(c, k)}."))
            continue
        b = _best_index(v, c in LOWER_IS_BETTER)
        parts.append(
            _bars(
                [methods[i] for i in have],
                [(None, v[have], [BEST if v[i] == v[b] else BLUE for i in have])],
                f"{_label(c, k)} by method ({'lower' if c in LOWER_IS_BETTER else 'higher'} is better)",
                xlabel=_label(c, k),
                horizontal=True,
                fmt=_short,
            )
        )
    return Section("Method comparison", "".join(parts))


def _param_axis(values: list[Any]) -> tuple[np.ndarray, Sequence[str], bool]:
    """Positions of a searched parameter's values, their categories and whether the axis is log:
    numbers as they are (log when positive and spanning more than 20x), anything else (strings,
    booleans, a mix) as categories."""
    numbers = [v for v in values if v is not None]
    if numbers and all(not math.isnan(_num(v)) for v in numbers):
        x = np.array([_num(v) for v in values])
        fin = x[np.isfinite(x)]
        return x, (), bool(fin.size and fin.min() > 0 and fin.max() / fin.min() > 20)
    cats = sorted({_fmt(v) for v in values}, key=lambda s: (s == "n/a", s))
    # spread within +-0.15 of the category (golden-ratio steps: even, and the same every time), so
    # equal trials stay apart
    spread = 0.3 * ((np.arange(len(values)) * 0.618034) % 1.0 - 0.5)
    return np.array([cats.index(_fmt(v)) for v in values], np.float64) + spread, cats, False


def tuning_section(
    trials: pa.Table,
    metric: str,
    lower_is_better: bool,
    params: list[str],
    test: tuple[str, float] | None = None,
    after: str = "",
) -> Section:
    """The search: metric by trial, metric against each parameter, validation curves, the top 10;
    `test`: (metric, value) of the refit on the test split, set beside the best validation value;
    `after`: a line on what was chosen after the search, on the best trial."""
    rows = trials.to_pylist() if trials is not None else []
    if not rows:
        return Section("Tuning", _note("No trials were run."))
    name = _label(metric)
    trial = np.array([_num(r.get("trial", n)) for n, r in enumerate(rows)])
    v = np.array([_num(r.get(metric)) for r in rows])
    b = _best_index(v, lower_is_better)
    params = [p for p in (params or []) if p in trials.column_names]
    if b is None:
        return Section("Tuning", _note(f"{len(rows)} trials, and none gave a {name}."))
    tips = [
        f"trial {_fmt(r.get('trial', n))}: {name} {_fmt(r.get(metric))}"
        + "".join(f", {p} {_fmt(r.get(p))}" for p in params)
        for n, r in enumerate(rows)
    ]
    best = f"best (trial {_fmt(rows[b].get('trial', b))})"
    running = (np.fmin.accumulate if lower_is_better else np.fmax.accumulate)(v[np.argsort(trial, kind="stable")])
    by_trial = [
        _Series("best so far", np.sort(trial), running, GREEN, width=1.5),
        _Series("trial", trial, v, BLUE, width=0, radius=3.5, tips=tips),
        _Series(best, [trial[b]], [v[b]], BEST, width=0, radius=6, tips=[tips[b]]),
    ]
    lead = _tuning_lead(rows, v, b, name, lower_is_better, params) + (f" {after}" if after else "")
    if test is not None and test[1] is not None and math.isfinite(test[1]):
        lead += (
            f" Refit on all the training data with these settings, it scores {_label(test[0])} {_fmt(test[1])} "
            f"on the test split (validation: {_fmt(v[b])}); the test split took no part in the choice."
        )
    parts = [
        f'<p class="lead">{_e(lead)}</p>',
        _plot(by_trial, f"{name} by trial", "trial", name, xint=True),
    ]
    small = [_param_plot(rows, p, v, b, name, tips) for p in params]
    if small:
        parts.append('<div class="charts">' + "".join(small) + "</div>")
    parts.append(_curves_plot(rows, b, name, best))
    parts += ["<h3>Top trials</h3>", _top_trials(rows, v, metric, name, lower_is_better, params)]
    return Section("Tuning", "".join(parts))


def _tuning_lead(rows: list[dict], v: np.ndarray, b: int, name: str, lower_is_better: bool, params: list[str]) -> str:
    """The search in one sentence: trials, failures, the best trial and its settings."""
    n_failed = int(np.count_nonzero(~np.isfinite(v)))
    settings = ", ".join(f"{p} = {_fmt(rows[b].get(p))}" for p in params)
    return (
        f"{len(rows)} trials ({n_failed} without a result); best: trial {_fmt(rows[b].get('trial', b))}, "
        f"{name} {_fmt(v[b])} ({'lower' if lower_is_better else 'higher'} is better)"
        f"{' at iteration ' + _fmt(rows[b]['best_iteration']) if rows[b].get('best_iteration') is not None else ''}"
        f"{', with ' + settings if settings else ''}."
    )


def _param_plot(rows: list[dict], p: str, v: np.ndarray, b: int, name: str, tips: list[str]) -> str:
    """The metric against one searched parameter (a log axis for log-spread numbers, categories for texts)."""
    x, cats, log = _param_axis([r.get(p) for r in rows])
    points = [
        _Series(None, x, v, BLUE, width=0, radius=3.5, tips=tips),
        _Series(None, [x[b]], [v[b]], BEST, width=0, radius=6),
    ]
    return _plot(points, f"{name} vs {p}", p + (" (log)" if log else ""), name, xlog=log, xcats=cats, size=SMALL)


def _curves_plot(rows: list[dict], b: int, name: str, best: str) -> str:
    """Every trial's validation metric per iteration, the best trial's drawn over the rest."""
    curves = [(n, np.array([_num(h) for h in (r.get("history") or [])])) for n, r in enumerate(rows)]
    lines = [
        _Series("trials" if n == 0 else None, np.arange(1, h.size + 1), h, BLUE, width=1, opacity=0.45)
        for n, (_, h) in enumerate(c for c in curves if c[0] != b)
    ]
    lines.append(_Series(best, np.arange(1, curves[b][1].size + 1), curves[b][1], BEST, width=2.5))
    return _plot(lines, f"Validation {name} per iteration", "iteration", name, xint=True)


def _top_trials(
    rows: list[dict], v: np.ndarray, metric: str, name: str, lower_is_better: bool, params: list[str]
) -> str:
    """The ten best trials as a table, best first (trials without a result last)."""
    order = sorted(range(len(rows)), key=lambda n: (not math.isfinite(v[n]), v[n] if lower_is_better else -v[n]))[:10]
    head = ["", "trial", *params, name, "best iteration", "iterations run", "seconds"]
    keys = ["trial", *params, metric, "best_iteration", "iterations_run", "seconds"]
    cells = [[_Text(str(j + 1)), *(rows[n].get(k) for k in keys)] for j, n in enumerate(order)]
    return _table(head, cells, {(0, len(params) + 2)})


def recommended_indices(recommendations: pa.Table | DataFrame, items) -> np.ndarray:
    """The item index of every recommendation (`items`: the model's IdMap), for
    recommendations_section. A DataFrame's are counted per item by Spark (a row per distinct item
    comes back), then spelled out per recommendation as the section takes them."""
    if isinstance(recommendations, pa.Table):
        return items.index_of(recommendations.column("item"))
    counts = recommendations.groupBy("item").count().toArrow()
    return np.repeat(items.index_of(counts.column("item")), counts.column("count").to_numpy())


def training_report(
    metrics: dict, profile: DataProfile, recommended: np.ndarray, top_n: int, more: Sequence[Section] = ()
) -> str:
    """report.html of a training (or tuning) run: metrics, history, data, recommendations, then `more`."""
    cfg = metrics.get("config") or {}
    model = cfg.get("model") or {}
    source = metrics.get("input") or "a given train / test split"
    title = f"mf_spark: {model.get('kind', '')} model, rank {model.get('rank', '?')}"
    counts = {
        k: metrics.get(k)
        for k in ("n_read", "n_rejected", "n_dropped", "n_duplicates_merged", "n_clean", "n_train", "n_test")
        if metrics.get(k) is not None
    }
    return render(
        title,
        [
            metrics_section(metrics),
            history_section(metrics.get("history") or [], model.get("kind", "")),
            data_section(counts, profile),
            recommendations_section(recommended, profile, top_n),
            *more,
        ],
        subtitle=str(source),
    )


# ---- the page -------------------------------------------------------------------------------------
CSS = """
:root{--ink:#1f2933;--muted:#616e7c;--line:#e4e7eb;--bg:#f4f6f8}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--ink);font:14px/1.5 -apple-system,BlinkMacSystemFont,"Segoe UI",
Roboto,"Helvetica Neue",Arial,"Noto Sans","Liberation Sans","DejaVu Sans",sans-serif}
header{background:#1f2d3d;color:#fff;padding:22px 0 12px}
.wrap{max-width:1000px;margin:0 auto;padding:0 24px}
h1{margin:0;font-size:22px;font-weight:600}
header p{margin:4px 0 10px;color:#b8c4d0;font-size:13px}
nav a{color:#d9e2ec;text-decoration:none;margin-right:16px;font-size:13px}
nav a:hover{text-decoration:underline}
section{background:#fff;border:1px solid var(--line);border-radius:8px;padding:18px 22px;margin:18px 0;
box-shadow:0 1px 2px rgba(16,24,40,.05)}
h2{font-size:17px;margin:0 0 12px;font-weight:600}
h3{font-size:14px;margin:18px 0 6px;color:var(--muted);font-weight:600}
table{border-collapse:collapse;font-size:13px;margin:4px 0 12px}
th,td{padding:4px 10px;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
th{font-weight:600;color:var(--muted);background:#f8f9fb;border-bottom:1px solid #cbd2d9}
.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.best{font-weight:700;color:#a04c00;background:#fff3e6}
.note{color:var(--muted);font-style:italic;margin:6px 0}
.lead{margin:4px 0 8px}
.cols{display:flex;flex-wrap:wrap;gap:0 36px;align-items:flex-start}
.charts{display:flex;flex-wrap:wrap;gap:0 16px}
.chart{margin:10px 0}
svg{display:block;max-width:100%;height:auto;font-size:11px}
svg text{fill:#52606d}
svg text.title{font-size:13px;font-weight:600;fill:#1f2933}
svg text.label{fill:#3e4c59}
svg .grid{stroke:#e9ecef;stroke-width:1}
svg .axis{stroke:#9aa5b1;stroke-width:1}
dl.kv{display:grid;grid-template-columns:repeat(3,max-content minmax(0,1fr));gap:2px 12px;margin:4px 0;
font-size:13px;align-items:baseline}
dl.kv dt{color:var(--muted)}
dl.kv dd{margin:0;font-family:ui-monospace,"DejaVu Sans Mono",Menlo,Consolas,monospace;font-size:12px}
footer{color:var(--muted);font-size:12px;padding:4px 0 24px}
"""
# Nothing may load or run: a stray external URL or script fails in the browser, never leaks a request.
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"


def render(title: str, sections: list[Section], subtitle: str = "") -> str:
    """The whole HTML document: a header with links to the sections, then the sections in order."""
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    nav = "".join(f'<a href="#s{n}">{_e(s.heading)}</a>' for n, s in enumerate(sections))
    body = "".join(f'<section id="s{n}"><h2>{_e(s.heading)}</h2>{s.html}</section>' for n, s in enumerate(sections))
    sub = f"{_e(subtitle)} &#183; " if subtitle else ""
    return (
        (
            f'<!DOCTYPE html>\n<html xmlns="http://www.w3.org/1999/xhtml" lang="en"><head><meta charset="utf-8"/>'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}"/>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"/><title>{_e(title)}</title>'
            f'<style>{CSS}</style></head><body><header><div class="wrap"><h1>{_e(title)}</h1>'
            f"<p>{sub}generated {when} by mf_spark</p><nav>{nav}</nav></div></header>"
            f'<main class="wrap">{body}</main><footer class="wrap">mf_spark report: a static page, '
            f"no scripts and no external resources.</footer></body></html>\n"
        )
        .encode("ascii", "xmlcharrefreplace")
        .decode("ascii")
    )  # any file encoding reads it
