"""The tuning search (mf_spark.run.tune) and jobs/tune.py: spaces, draws, halving, early stopping, the
refit's outputs, and that the test split never takes part in the choice."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import planted

from jobs import train as train_job
from jobs import tune as tune_job
from mf_spark.als import loop as als
from mf_spark.core import config
from mf_spark.core.errors import ConfigError, InputError
from mf_spark.data import prepare
from mf_spark.run import tune


def _run(*sets: str) -> config.RunConfig:
    return config.load(None, list(sets))


# ---- the space and the draws -----------------------------------------------------------------------------
def test_grid_is_every_combination_in_order():
    run = _run("tune.method=grid", "tune.space.rank=[2, 4]", "tune.space.biases=[true, false]")
    assert tune.settings(run) == [
        {"rank": 2, "biases": True},
        {"rank": 2, "biases": False},
        {"rank": 4, "biases": True},
        {"rank": 4, "biases": False},
    ]


def test_grid_refuses_ranges():
    run = _run("tune.method=grid", "tune.space.reg={min = 0.01, max = 1.0, log = true}")
    with pytest.raises(ConfigError, match="needs lists of values; tune.space has ranges for reg"):
        tune.settings(run)


def test_random_draws_are_seeded_distinct_and_inside_the_space():
    sets = [
        "tune.method=random",
        "tune.trials=30",
        "tune.space.rank=[4, 8]",
        "tune.space.reg={min = 0.01, max = 1.0, log = true}",
        "tune.space.iterations={min = 2, max = 9}",
    ]
    a, b = tune.settings(_run(*sets)), tune.settings(_run(*sets))
    assert a == b and len(a) == 30
    assert a[0] == {"rank": 10, "reg": 0.1, "iterations": 10}  # [model] as it is comes first
    assert len({tuple(sorted(s.items())) for s in a}) == 30
    assert all(s["rank"] in (4, 8) and 0.01 <= s["reg"] <= 1.0 and 2 <= s["iterations"] <= 9 for s in a[1:])
    assert all(isinstance(s["iterations"], int) for s in a)
    assert tune.settings(_run(*sets, "tune.seed=1")) != a


def test_a_small_discrete_space_runs_out_of_distinct_draws():
    got = tune.settings(_run("tune.method=random", "tune.trials=50", "tune.space.rank=[2, 3]"))
    assert got == [{"rank": 10}, {"rank": 3}, {"rank": 2}] or got == [{"rank": 10}, {"rank": 2}, {"rank": 3}]


def test_the_default_trial_count_follows_the_kind():
    assert len(tune.settings(_run())) == config.DEFAULT_TRIALS["explicit"] == 81
    assert len(tune.settings(_run("model.kind=implicit"))) == config.DEFAULT_TRIALS["implicit"] == 27
    assert len(tune.settings(_run("model.kind=implicit", "tune.trials=40"))) == 40
    # the first draws are the same whatever the count: fewer trials are a prefix of more
    assert tune.settings(_run("tune.trials=27")) == tune.settings(_run())[:27]


def test_the_default_space_follows_the_kind():
    assert tune.space_of(_run()) is tune.DEFAULT_SPACES["explicit"]
    assert "unobserved_weight" in tune.space_of(_run("model.kind=implicit"))
    assert tune.space_of(_run("tune.space.rank=[3]")) == {"rank": [3]}


def test_binary_feedback_leaves_the_confidence_out_of_the_default_space():
    """With one training value every observed entry has the same confidence: its slope and form only
    rescale w0 and lambda, so the default implicit space drops them; a given space is kept."""
    from mf_spark.data.ready import TrainStats

    binary, counts = TrainStats(100, 1.0, 1.0, 1.0), TrainStats(100, 2.5, 1.0, 9.0)
    implicit = _run("model.kind=implicit")
    narrowed = tune.space_of(tune.for_data(implicit, binary))
    assert set(tune.DEFAULT_SPACES["implicit"]) - set(narrowed) == {"alpha", "confidence"}
    assert all(narrowed[k] == v for k, v in tune.DEFAULT_SPACES["implicit"].items() if k in narrowed)
    assert tune.for_data(implicit, counts) is implicit
    assert tune.for_data(_run(), binary) == _run()  # explicit
    given = _run("model.kind=implicit", "tune.space.alpha=[1.0, 2.0]")
    assert tune.for_data(given, binary) is given
    draws = tune.settings(tune.for_data(implicit, binary))
    assert len(draws) == 27 and all("alpha" not in d and "confidence" not in d for d in draws)


@pytest.mark.parametrize(
    "sets, message",
    [
        (["tune.space.seed=[1, 2]"], "tune.space.seed"),
        (["tune.space.rank=[0, 4]"], "model.rank"),
        (["tune.space.rank=[]"], "non-empty list"),
        (["tune.space.reg={min = 1, max = 0.1}"], "min <= max"),
        (["tune.space.reg={min = 0, max = 1, log = true}"], "min > 0 for a log range"),
        (["tune.space.biases={min = 0, max = 1}"], "a list of values"),
        (['tune.space.confidence=["cubic"]'], "tune.space.confidence"),
        (["tune.metric=auc"], "tune.metric"),
        (["tune.method=bayes"], "tune.method"),
        (["tune.validation_fraction=1"], "tune.validation_fraction"),
        (["tune.eta=1"], "tune.eta"),
        (["tune.trials=-1"], "tune.trials"),
        (["tune.space.rank=[4"], "expected a TOML value"),
    ],
)
def test_bad_tune_settings_name_the_key(sets, message):
    with pytest.raises(ConfigError, match=message):
        _run(*sets)


def test_tune_section_reads_from_toml_and_round_trips(tmp_path):
    path = tmp_path / "t.toml"
    path.write_text(
        '[tune]\nmethod = "random"\n[tune.space]\nrank = [4, 8]\nreg = {min = 0.01, max = 1.0, log = true}\n'
    )
    run = config.load(path)
    assert run.tune.space == {"rank": [4, 8], "reg": {"min": 0.01, "max": 1.0, "log": True}}
    again = tmp_path / "again.toml"
    again.write_text(config.to_toml(run, "a header\nof two lines"))
    assert config.load(again) == run
    assert again.read_text().startswith("# a header\n# of two lines\n")


@pytest.mark.parametrize(
    "key, choice, value, expected",
    [
        ("rank", [8, 16, 32, 64], 64, 128),  # values growing by a ratio: the next by that ratio
        ("rank", [8, 16, 32, 64], 8, 4),
        ("rank", [8, 16, 32, 64], 32, None),  # inside
        ("reg_exponent", [0.25, 0.5, 0.75, 1.0], 0.25, 0.0),  # evenly spaced: one more space
        ("reg_exponent", [0.25, 0.5, 0.75, 1.0], 1.0, 1.25),
        ("reg_exponent", [1.5, 2.0], 2.0, None),  # 2.5 is no valid value
        ("rank", [512, 1024], 1024, None),  # past the ranks an extension may reach
        ("biases", [True, False], True, None),  # not a number
        ("reg", {"min": 0.01, "max": 10.0, "log": True}, 0.011, 0.001956),  # a quarter of the width, as a ratio
        ("reg", {"min": 0.01, "max": 10.0, "log": True}, 3.2, None),
        ("alpha", {"min": 1.0, "max": 5.0, "log": False}, 4.9, 5.9),
    ],
)
def test_a_value_on_the_edge_of_the_space_steps_beyond_it(key, choice, value, expected):
    got = tune.beyond(key, choice, value)
    if expected is None:
        assert got is None
        return
    new, widened = got
    assert new == pytest.approx(expected, rel=1e-3) and type(new) is type(value)
    inside = widened["min"] <= new <= widened["max"] if isinstance(widened, dict) else new in widened
    assert inside


# ---- the search ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def explicit_csv(tmp_path_factory):
    u, i, r, _ = planted(n_users=80, n_items=50, rank=3, density=0.45, noise=0.3, seed=5)
    r = np.clip(np.round(r * 2) / 2, 0.5, 5)
    path = tmp_path_factory.mktemp("tune") / "ratings.csv"
    path.write_text("user,item,rating\n" + "".join(f"u{a},i{b},{c:g}\n" for a, b, c in zip(u, i, r)))
    return str(path)


def _inner(spark, run, path):
    front = prepare.front_end(spark, run, input=path)
    front.load()
    outer, inner = front.tuning_split(tune.validation_split(run))
    return outer, inner


def test_the_validation_part_is_carved_from_train_only(spark, explicit_csv):
    run = _run()
    outer, inner = _inner(spark, run, explicit_csv)
    assert inner.stats.n + inner.heldout.n == outer.stats.n  # the training part, split again
    assert 0.1 < inner.heldout.n / outer.stats.n < 0.3
    assert outer.heldout.n > 0


def test_search_is_deterministic_and_its_best_is_the_best_trial(spark, explicit_csv):
    run = _run(
        "tune.method=random",
        "tune.trials=5",
        "tune.max_iterations=6",
        "tune.space.rank=[2, 3, 6]",
        "tune.space.reg={min = 0.005, max = 0.5, log = true}",
        "tune.space.biases=[true, false]",
    )
    tables = []
    for _ in range(2):
        _, inner = _inner(spark, run, explicit_csv)
        found = tune.search(inner, run)
        tables.append(tune.trials_table(found).drop_columns(["seconds"]))
        inner.release()
    assert tables[0].equals(tables[1])
    values = tables[0].column("validation_rmse").to_pylist()
    assert found.best_value == min(values) and found.best.number == int(np.argmin(values))
    best = tune.best_run(run, found)
    assert best.model.iterations == found.best_iteration and best.model.rank == found.best.settings["rank"]
    assert tables[0].column_names[:4] == ["trial", "rank", "reg", "biases"]
    history = tables[0].column("history").to_pylist()
    assert all(len(h) == n for h, n in zip(history, tables[0].column("iterations_run").to_pylist()))


def test_going_on_from_the_factors_is_the_same_fit_as_running_longer(spark, explicit_csv):
    """Halving continues survivors from where they stopped: ALS's state is its factors."""
    run = _run("tune.patience=50", "tune.space.rank=[3]")
    _, inner = _inner(spark, run, explicit_csv)
    validate = tune.Validation(inner, run)
    straight, stepped = (
        tune.Trial(0, {"rank": 3, "biases": True, "iterations": 6}),
        tune.Trial(1, {"rank": 3, "biases": True, "iterations": 6}),
    )
    with als.SharedBlocks(inner.train, inner.users.size, inner.items.size, run.model, inner.stats.n) as blocks:
        tune._advance(straight, inner, run, blocks, validate, 6)
        tune._advance(stepped, inner, run, blocks, validate, 2)
        tune._advance(stepped, inner, run, blocks, validate, 6)
    np.testing.assert_allclose(stepped.history, straight.history, rtol=1e-5)
    np.testing.assert_allclose(stepped.factors.X, straight.factors.X, atol=1e-4)
    inner.release()


