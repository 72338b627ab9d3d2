"""report.html: every section renders well-formed, escaped and offline, from full and from missing
inputs; the profile is the same from either front end; the numbers it states are right; and a real
headless Chromium draws it."""

from __future__ import annotations

import math
import struct
import xml.etree.ElementTree as ET
import zlib

import numpy as np
import pyarrow as pa
import pytest

from mf_spark.core.types import ITEM_IDX, RATING, USER_IDX
from mf_spark.data.ready import Triples, train_stats
from mf_spark.run import report

SVG = "{http://www.w3.org/2000/svg}svg"
XHTML = "{http://www.w3.org/1999/xhtml}"


def parse(page: str) -> ET.Element:
    return ET.fromstring(page)


def svgs(root: ET.Element) -> int:
    return len(root.findall(f".//{SVG}"))


def page_of(*sections: report.Section) -> ET.Element:
    page = report.render("test report", list(sections))
    assert "<script" not in page.lower()
    return parse(page)


# ---- realistic fake runs ---------------------------------------------------------------------------
def fake_ratings(n_users=943, n_items=1682, n=60_000, seed=3, stars=True):
    """Users and items drawn from power laws (a few heavy users, a long tail of rare items)."""
    g = np.random.default_rng(seed)
    power = lambda m, a: (np.arange(1, m + 1) ** -a) / np.sum(np.arange(1, m + 1) ** -a)
    u = g.permutation(n_users)[g.choice(n_users, n, p=power(n_users, 0.7))].astype(np.int32)
    i = g.permutation(n_items)[g.choice(n_items, n, p=power(n_items, 1.0))].astype(np.int32)
    r = (
        g.choice([1.0, 2.0, 3.0, 4.0, 5.0], n, p=[0.06, 0.11, 0.27, 0.34, 0.22])
        if stars
        else np.floor(g.pareto(1.1, n) * 2) + 1.0
    )
    return u, i, r


def fake_metrics():
    return {
        "rmse": 0.9134,
        "mae": 0.7182,
        "precision_at_k": 0.0741,
        "recall_at_k": 0.0583,
        "ndcg_at_k": 0.0912,
        "map_at_k": 0.0408,
        "coverage": 0.1834,
        "n_users_evaluated": 912,
        "k": 10,
        "n_train": 60000,
        "n_test": 15000,
        "n_test_cold": 41,
        "n_users": 943,
        "n_items": 1682,
        "fit_seconds": 11.82,
        "fit_startup_seconds": 3.1,
        "exchange": "stream",
        "timings": {
            "read_validate": 4.21,
            "split_index": 1.63,
            "evaluation_setup": 0.92,
            "fit": 11.82,
            "evaluate": 1.37,
            "recommend_write": 2.95,
            "other": 0.41,
            "total": 23.31,
        },
        "config": {
            "model": {
                "kind": "explicit",
                "rank": 16,
                "iterations": 12,
                "reg": 0.05,
                "reg_scaling": "count",
                "biases": True,
                "nonnegative": False,
                "seed": 0,
                "strategy": "auto",
                "exchange": "auto",
                "solver": "auto",
            },
            "eval": {"k": 10},
        },
        "versions": {"mf_spark": "0.4.0", "pyspark": "4.0.1", "numpy": "2.1.3", "python": "3.11.2"},
    }


def fake_history(n=12, kind="explicit"):
    t = np.arange(1, n + 1)
    return [
        {
            "iteration": int(j),
            "loss": 61000 * (1 + 2.5 / j**1.5),
            "train_rmse": 0.62 + 0.3 / j if kind == "explicit" else None,
            "test_rmse": 0.905 + 0.12 / j + 0.0015 * j if kind == "explicit" else None,
            "ndcg_at_k": 0.095 - 0.04 / j,
            "seconds": 0.95 + 0.1 * (j == 1),
        }
        for j in t
    ]


