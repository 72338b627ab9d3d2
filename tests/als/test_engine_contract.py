"""What every engine owes a fit, held against each one (the engine contract): a planted matrix
recovered, an objective that never rises, factors that do not depend on the blocks, the exchange
reported, implicit fits that rank what was observed first, and the same factors as every other engine.
An engine added to mf_spark.als.engines gets a class here."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pytest
from conftest import planted

from mf_spark.als import loop as als
from mf_spark.core.config import ModelConfig
from mf_spark.data.ready import Triples

N_USERS, N_ITEMS = 60, 40


@pytest.fixture(scope="module")
def data():
    u, i, r, _ = planted(n_users=N_USERS, n_items=N_ITEMS, rank=4, density=0.6, noise=0.05, seed=11)
    test = np.random.default_rng(1).random(u.size) < 0.15
    return u, i, r, test


# Settings every engine must fit alike: explicit with biases, implicit, non-negative, conjugate gradients
# (with the users' history prior and the items' own lambda, which a half-step of users takes and one
# of items does not, and the other way round), and
# block counts that leave blocks empty.
VARIANTS = [
    {"biases": True},
    {"kind": "implicit", "alpha": 2.0},
    {"nonnegative": True, "num_user_blocks": 3, "num_item_blocks": 5},
    {"biases": True, "solver": "cg", "num_user_blocks": 3, "history_prior": 0.3, "item_reg_scale": 2.5},
    {"kind": "implicit", "alpha": 2.0, "solver": "cg", "num_item_blocks": 5},
]
_REFERENCE: dict = {}


def _values(r, kind):
    """Ratings as they are, or as implicit strengths: |r|, every seventh negated (a dislike, which
    weighs in the loss but not in the row's lambda count)."""
    if kind != "implicit":
        return r
    return np.where(np.arange(r.size) % 7 == 3, -np.abs(r), np.abs(r))


def _frame(spark, u, i, r):
    table = {
        "user_idx": pa.array(u, pa.int32()),
        "item_idx": pa.array(i, pa.int32()),
        "rating": pa.array(r, pa.float64()),
    }
    return spark.createDataFrame(pa.table(table))


def _reference(spark, u, i, r, cfg):
    """The fit of the simplest engine (a Spark job per half-step, broadcast factors), once per setting."""
    jobs = dataclasses.replace(cfg, exchange="jobs", strategy="broadcast")
    key = repr(jobs)  # the engines' classes share it
    if key not in _REFERENCE:
        _REFERENCE[key] = als.fit(_frame(spark, u, i, r), N_USERS, N_ITEMS, jobs)
    return _REFERENCE[key]


class EngineContract:
    settings: dict = {}  # the ModelConfig fields that choose the engine
    exchange: str = ""  # what FitResult.exchange must say
    driver_held = False  # the ratings as the driver front end leaves them (Triples), else a DataFrame

    def fit(self, spark, u, i, r, **model):
        cfg = ModelConfig(**{"rank": 4, "iterations": 3, "reg": 0.05, "seed": 5, **model, **self.settings})
        if self.driver_held:
            train = Triples(spark, u.astype(np.int32), i.astype(np.int32), r.astype(np.float64))
        else:
            train = _frame(spark, u, i, r)
        return als.fit(train, N_USERS, N_ITEMS, cfg), cfg

    def test_recovers_a_planted_matrix_and_reports_its_exchange(self, spark, data):
        u, i, r, test = data
        res, _ = self.fit(spark, u[~test], i[~test], r[~test], iterations=6, reg=0.002, biases=True)
        f = res.factors
        pred = f.mu + f.user_bias[u[test]] + f.item_bias[i[test]] + np.sum(f.X[u[test]] * f.Y[i[test]], axis=1)
        assert float(np.sqrt(np.mean((pred - r[test]) ** 2))) < 0.15  # the noise is 0.05
        assert res.exchange == self.exchange

    def test_the_objective_never_rises(self, spark, data):
        u, i, r, _ = data
        for kind in ("explicit", "implicit"):
            values = _values(r, kind)
            res, _ = self.fit(spark, u, i, values, kind=kind)
            losses = [h["loss"] for h in res.history]
            assert all(b <= a * (1 + 1e-5) for a, b in zip(losses, losses[1:])), (kind, losses)

    def test_factors_do_not_depend_on_the_blocks(self, spark, data):
        u, i, r, _ = data
        one, _ = self.fit(spark, u, i, r, num_user_blocks=1, num_item_blocks=1)
        many, _ = self.fit(spark, u, i, r, num_user_blocks=3, num_item_blocks=2)
        np.testing.assert_allclose(one.factors.X, many.factors.X, atol=1e-4)
        np.testing.assert_allclose(one.factors.Y, many.factors.Y, atol=1e-4)

    @pytest.mark.parametrize("model", VARIANTS)
    def test_gives_the_factors_of_every_other_engine(self, spark, data, model):
        u, i, r, _ = data
        values = _values(r, model.get("kind"))
        res, cfg = self.fit(spark, u, i, values, **model)
        assert res.exchange == self.exchange
        want = _reference(spark, u, i, values, cfg)
        np.testing.assert_allclose(res.factors.X, want.factors.X, atol=1e-4)
        np.testing.assert_allclose(res.factors.Y, want.factors.Y, atol=1e-4)
        np.testing.assert_allclose(res.losses, want.losses, rtol=1e-6)
        if cfg.biases:
            np.testing.assert_allclose(res.factors.item_bias, want.factors.item_bias, atol=1e-4)

    def test_implicit_fits_score_a_users_kind_of_item_above_the_rest(self, spark):
        """Four groups of users, each playing its own group's items: every user's items of its group
        (played or not) score above every other group's."""
        g = np.random.default_rng(4)
        uu, ii = np.meshgrid(np.arange(N_USERS), np.arange(N_ITEMS), indexing="ij")
        played = (uu % 4 == ii % 4) & (g.random(uu.shape) < 0.7)
        u, i = np.nonzero(played)
        res, _ = self.fit(spark, u, i, np.ones(u.size), kind="implicit", iterations=3)
        scores = res.factors.X @ res.factors.Y.T
        same = uu % 4 == ii % 4
        assert scores[same].mean() > scores[~same].mean() + 0.5


class TestStream(EngineContract):
    settings = {"exchange": "stream"}
    exchange = "stream"


class TestJobs(EngineContract):
    settings = {"exchange": "jobs"}
    exchange = "jobs"
    test_gives_the_factors_of_every_other_engine = None  # it is the reference the others are held to


class HeldToTheReference(EngineContract):
    """An engine held to the reference's factors and per-iteration losses (1e-4, 1e-6) on the two
    variants that together cover biases, implicit Gramians, conjugate gradients and empty blocks;
    never raising the objective, block independence and implicit ranking are the reference's
    (TestJobs), which these equalities carry over: its own fits for those would only repeat them."""

    test_the_objective_never_rises = None
    test_implicit_fits_score_a_users_kind_of_item_above_the_rest = None
    test_factors_do_not_depend_on_the_blocks = None

    @pytest.mark.parametrize("model", VARIANTS[3:])
    def test_gives_the_factors_of_every_other_engine(self, spark, data, model):
        EngineContract.test_gives_the_factors_of_every_other_engine(self, spark, data, model)


class TestStreamFromTheDriver(HeldToTheReference):
    """The stream engine over ratings the driver holds (it sends each task its pieces): the same
    stage as TestStream's once the pieces have arrived."""

    settings = {"exchange": "stream"}
    exchange = "stream"
    driver_held = True


class TestFrames(HeldToTheReference):
    """A job per half-step over blocks in a cached DataFrame, solved by the kernels every engine
    calls; it also recovers a planted matrix itself."""

    settings = {"exchange": "frames"}
    exchange = "frames"


class TestDriver(HeldToTheReference):
    """The blocks collected once into the process that runs the fit (what a Spark Connect client takes
    for few ratings), solved by its threads on the kernels every engine calls."""

    settings = {"exchange": "driver"}
    exchange = "driver"


@pytest.mark.slow  # join fits run SQL joins every half-step: the slowest engine, with the slow tests
class TestJoin(HeldToTheReference):
    """Its joins move factors alike whatever the model; recovering a planted matrix is the reference's too."""

    settings = {"strategy": "join", "iterations": 1}  # a join per half-step: one iteration moves both sides
    exchange = "join"
    test_recovers_a_planted_matrix_and_reports_its_exchange = None