def test_halving_gives_the_survivors_more_iterations(spark, explicit_csv):
    run = _run(
        "tune.method=halving",
        "tune.trials=9",
        "tune.eta=3",
        "tune.min_iterations=1",
        "tune.max_iterations=9",
        "tune.patience=20",
        "tune.space.rank=[2, 3, 4]",
        "tune.space.reg={min = 0.01, max = 0.5, log = true}",
        "tune.extend_rounds=0",
    )
    _, inner = _inner(spark, run, explicit_csv)
    found = tune.search(inner, run)
    runs = sorted(t.iterations for t in found.trials)
    assert runs == [1, 1, 1, 1, 1, 1, 3, 3, 9]  # 9 at 1, the best 3 to 3, the best one to 9
    assert found.best.iterations == 9
    inner.release()


@pytest.mark.parametrize("method", ["halving", "random"])
def test_a_best_setting_on_the_edge_of_the_space_is_tried_beyond_it(spark, explicit_csv, method, caplog):
    """Ratings of rank 3, a space of ranks 1 and 2: the best (2) sits on the edge, so rank 3 is tried
    from the best trial's other settings, and chosen for being better; a setting inside its range is
    not moved, and no trial repeats one before it."""
    run = _run(
        f"tune.method={method}",
        "tune.trials=4",
        "tune.max_iterations=8",
        "tune.min_iterations=2",
        "tune.space.rank=[1, 2]",
        "tune.space.reg=[0.05]",
        "model.rank=1",
        "model.reg=0.05",
    )
    _, inner = _inner(spark, run, explicit_csv)
    with caplog.at_level("INFO", logger="mf_spark"):
        found = tune.search(inner, run)
    ranks = [t.settings["rank"] for t in found.trials]
    assert ranks[:2] == [1, 2] and 3 in ranks and found.best.settings["rank"] >= 3
    extended = [t for t in found.trials if t.settings["rank"] == 3][0]
    assert extended.settings["reg"] == 0.05 and extended.number >= 2
    assert any("rank = 2 is on the edge of the space: trying 3" in r.getMessage() for r in caplog.records)
    inner.release()