def fake_trials(n=24, seed=5):
    g = np.random.default_rng(seed)
    rows = []
    for t in range(n):
        rank, reg, biases = int(g.choice([4, 8, 16, 32, 64])), float(10 ** g.uniform(-3, 0)), bool(g.random() < 0.5)
        best = 0.87 + 0.04 * abs(math.log10(reg) + 1.3) + 0.01 * (rank == 4) - 0.01 * biases + g.normal(0, 0.004)
        iters = int(g.integers(4, 16))
        hist = [best + 0.3 / (j + 1) ** 1.4 for j in range(iters)]
        failed = t == 7
        rows.append(
            {
                "trial": t,
                "rank": rank,
                "reg": reg,
                "biases": biases,
                "rmse": None if failed else min(hist),
                "best_iteration": iters,
                "iterations": iters,
                "seconds": 3 + iters * 0.8,
                "history": [] if failed else hist,
            }
        )
    schema = pa.schema(
        [
            ("trial", pa.int64()),
            ("rank", pa.int64()),
            ("reg", pa.float64()),
            ("biases", pa.bool_()),
            ("rmse", pa.float64()),
            ("best_iteration", pa.int64()),
            ("iterations", pa.int64()),
            ("seconds", pa.float64()),
            ("history", pa.list_(pa.float64())),
        ]
    )
    return pa.Table.from_pylist(rows, schema)


def fake_comparison(names=("popularity", "biases", "svd", "sgd", "als", "als_biases", "nmf")):
    g = np.random.default_rng(2)
    rows = [
        {
            "method": m,
            "rmse": None if m == "popularity" else float(0.88 + 0.1 * g.random()),
            "mae": None if m == "popularity" else float(0.69 + 0.08 * g.random()),
            "precision_at_k": float(0.03 + 0.05 * g.random()),
            "recall_at_k": float(0.02 + 0.05 * g.random()),
            "ndcg_at_k": float(0.04 + 0.06 * g.random()),
            "map_at_k": float(0.02 + 0.03 * g.random()),
            "coverage": float(g.random() * 0.4),
            "fit_seconds": float(g.random() * 20),
        }
        for m in names
    ]
    schema = pa.schema([("method", pa.string())] + [(c, pa.float64()) for c in report.COMPARE])
    return pa.Table.from_pylist(rows, schema)


def fake_recommendations(profile: report.DataProfile, n_users=943, top_n=10, seed=4):
    """Top-N lists leaning on popular items, as factor models' do; a few short lists padded with -1."""
    g = np.random.default_rng(seed)
    p = (profile.item_activity + 1.0) ** 1.3
    recs = g.choice(profile.n_items, (n_users, top_n), p=p / p.sum())
    recs[:5, 7:] = -1
    return recs.ravel()


def full_sections() -> list[report.Section]:
    u, i, r = fake_ratings()
    profile = report.DataProfile.of(Triples(None, u, i, r), 943, 1682, "explicit")
    counts = {
        "n_read": 75123,
        "n_rejected": 87,
        "n_dropped": 0,
        "n_duplicates_merged": 36,
        "n_clean": 75000,
        "n_train": 60000,
        "n_test": 15000,
    }
    return [
        report.metrics_section(fake_metrics()),
        report.history_section(fake_history(), "explicit"),
        report.data_section(counts, profile),
        report.recommendations_section(fake_recommendations(profile), profile, 10),
        report.comparison_section(fake_comparison(), 10),
        report.tuning_section(fake_trials(), "rmse", True, ["rank", "reg", "biases"]),
    ]


# ---- the page ------------------------------------------------------------------------------------
def test_full_report_is_well_formed_and_offline():
    sections = full_sections()
    page = report.render("Training run <ml-100k>", sections, subtitle="out/run-1")
    root = parse(page)
    headings = [h.text for h in root.iter(f"{XHTML}h2")]
    assert headings == [s.heading for s in sections]
    # metrics 1 (phases) + history 3 + data 2 stacks, histogram, 2 tails + recs 1 + comparison 2
    # + tuning 1 + 3 params + 1 curves
    assert svgs(root) == 1 + 3 + 5 + 1 + 2 + 5
    assert root.find(f".//{XHTML}title").text == "Training run <ml-100k>"
    assert "<script" not in page and "@import" not in page and "url(" not in page
    outside = page.replace('xmlns="http://www.w3.org/1999/xhtml"', "").replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "http:" not in outside and "https:" not in outside and "//" not in outside.replace("<!--", "")
    assert page.isascii()


def test_metric_and_run_tables_show_only_what_was_computed():
    m = {**fake_metrics(), "rmse": None, "mae": None}
    html = report.metrics_section(m).html
    assert "RMSE" not in html and "NDCG@10" in html and "0.0912" in html and "60,000" in html
    assert "Time per phase (total 23.31 s)" in html and "rank" in html