def test_no_extension_rounds_keeps_the_search_inside_the_space(spark, explicit_csv):
    run = _run(
        "tune.method=random", "tune.trials=3", "tune.max_iterations=4", "tune.space.rank=[1, 2]", "tune.extend_rounds=0"
    )
    _, inner = _inner(spark, run, explicit_csv)
    found = tune.search(inner, run)
    assert {t.settings["rank"] for t in found.trials} <= {1, 2, 10}  # 10: trial 0, [model]'s own
    inner.release()


def test_the_finalists_and_trial_0_are_chosen_on_the_mean_of_several_seeds(spark, explicit_csv):
    run = _run(
        "tune.method=random",
        "tune.trials=6",
        "tune.max_iterations=5",
        "tune.seeds=2",
        "tune.extend_rounds=0",
        "tune.space.rank=[2, 3, 4]",
        "tune.space.reg={min = 0.01, max = 1.0, log = true}",
    )
    _, inner = _inner(spark, run, explicit_csv)
    found = tune.search(inner, run)
    table = tune.trials_table(found).to_pylist()
    finalists = [t for t in found.trials if t.repeats]
    assert found.trials[0] in finalists and 3 <= len(finalists) <= tune.FINALISTS + 1
    assert found.best in finalists and {r["seeds"] for r in table} == {1, 2}
    best = found.best
    n = min(len(best.history), len(best.repeats[0]))
    np.testing.assert_allclose(best.curve, (np.array(best.history[:n]) + best.repeats[0][:n]) / 2)
    assert best.repeats[0] != best.history[:n]  # another seed, another fit
    assert found.best_value == min(table[t.number]["validation_rmse"] for t in finalists)
    inner.release()


def test_a_refined_key_is_not_drawn_and_leaves_the_other_keys_draws_as_they_were():
    sets = [
        "tune.method=random",
        "tune.trials=12",
        "tune.space.rank=[2, 4, 8]",
        "tune.space.reg={min = 0.01, max = 1.0}",
    ]
    plain = tune.settings(_run(*sets))
    refined = tune.settings(_run(*sets, "tune.space.item_reg_scale=[1.0, 2.0]", "model.item_reg_scale=1.5"))
    assert [{k: v for k, v in s.items() if k != "item_reg_scale"} for s in refined] == plain
    assert {s["item_reg_scale"] for s in refined} == {1.5}  # [model]'s, until the refine stage
    grid = tune.settings(_run("tune.method=grid", "tune.space.rank=[2, 4]", "tune.space.item_reg_scale=[1.0, 2.0]"))
    assert len(grid) == 4  # a grid is every combination, refined keys too
    with pytest.raises(ConfigError, match="tune.space.item_reg_scale: a list of values"):
        tune.settings(_run("tune.space.item_reg_scale={min = 0.5, max = 2.0}"))


def test_the_best_trial_is_refined_with_each_listed_value_and_the_better_kept(spark, explicit_csv, caplog):
    run = _run(
        "tune.method=random",
        "tune.trials=4",
        "tune.max_iterations=5",
        "tune.extend_rounds=0",
        "tune.seeds=2",
        "tune.space.rank=[2, 3]",
        "tune.space.reg={min = 0.01, max = 0.3, log = true}",
        "tune.space.item_reg_scale=[1.0, 0.2, 30.0]",
    )
    _, inner = _inner(spark, run, explicit_csv)
    with caplog.at_level("INFO", logger="mf_spark"):
        found = tune.search(inner, run)
    drawn, added = found.trials[:4], found.trials[4:]
    assert all(t.settings["item_reg_scale"] == 1.0 for t in drawn)
    start = min(drawn, key=lambda t: tune.best_of(t, True) if t.history else np.inf)
    assert [t.settings for t in added] == [{**start.settings, "item_reg_scale": v} for v in (0.2, 30.0)]
    assert all(t.repeats for t in added)  # chosen on their seeds' mean like the finalists
    assert found.best is min(found.trials, key=lambda t: tune.best_of(t, True) if t.history else np.inf)
    assert "item_reg_scale" in tune.trials_table(found).column_names
    assert any(f"2 trials refined trial {start.number}'s item_reg_scale" in r.getMessage() for r in caplog.records)
    inner.release()