@pytest.mark.parametrize(
    "metrics",
    [
        {},
        None,
        {"rmse": None, "ndcg_at_k": None, "timings": {}, "config": None},
        {"timings": {"total": 3.0}, "config": {"model": {}}, "k": None},
        {"rmse": float("nan"), "timings": {"fit": None, "total": None}},
    ],
)
def test_metrics_section_tolerates_missing(metrics):
    root = page_of(report.metrics_section(metrics))
    assert svgs(root) <= 1


@pytest.mark.parametrize(
    "history,kind,n_svg",
    [
        ([], "explicit", 0),
        (None, "implicit", 0),
        (fake_history(1), "explicit", 3),
        (fake_history(12, "implicit"), "implicit", 2),
        ([{"iteration": 1, "loss": None, "train_rmse": None, "test_rmse": None, "seconds": None}], "explicit", 0),
        (
            [{"iteration": 1, "loss": 3.0}, {"iteration": 2, "loss": float("nan")}, {"iteration": 3, "loss": 2.0}],
            "explicit",
            1,
        ),
    ],
)
def test_history_section_tolerates_missing(history, kind, n_svg):
    root = page_of(report.history_section(history, kind))
    assert svgs(root) == n_svg


def test_history_plots_every_tracked_metric():
    h = [{**e, "precision_at_k": 0.01 * e["iteration"], "test_mae": 0.7} for e in fake_history(5)]
    html = report.history_section(h, "explicit").html
    for label in ("train RMSE", "held-out RMSE", "held-out MAE", "NDCG@k", "precision@k", "objective"):
        assert label in html


def test_data_section_tolerates_missing():
    assert svgs(page_of(report.data_section({}, None))) == 0
    assert svgs(page_of(report.data_section(None, None))) == 0
    assert svgs(page_of(report.data_section({"n_read": 0, "n_clean": 0}, None))) == 0
    one = report.DataProfile.of(
        Triples(None, np.zeros(1, np.int32), np.zeros(1, np.int32), np.ones(1)), 1, 1, "implicit"
    )
    empty = report.DataProfile.of(
        Triples(None, np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0)), 0, 0, "explicit"
    )
    for profile in (one, empty):
        page_of(report.data_section({"n_read": 1}, profile))


def test_data_section_states_the_long_tail():
    # item 0 has 90 of 100 ratings, items 1..9 one or two each: the top 10% (1 item) holds 90%
    i = np.array([0] * 90 + [1, 1, 2, 3, 4, 5, 6, 7, 8, 9], np.int32)
    profile = report.DataProfile.of(
        Triples(None, np.arange(100, dtype=np.int32) % 7, i, np.full(100, 4.0)), 7, 10, "explicit"
    )
    html = report.data_section({"n_read": 100, "n_clean": 100}, profile).html
    assert "The top 10% of items (1) hold 90% of the ratings" in html
    assert "8 (80%) have a single one" in html


def test_recommendation_stats_on_a_hand_made_case():
    pop = np.array([5, 50, 1, 20, 0, 10, 3, 2, 8, 1])  # 100 ratings; popularity ranks of items:
    # 1 -> 0, 3 -> 1, 5 -> 2, 8 -> 3, 0 -> 4, 6 -> 5, 7 -> 6, 2 -> 7, 9 -> 8 (tie with 2: the index), 4 -> 9
    s = report.recommendation_stats(np.array([1, 1, 3, -1, 4, 1, 9, -1]), pop)
    assert (s.n_recommended, s.n_distinct, s.coverage) == (6, 4, 0.4)
    np.testing.assert_allclose(s.decile_share, [3 / 6, 1 / 6, 0, 0, 0, 0, 0, 0, 1 / 6, 1 / 6])
    np.testing.assert_allclose(s.train_decile_share, pop[[1, 3, 5, 8, 0, 6, 7, 2, 9, 4]] / 100)
    assert (s.top1, s.top10, s.train_top1, s.train_top10) == (0.5, 0.5, 0.5, 0.5)
    # 20 items: two a decile; the top 1% is still one item (the most rated)
    pop20 = np.arange(20)[::-1].copy()  # item j has 19 - j ratings: rank j
    s = report.recommendation_stats(np.array([0, 1, 2, 3, 19, 19]), pop20)
    np.testing.assert_allclose(s.decile_share, [2 / 6, 2 / 6, 0, 0, 0, 0, 0, 0, 0, 2 / 6])
    assert s.top1 == pytest.approx(1 / 6) and s.top10 == pytest.approx(2 / 6) and s.coverage == 5 / 20