@pytest.mark.parametrize("front", ["driver", "spark"])
def test_without_timestamps_no_day_factor_offsets_are_scored(spark, explicit_csv, front):
    """The default explicit space lists day_factor_reg; ratings without timestamps have no days, so
    no trial is fitted again to score offsets there, whoever holds the ratings."""
    run = _run(f"data.front_end={front}", "tune.space.rank=[2]", "tune.space.day_factor_reg=[0.0, 3.0]")
    _, inner = _inner(spark, run, explicit_csv)
    assert tune.Validation(inner, run).factor_regs == []
    assert tune.search(inner, dataclasses.replace(run, tune=dataclasses.replace(run.tune, seeds=1))).offsets == {}
    inner.release()


def test_with_day_factor_offsets_the_refined_trials_are_compared_with_them(monkeypatch):
    """The offsets' ridge acts on the item factors, whose scale a refined key moves: the pick among
    the best trial and its refined ones is by each one's best offsets figure, not its own metric."""
    trials = [tune.Trial(n, {"item_reg_scale": s}, history=[h]) for n, (s, h) in enumerate([(1.0, 0.80), (1.5, 0.81)])]
    figures = {0: {0.0: 0.80, 10.0: 0.79}, 1: {0.0: 0.81, 10.0: 0.78}}
    monkeypatch.setattr(tune, "_score_offsets", lambda t, *_: figures[t.number])
    validate = type("V", (), {"lower_is_better": True})()
    best, offsets = tune._with_offsets([trials[0], *trials], None, None, None, validate)
    assert best is trials[1] and offsets == figures[1]
    figures[1] = {0.0: 0.81, 10.0: 0.79}  # equal: the best by its own metric stays
    assert tune._with_offsets([trials[0], *trials], None, None, None, validate)[0] is trials[0]


@pytest.mark.parametrize("kind, best_at, refit", [("explicit", 4, 4), ("implicit", 4, 8)])
def test_the_refit_runs_the_iterations_the_kind_carries_over(kind, best_at, refit):
    history = [0.5, 0.4, 0.3, 0.2, 0.25] if kind == "explicit" else [0.1, 0.2, 0.3, 0.4, 0.35]
    trial = tune.Trial(0, {"rank": 2, "iterations": 5}, history=history, post=[{}] * 5)
    found = tune.Search(
        [trial], "rmse" if kind == "explicit" else "ndcg_at_k", kind == "explicit", ["rank"], trial, kind
    )
    assert found.best_iteration == best_at and found.refit_iterations == refit
    assert found.best_settings == {"rank": 2, "iterations": refit}


@pytest.mark.parametrize("method", ["halving", "random"])
def test_a_spent_budget_stops_the_search_and_keeps_the_best_so_far(spark, explicit_csv, monkeypatch, caplog, method):
    """A budget spent during trial 0 (the clock below jumps a minute per reading): trial 0, [model]'s
    own settings, runs; no other starts; the search still chooses, and says why it stopped."""
    clock = iter(range(0, 10_000, 60))
    monkeypatch.setattr(tune.time, "perf_counter", lambda: float(next(clock)))
    run = _run(f"tune.method={method}", "tune.trials=6", "tune.budget_minutes=0.5", "tune.max_iterations=3")
    _, inner = _inner(spark, run, explicit_csv)
    with caplog.at_level("WARNING", logger="mf_spark"):
        found = tune.search(inner, run)
    assert [t.number for t in found.trials] == [0] and found.best.number == 0 and found.best.iterations >= 1
    assert any("time budget of 0.5 minutes ran out at trial 1" in r.getMessage() for r in caplog.records)
    inner.release()


def test_patience_stops_a_trial_that_stopped_improving(spark, explicit_csv):
    run = _run(
        "tune.method=grid",
        "tune.patience=2",
        "tune.max_iterations=30",
        "tune.space.rank=[6]",
        "tune.space.reg=[0.0001]",
        "tune.seeds=1",
    )
    _, inner = _inner(spark, run, explicit_csv)
    found = tune.search(inner, run)
    t = found.trials[0]
    assert t.stopped and t.iterations < 30
    assert t.iterations - found.best_iteration == 2
    inner.release()


def test_a_diverging_trial_is_recorded_and_the_search_goes_on(spark, explicit_csv, monkeypatch):
    run = _run("tune.method=grid", "tune.max_iterations=3", "tune.space.rank=[2, 3]", "tune.extend_rounds=0")
    _, inner = _inner(spark, run, explicit_csv)
    real = als.fit

    def fit(*args, **kw):
        if args[3].rank == 2:
            raise als.FitDiverged("the fit diverged at iteration 1: planted")
        return real(*args, **kw)

    monkeypatch.setattr(tune.als, "fit", fit)
    found = tune.search(inner, run)
    table = tune.trials_table(found).to_pylist()
    assert table[0]["validation_rmse"] is None and "planted" in table[0]["failed"]
    assert found.best.number == 1 and table[1]["failed"] is None
    inner.release()


def test_implicit_search_ranks_by_ndcg(spark, tmp_path):
    u, i, _, _ = planted(n_users=60, n_items=40, rank=3, density=0.3, seed=3)
    counts = np.random.default_rng(0).integers(1, 20, u.size)
    path = tmp_path / "plays.csv"
    path.write_text("user,item,plays\n" + "".join(f"{a},{b},{c}\n" for a, b, c in zip(u, i, counts)))
    run = _run(
        "model.kind=implicit",
        "split.method=per_user",
        "tune.method=random",
        "tune.trials=3",
        "tune.max_iterations=4",
        "tune.space.rank=[2, 4]",
        "tune.space.unobserved_weight=[0.1, 1.0]",
    )
    _, inner = _inner(spark, run, str(path))
    found = tune.search(inner, run)
    assert found.metric == "ndcg_at_k" and not found.lower_is_better
    values = [tune.best_of(t, False) for t in found.trials]
    assert found.best_value == max(values) and all(0 <= v <= 1 for v in values)
    inner.release()
    with pytest.raises(InputError, match="implicit models are scored by ranking"):
        tune.Validation(inner, dataclasses.replace(run, tune=dataclasses.replace(run.tune, metric="rmse")))


# ---- the job ---------------------------------------------------------------------------------------------
SMALL = [
    "--set",
    "tune.method=random",
    "--set",
    "tune.trials=3",
    "--set",
    "tune.max_iterations=4",
    "--set",
    "tune.space.rank=[2, 4]",
    "--set",
    "tune.space.reg=[0.02, 0.2]",
]