def test_recommendations_section_numbers_and_missing():
    pop = np.array([5, 50, 1, 20, 0, 10, 3, 2, 8, 1])
    profile = report.DataProfile(
        "explicit", 100, 3, 10, np.array([1.0, 2.0]), np.array([100]), np.array([60, 30, 10]), pop
    )
    html = report.recommendations_section(np.array([1, 1, 3, -1, 4, 1, 9, -1]), profile, 3).html
    assert "40% of the 10 items appear in some top-3 list" in html and "get 50% of the recommendations" in html
    assert svgs(page_of(report.recommendations_section(np.array([-1, -1]), profile, 3))) == 0
    assert svgs(page_of(report.recommendations_section(np.zeros(0, np.int64), profile, 3))) == 0
    assert svgs(page_of(report.recommendations_section(None, None, 3))) == 0


def test_comparison_marks_the_best_and_escapes_names():
    t = fake_comparison(("als", "<script>alert(1)</script>", "nmf & co"))
    root = page_of(report.comparison_section(t, 10))
    assert svgs(root) == 2
    cells = [td for td in root.iter(f"{XHTML}td")]
    assert any(td.text == "<script>alert(1)</script>" for td in cells)
    best = [td for td in cells if "best" in (td.get("class") or "")]
    assert len(best) == 8  # one a column (no ties in the random values)
    rmse = [r["rmse"] for r in t.to_pylist()]
    assert best[0].text == report._fmt(min(rmse))


def test_comparison_tolerates_missing():
    schema = pa.schema([("method", pa.string())] + [(c, pa.float64()) for c in report.COMPARE])
    assert svgs(page_of(report.comparison_section(pa.Table.from_pylist([], schema), 10))) == 0
    nulls = pa.Table.from_pylist([{"method": "popularity"}], schema)
    assert svgs(page_of(report.comparison_section(nulls, 10))) == 0
    assert svgs(page_of(report.comparison_section(None, 10))) == 0


def test_tuning_section_marks_the_best_trial():
    trials = fake_trials()
    html = report.tuning_section(trials, "rmse", True, ["rank", "reg", "biases"]).html
    rmse = trials.column("rmse").to_numpy(zero_copy_only=False)
    best = int(np.nanargmin(rmse))
    assert f"best: trial {best}, RMSE {report._fmt(rmse[best])}" in html and "24 trials (1 without a result)" in html
    assert "reg (log)" in html and "rank (log)" not in html  # 4..64 spans 16x, reg 1000x
    root = page_of(report.Section("Tuning", html))
    assert svgs(root) == 5
    rows = root.findall(f".//{XHTML}tbody/{XHTML}tr")
    assert len(rows) == 10 and rows[0].findall(f"{XHTML}td")[1].text == str(best)
    beside = report.tuning_section(trials, "rmse", True, ["rank"], test=("rmse", 0.8765)).html
    assert f"scores RMSE 0.8765 on the test split (validation: {report._fmt(rmse[best])})" in beside


@pytest.mark.parametrize(
    "case,n_svg", [("empty", 0), ("all_failed", 0), ("one", 5), ("no_history", 4), ("higher", 5), ("string_param", 6)]
)
def test_tuning_section_tolerates_missing(case, n_svg):
    """By trial, one per searched parameter (present), the curves (when some trial has one)."""
    t = fake_trials(3)
    metric, lower, params = "rmse", True, ["rank", "reg", "biases"]
    if case == "empty":
        t = t.slice(0, 0)
    elif case == "all_failed":
        t = t.set_column(t.schema.get_field_index("rmse"), "rmse", pa.nulls(3, pa.float64()))
    elif case == "one":
        t = t.slice(0, 1)
    elif case == "no_history":
        t = t.drop_columns(["history"])
    elif case == "higher":
        t, metric, lower = (
            t.rename_columns([c if c != "rmse" else "ndcg_at_k" for c in t.column_names]),
            "ndcg_at_k",
            False,
        )
    else:
        t = t.append_column("solver", pa.array(["cg", None, "<exact>"]))
        params = params + ["solver", "missing_param"]
    root = page_of(report.tuning_section(t, metric, lower, params))
    assert svgs(root) == n_svg