@pytest.mark.slow
def test_tune_job_writes_the_refit_model_the_trials_and_a_loadable_best_config(spark, explicit_csv, tmp_path, capsys):
    out = tmp_path / "out"
    assert tune_job.main(["--input", explicit_csv, "--output", str(out), *SMALL]) == 0
    printed = capsys.readouterr().out
    assert "best of 3 trials" in printed and "held-out RMSE" in printed
    for name in (
        "factors/users",
        "factors/items",
        "recommendations",
        "metrics.json",
        "model.json",
        "report.html",
        "tuning/trials.parquet",
        "best.toml",
        "_SUCCESS",
    ):
        assert (out / name).exists(), name
    metrics = json.loads((out / "metrics.json").read_text())
    t = metrics["tuning"]
    assert t["trials"] == 3 and t["metric"] == "rmse" and t["validation_ratings"] > 0
    best = config.load(out / "best.toml")
    assert best.model.rank == t["best"]["rank"] and best.model.iterations == t["best_iteration"]
    assert metrics["config"]["model"] == dataclasses.asdict(best.model)  # the refit is the best config
    trials = pq.read_table(out / "tuning" / "trials.parquet")
    assert trials.num_rows == 3 and "validation_rmse" in trials.column_names
    import browser  # the report as a browser builds it: the search's charts are in it

    dom = browser.dump_dom(out / "report.html")
    assert ">Tuning</h2>" in dom and ">Training history</h2>" in dom and dom.count("<svg") >= 10
    # best.toml trains the same model again with the train job
    again = tmp_path / "again"
    assert train_job.main(["--input", explicit_csv, "--output", str(again), "--config", str(out / "best.toml")]) == 0
    assert json.loads((again / "metrics.json").read_text())["rmse"] == pytest.approx(metrics["rmse"], rel=1e-4)


@pytest.mark.slow
def test_the_test_split_takes_no_part_in_the_choice(spark, explicit_csv, tmp_path):
    """Two runs whose --test files differ wildly choose the same settings from the same trials."""
    lines = open(explicit_csv).read().splitlines()
    train, test = tmp_path / "train.csv", tmp_path / "test.csv"
    train.write_text("\n".join(lines[:400]) + "\n")
    test.write_text(lines[0] + "\n" + "\n".join(lines[400:]) + "\n")
    other = tmp_path / "other.csv"
    other.write_text(lines[0] + "\n" + "".join(f"{r.split(',')[0]},{r.split(',')[1]},5\n" for r in lines[400:]))
    got = []
    for n, held in enumerate((test, other)):
        out = tmp_path / f"out{n}"
        assert tune_job.main(["--train", str(train), "--test", str(held), "--output", str(out), *SMALL]) == 0
        got.append(
            (
                pq.read_table(out / "tuning" / "trials.parquet").drop_columns(["seconds"]),
                (out / "best.toml").read_text(),
                json.loads((out / "metrics.json").read_text())["rmse"],
            )
        )
    assert got[0][0].equals(got[1][0]) and got[0][1] == got[1][1]
    assert got[0][2] != got[1][2]  # the test sets differ, and were scored


def test_too_few_ratings_to_validate_on_exit_2_naming_the_fix(spark, tmp_path, capsys):
    path = tmp_path / "tiny.csv"
    path.write_text("user,item,rating\n1,1,5\n1,2,3\n2,1,4\n2,3,2\n3,2,1\n")
    assert tune_job.main(["--input", str(path), "--output", str(tmp_path / "out")]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "the validation part of the training ratings is empty: raise tune.validation_fraction" in last
    assert not (tmp_path / "out").exists()


def test_tune_job_refuses_bad_arguments(capsys):
    assert tune_job.main(["--input", "x.csv"]) == 2
    assert "--output is required" in capsys.readouterr().err
    assert tune_job.main(["--input", "x.csv", "--output", "o", "--set", "tune.space.magic=[1]"]) == 2
    assert "tune.space.magic" in capsys.readouterr().err