def test_axes_end_on_ticks_that_cover_the_data():
    a = report._axis([0.83, 0.97])
    assert a.lo <= 0.83 and a.hi >= 0.97 and a.ticks[0] == a.lo and a.ticks[-1] == a.hi and 3 <= len(a.ticks) <= 8
    log = report._axis([3, 40_000], log=True)
    assert (log.lo, log.hi) == (1, 100_000) and log.ticks == (1, 10, 100, 1000, 10_000, 100_000)
    assert report._axis([5.0, 5.0]).ticks and report._axis([]).ticks and report._axis([0, 0], zero=True).hi == 1
    assert [report._fmt(v) for v in (None, float("nan"), 12, 0.123456, 123456.7, True, 2e-5)] == [
        "n/a",
        "n/a",
        "12",
        "0.1235",
        "123,457",
        "true",
        "2.000e-05",
    ]


# ---- the profile -----------------------------------------------------------------------------------
def test_histogram_bins_by_distinct_values_or_log_spaced():
    u, i, r = fake_ratings(n=5000)
    p = report.DataProfile.of(Triples(None, u, i, r / 2), 943, 1682, "explicit")  # 0.5 .. 2.5 stars
    np.testing.assert_array_equal(p.rating_edges, [0.5, 1.0, 1.5, 2.0, 2.5, 3.0])
    assert p.rating_counts.sum() == 5000 and p.n_ratings == 5000
    assert p.user_activity.shape == (943,) and np.all(np.diff(p.user_activity) <= 0)
    np.testing.assert_array_equal(p.item_activity, np.bincount(i, minlength=1682))
    _, _, counts = fake_ratings(n=5000, stars=False)
    q = report.DataProfile.of(Triples(None, u, i, counts), 943, 1682, "implicit")
    # counts: integer edges from min to max + 1, one value a bin at the low end, log-spaced above
    e = q.rating_edges
    assert (e[0], e[-1]) == (counts.min(), counts.max() + 1) and np.all(e == np.round(e)) and np.all(np.diff(e) > 0)
    assert 20 < e.size <= report.N_BINS + 1 and e[1] - e[0] == 1 and e[-1] - e[-2] > 100
    np.testing.assert_array_equal(
        q.rating_counts, [np.count_nonzero((counts >= a) & (counts < b)) for a, b in zip(e[:-1], e[1:])]
    )
    flat = report.DataProfile.of(Triples(None, u, i, np.linspace(1, 5, 5000)), 943, 1682, "explicit")
    np.testing.assert_allclose(np.diff(flat.rating_edges), 4 / report.N_BINS)
    assert flat.rating_counts.sum() == 5000 and flat.rating_counts[-1] > 0  # the last bin is closed
    ints = report.DataProfile.of(Triples(None, u, i, (np.arange(5000) % 45) + 1.0), 943, 1682, "implicit")
    np.testing.assert_array_equal(ints.rating_edges, np.arange(1, 48, 2))  # 45 values, 2 a bin
    assert ints.rating_counts.sum() == 5000


def test_histogram_finds_rare_values_the_sample_misses():
    r = np.full(1_000_000, 4.0)
    r[12345] = 1.0  # off the sample's stride
    edges, counts = report._histogram(r)
    np.testing.assert_array_equal(edges, [1.0, 4.0, 7.0])
    np.testing.assert_array_equal(counts, [1, 999_999])


def test_profile_is_the_same_from_triples_and_from_a_frame(spark):
    u, i, stars = fake_ratings(n_users=50, n_items=80, n=3000)
    _, _, counts = fake_ratings(n_users=50, n_items=80, n=3000, stars=False)
    many = (np.arange(3000) % 45) + 1.0  # 45 distinct values: binned, from TrainStats.values too
    for r, kind in (
        (stars, "explicit"),
        (counts, "implicit"),
        (np.round(stars * 1.37 + i / 100, 2), "explicit"),
        (many, "implicit"),
    ):
        df = spark.createDataFrame(
            pa.table(
                {
                    USER_IDX: pa.array(u, pa.int32()),
                    ITEM_IDX: pa.array(i, pa.int32()),
                    RATING: pa.array(r, pa.float64()),
                }
            )
        )
        want = report.DataProfile.of(Triples(spark, u, i, r), 60, 90, kind)  # some users and items unrated
        stats = train_stats(Triples(spark, u, i, r))  # its distinct values counted when few
        for got in (report.DataProfile.of(df, 60, 90, kind), report.DataProfile.of(df, 60, 90, kind, stats=stats)):
            for name in ("kind", "n_ratings", "n_users", "n_items"):
                assert getattr(got, name) == getattr(want, name), name
            for name in ("rating_edges", "rating_counts", "user_activity", "item_activity"):
                np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)
                assert getattr(got, name).dtype == getattr(want, name).dtype, name
    assert train_stats(Triples(spark, u, i, many)).values is not None


def test_profile_from_a_fits_row_counts_is_the_counted_one(spark):
    """The train job hands the profile the ratings per row its fit's engine counted."""
    from mf_spark.als import loop as als
    from mf_spark.core.config import ModelConfig

    u, i, stars = fake_ratings(n_users=50, n_items=80, n=3000)
    triples = Triples(spark, u, i, stars)
    fit = als.fit(triples, 60, 90, ModelConfig(rank=2, iterations=1))
    want = report.DataProfile.of(triples, 60, 90, "explicit")
    got = report.DataProfile.of(triples, 60, 90, "explicit", fit.row_counts)
    for name in ("user_activity", "item_activity"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)


# ---- a real browser --------------------------------------------------------------------------------
@pytest.mark.slow
def test_chromium_renders_the_report(tmp_path):
    import browser

    sections = full_sections()
    path = tmp_path / "report.html"
    path.write_text(report.render("Training run", sections), encoding="utf-8")
    dom = browser.dump_dom(path)
    assert dom.count("<svg") == 17
    for s in sections:
        assert f">{s.heading}</h2>" in dom
    pixels = browser.screenshot(path, tmp_path / "report.png")
    assert pixels.shape[:2] == (4000, 1280)
    colours = np.unique(pixels[..., :3].reshape(-1, 3), axis=0)
    assert len(colours) > 200, f"{len(colours)} distinct colours: a blank page?"
    header = pixels[:60, :, :3].reshape(-1, 3).mean(axis=0)
    assert header.max() < 90, f"the dark header is missing: mean colour {header}"


def _png(pixels: np.ndarray, filters: list[int]) -> bytes:
    """A PNG of (h, w, 4) uint8 pixels, row y filtered with filters[y] (the encoder's side of RFC 2083)."""
    h, w, bpp = pixels.shape
    rows, prev = [], np.zeros(w * bpp, np.int64)
    for y in range(h):
        cur = pixels[y].ravel().astype(np.int64)
        left = np.concatenate([np.zeros(bpp, np.int64), cur[:-bpp]])
        upleft = np.concatenate([np.zeros(bpp, np.int64), prev[:-bpp]])
        p = left + prev - upleft
        pa, pb, pc = np.abs(p - left), np.abs(p - prev), np.abs(p - upleft)
        paeth = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, prev, upleft))
        pred = [0, left, prev, (left + prev) // 2, paeth][filters[y]]
        rows.append(bytes([filters[y]]) + ((cur - pred) % 256).astype(np.uint8).tobytes())
        prev = cur
    chunk = lambda kind, body: struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 6, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"".join(rows)))
        + chunk(b"IEND", b"")
    )


def test_png_decoder_undoes_every_filter(rng):
    import browser

    pixels = rng.integers(0, 256, (10, 7, 4)).astype(np.uint8)
    np.testing.assert_array_equal(browser.decode_png(_png(pixels, [y % 5 for y in range(10)])), pixels)


def test_chromium_skips_with_the_reason_when_it_cannot_be_installed(monkeypatch):
    import browser

    monkeypatch.setattr(browser, "_found", lambda: None)
    monkeypatch.setattr(browser, "_installing", lambda: False)
    monkeypatch.setattr(browser.os, "geteuid", lambda: 1000)
    with pytest.raises(pytest.skip.Exception, match="not installed and cannot be: not root"):
        browser.chromium()
    monkeypatch.setattr(browser.os, "geteuid", lambda: 0)
    monkeypatch.setattr(browser.shutil, "which", lambda name: None)
    with pytest.raises(pytest.skip.Exception, match="no apt-get"):
        browser.chromium()
