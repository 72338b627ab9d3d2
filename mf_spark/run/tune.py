"""Hyperparameter search on a validation split carved out of the training ratings, never the test set.

    fit part, validation part = the training ratings split again by the run's split rules
    blocks of the fit part: built once (als.SharedBlocks); every trial's half-steps run on them
    each trial: its settings fitted on the fit part, the validation metric after every iteration
    best = the trial, and the iteration, with the best validation metric

jobs/tune.py then refits the best settings (iterations = the best iteration) on all the training
ratings and scores the test set.

Searches (tune.method):
    grid     every combination of the space's value lists
    random   [model]'s own settings and tune.trials - 1 drawn from the space (seeded by tune.seed;
             tune.trials 0: config.DEFAULT_TRIALS of the model kind)
    halving  successive halving: those tune.trials settings run tune.min_iterations iterations; the
             best 1/eta of them go on, from the factors they reached, to eta times as many, and so
             on up to tune.max_iterations (ALS's state is its factors, so going on is the same fit
             as running longer in one go)
Then the space's edges (tune.extend_rounds): a best setting on the edge of its list or range is tried
one step beyond (rank 64 of [8, 16, 32, 64]: 128), one trial per such setting, and a best trial
still improving at its last iteration goes on to twice as many; while a round improves on the best,
the next starts from the new best. A default space cannot fit every data set, so its edges move.
Then refine (random, halving): the keys of REFINED in the space are not drawn (the draws keep
[model]'s value) but tried on the best trial, one trial per other listed value.
Every trial stops once its validation metric has not improved for tune.patience iterations, and a
trial whose fit diverges is recorded with no metric. Settings applied after a fit (POST_FIT) are not
drawn: every trial scores each listed day biases' lambda on its own factors after every iteration
and keeps the best; the day factor offsets' lambda, whose solve costs as much as a half-step, is
chosen once the best trial is known, on its factors at its best iteration (Search.offsets); the
refined trials are compared with their own offsets, as the offsets' ridge depends on the scale of
the item factors that a refined key moves.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from mf_spark import evaluate
from mf_spark.als import days
from mf_spark.als import loop as als
from mf_spark.core.config import TUNE_METRICS, ModelConfig, RunConfig, SplitConfig
from mf_spark.core.errors import ConfigError, FitDiverged, InputError
from mf_spark.core.types import DayBiases, Factors
from mf_spark.data.prepare import Ready
from mf_spark.data.ready import TrainStats
from mf_spark.model.factors import Scorer

log = logging.getLogger("mf_spark")

# The space searched when [tune.space] is empty: wide enough for data sets of any shape, since the
# best settings differ by data set (docs/quality.md). Explicit: lambda on a log scale
# together with the count exponent nu (the best lambda moves by decades with nu), biases, and the
# users' history prior; the day biases and day factor offsets where ratings have timestamps.
# Implicit: iALS's ranges (Rendle et al. 2021): w0 well below 1, lambda on a log scale, and the
# confidence's slope and form.
DEFAULT_SPACES: dict[str, dict[str, Any]] = {
    "explicit": {
        "rank": [8, 16, 32, 64],
        "reg": {"min": 0.01, "max": 10.0, "log": True},
        "reg_exponent": [0.25, 0.5, 0.75, 1.0],
        "biases": [True, False],
        "bias_reg": {"min": 0.1, "max": 3.0, "log": True},
        "history_prior": [0.0, 0.1, 0.2, 0.4],
        "item_reg_scale": [1.0, 1.5, 2.0],
        "day_bias_reg": [0.0, 3.0, 10.0, 30.0],
        "day_factor_reg": [0.0, 3.0, 10.0, 30.0],
    },
    "implicit": {
        "rank": [16, 32, 64],
        "reg": {"min": 0.003, "max": 0.3, "log": True},
        "reg_exponent": [0.5, 1.0],
        "alpha": {"min": 0.1, "max": 10.0, "log": True},
        "confidence": ["linear", "log"],
        "unobserved_weight": {"min": 0.01, "max": 1.0, "log": True},
    },
}


# Where every training value is the same (binary feedback), every observed entry has the same
# confidence c: the objective divided by c has only w0 / c and lambda / c, so the confidence's slope
# and form rescale what unobserved_weight and reg already search, and are left out of the default space.
CONFIDENCE_KEYS = ("alpha", "confidence")


def for_data(run: RunConfig, stats: TrainStats) -> RunConfig:
    """`run` with the default implicit space narrowed for binary feedback (CONFIDENCE_KEYS)."""
    if run.tune.space or run.model.kind != "implicit" or stats.lo != stats.hi:
        return run
    space = {k: v for k, v in DEFAULT_SPACES["implicit"].items() if k not in CONFIDENCE_KEYS}
    log.info(
        "tuning: every training value is %g: alpha and confidence only rescale unobserved_weight and reg "
        "there, so they keep [model]'s values (%g, %s) and are not searched",
        stats.lo,
        run.model.alpha,
        run.model.confidence,
    )
    return dataclasses.replace(run, tune=dataclasses.replace(run.tune, space=space))


def space_of(run: RunConfig) -> dict[str, Any]:
    """The searched space: [tune.space], else the model kind's default."""
    return run.tune.space or DEFAULT_SPACES[run.model.kind]


def validation_split(run: RunConfig) -> SplitConfig:
    """How the validation part is carved from the training ratings: the run's split method, with
    tune.validation_fraction and a seed of its own (another draw than the test split's)."""
    return dataclasses.replace(run.split, test_fraction=run.tune.validation_fraction, seed=run.split.seed + 1)


def _draw(choice: Any, rng: np.random.Generator) -> Any:
    if isinstance(choice, list):
        return choice[int(rng.integers(len(choice)))]
    lo, hi = choice["min"], choice["max"]
    x = math.exp(rng.uniform(math.log(lo), math.log(hi))) if choice["log"] else rng.uniform(lo, hi)
    return int(round(x)) if isinstance(lo, int) else float(f"{x:.4g}")


# Ranks an extension round may reach: past them a fit's memory and time grow beyond what a search
# should spend unasked (a list in [tune.space] can still name larger ones).
MAX_EXTENDED_RANK = 1024
# A range's edge: the best value within this share of the range's width (in log ratio for a log range).
EDGE_SHARE = 0.1


def beyond(key: str, choice: Any, value: Any) -> tuple[Any, Any] | None:
    """(the value one step past `value`, `choice` widened to hold it) when `value` sits on an edge
    of `choice` (a list of numbers, or a range); None inside, for a choice that is not numeric, or
    when the step leaves the key's valid values. The step of a list is its spacing at that edge
    (a ratio when its values grow by one, as ranks do); of a range, a quarter of its width."""
    if isinstance(choice, dict):
        lo, hi, log_scale = choice["min"], choice["max"], choice["log"]
        if hi <= lo:
            return None
        at = (lambda x: math.log(x)) if log_scale else (lambda x: x)
        width = at(hi) - at(lo)
        step = width / 4
        if at(value) - at(lo) <= EDGE_SHARE * width:
            new = math.exp(at(value) - step) if log_scale else value - step
        elif at(hi) - at(value) <= EDGE_SHARE * width:
            new = math.exp(at(value) + step) if log_scale else value + step
        else:
            return None
        new = int(round(new)) if isinstance(lo, int) else float(f"{new:.4g}")
        widened = {**choice, "min": min(lo, new), "max": max(hi, new)}
    else:
        numbers = sorted({v for v in choice if isinstance(v, (int, float)) and not isinstance(v, bool)})
        if len(numbers) < 2 or value not in (numbers[0], numbers[-1]):
            return None
        a, b = (numbers[-2], numbers[-1]) if value == numbers[-1] else (numbers[1], numbers[0])
        geometric = (
            len(numbers) > 2
            and numbers[0] > 0
            and all(math.isclose(y / x, numbers[1] / numbers[0], rel_tol=0.01) for x, y in zip(numbers, numbers[1:]))
        )
        new = b * (b / a) if geometric else b + (b - a)
        new = int(round(new)) if all(isinstance(v, int) for v in numbers) else float(f"{new:.4g}")
        widened = [*choice, new]
    if new == value or (key == "rank" and new > MAX_EXTENDED_RANK):
        return None
    try:
        ModelConfig(**{key: new})
    except ConfigError:
        return None
    return new, widened


# Settings applied after a fit, to its factors: a draw of them would cost whole fits. A trial scores
# each listed day biases' lambda after every iteration and keeps the best; the day factor offsets'
# values (AFTER_SEARCH) are scored on the best trial alone, on top of its day biases.
POST_FIT = ("day_bias_reg", "day_factor_reg")
# Settings not drawn (random, halving) but tried on the best trial once the draws are done, one trial
# per listed value (refine): a key whose best value barely moves with the others' region. Drawn, it
# would reshuffle every other key's draws, and the search's choice with them.
REFINED = ("item_reg_scale",)
AFTER_SEARCH = ("day_factor_reg",)


def post_fit_values(run: RunConfig) -> dict[str, list[Any]]:
    """The values of each post-fit setting in the space that every trial scores."""
    space, out = space_of(run), {}
    for key in (k for k in POST_FIT if k in space):
        values = space[key]
        if not isinstance(values, list):
            raise ConfigError(
                f"config key tune.space.{key}: a list of values (each is scored on every trial's "
                f"factors after every iteration), got a range"
            )
        out[key] = values
    return out


def settings(run: RunConfig) -> list[dict[str, Any]]:
    """The trials' settings (post-fit ones aside), in trial order: every combination (grid), or
    [model]'s own settings then draws up to tune.trials (random, halving), the same for the same
    tune.seed."""
    space, tune = {k: v for k, v in space_of(run).items() if k not in POST_FIT}, run.tune
    trials = tune.trials_for(run.model.kind)
    if tune.method == "grid":
        ranges = [k for k, v in space.items() if isinstance(v, dict)]
        if ranges:
            raise ConfigError(
                f"config key tune.method: 'grid' needs lists of values; tune.space has ranges "
                f"for {', '.join(ranges)} (use random or halving, or list the values)"
            )
        keys = list(space)
        return [dict(zip(keys, combo)) for combo in itertools.product(*(space[k] for k in keys))]
    rng = np.random.default_rng(tune.seed)
    # Trial 0 is the run's own [model] settings: the config as it is competes with the draws.
    out: list[dict[str, Any]] = [{k: getattr(run.model, k) for k in space}]
    seen: set[tuple] = {tuple(sorted(out[0].items()))}
    kept = {k: out[0][k] for k in REFINED if k in space}  # tried on the best trial (refine)
    for key in (k for k in kept if not isinstance(space[k], list)):
        raise ConfigError(
            f"config key tune.space.{key}: a list of values (each is tried on the best trial once the draws "
            f"are done), got a range"
        )
    for _ in range(trials * 20):  # distinct draws; a small discrete space runs out first
        draw = {**{k: _draw(v, rng) for k, v in space.items() if k not in kept}, **kept}
        key = tuple(sorted(draw.items()))
        if key not in seen:
            seen.add(key)
            out.append(draw)
        if len(out) == trials:
            break
    return out


class Validation:
    """The validation metric of any factors: RMSE or MAE of the validation ratings (with the best of
    the listed day biases), or a ranking metric at eval.k over (a sample of) the validation users,
    their fit-part items excluded. Runs on the driver, no Spark job (the day biases of ratings Spark
    holds too, when they fit data.front_end_max_mb; else a job per call)."""

    def __init__(self, inner: Ready, run: RunConfig):
        kind = run.model.kind
        self.metric = run.tune.metric_for(kind)
        self.lower_is_better = TUNE_METRICS[self.metric]
        if inner.heldout.n == 0:
            raise InputError(
                "the validation part of the training ratings is empty: raise "
                "tune.validation_fraction or give more training ratings"
            )
        if self.lower_is_better and kind != "explicit":
            raise InputError(
                f"tune.metric = {self.metric!r} scores predicted ratings: implicit models "
                f"are scored by ranking (ndcg_at_k, map_at_k, precision_at_k, recall_at_k)"
            )
        self.kind, self.heldout = kind, inner.heldout
        self.mean, self.range = inner.stats.mean, (inner.stats.lo, inner.stats.hi) if kind == "explicit" else None
        self.ranking = None
        if not self.lower_is_better:
            relevant = evaluate.relevant_items(inner.heldout, evaluate.relevance_threshold(run))
            if relevant.users.size == 0:
                raise InputError(
                    "no validation user has a relevant item known in the fit part: a ranking "
                    "metric cannot be measured (raise tune.validation_fraction)"
                )
            sample = evaluate.sample_users(relevant, run.tune.validation_users, run.tune.seed)
            self.ranking = evaluate.RankingEvaluator(inner.train, sample, inner.items.size, run.eval.k, on_driver=True)
        # Day biases move predicted ratings only: a ranking metric is the same with or without them,
        # so it is measured once and the first listed value kept.
        post = post_fit_values(run)
        self.searched = "day_bias_reg" in post
        self.day_regs = post.get("day_bias_reg", [run.model.day_bias_reg])
        if kind != "explicit" or self.ranking is not None:
            self.day_regs = self.day_regs[:1]
        # Day factor offsets: each listed value (else [model]'s), scored by `offsets` on the best
        # trial only, so that its validation figure is what the refit will fit.
        self.factor_searched = "day_factor_reg" in post
        self.factor_regs = post.get("day_factor_reg", [run.model.day_factor_reg])
        if kind != "explicit" or self.ranking is not None or not any(v > 0 for v in self.factor_regs):
            self.factor_regs = []
        self.days = None
        if any(v > 0 for v in self.day_regs + self.factor_regs):  # every iteration: on the driver where it fits
            train = days.on_driver(inner.train, inner.stats.n, run.data.front_end_max_mb * 2**20)
            self.days = days.DayFitter(train, run.model.day_length)
            if not self.days.timed:
                self.factor_regs = []  # no timestamps: no offsets to fit, and no refit to score them
        self.spark_free = self.days is None or self.days.spark_free
        self.day_at = None  # the validation rows' (user, day) positions: the same every call

    def __call__(self, factors: Factors) -> tuple[float, dict[str, Any]]:
        """The metric of `factors` with the best of the listed day biases, and that lambda."""
        best: tuple[float, dict[str, Any]] | None = None
        fitted = self.days.fit(factors, self.day_regs) if self.days is not None else [None] * len(self.day_regs)
        for reg, biases in zip(self.day_regs, fitted):
            value = self._score(factors, biases)
            if best is None or (value < best[0] if self.lower_is_better else value > best[0]):
                best = value, {"day_bias_reg": reg} if self.searched else {}
        return best

    def offsets(self, factors: Factors, day_bias_reg: float) -> list[float]:
        """The metric of `factors` with the day biases of `day_bias_reg` and the factor offsets of each
        of `factor_regs` on top (0: none)."""
        biases = self.days(factors, day_bias_reg) if day_bias_reg > 0 else None
        pairs = biases if biases is not None else self.days.unbiased(factors)
        return [
            self._score(factors, self.days.with_factors(factors, pairs, reg) if reg > 0 else biases)
            for reg in self.factor_regs
        ]

    def _score(self, factors: Factors, biases: DayBiases | None) -> float:
        """The metric of `factors` with the day biases (and offsets) `biases`, or none."""
        if biases is not None and (self.day_at is None or not self.days.spark_free):  # with_bias's pairs stay
            self.day_at = biases.positions(self.heldout.u, self.heldout.t)
        scorer = Scorer(self.kind, factors, self.mean, self.range, biases)
        if self.ranking is None:
            return evaluate.error_metrics(scorer, self.heldout, self.day_at)[self.metric]
        return self.ranking(scorer)[self.metric]


@dataclass
class Trial:
    number: int
    settings: dict[str, Any]
    history: list[float] = field(default_factory=list)  # validation metric after each iteration
    post: list[dict[str, Any]] = field(default_factory=list)  # POST_FIT values chosen, per iteration
    seconds: float = 0.0
    factors: Factors | None = None  # where it stopped (kept while the halving may go on)
    stopped: bool = False  # early stop (patience) or divergence: never goes on
    failed: str = ""  # why the fit diverged
    repeats: list[list[float]] = field(default_factory=list)  # its histories with other model seeds (finalists)

    @property
    def iterations(self) -> int:
        return len(self.history)

    @property
    def curve(self) -> list[float]:
        """The validation metric after each iteration, averaged over the model seeds it ran with
        (a finalist's, tune.seeds), as far as every seed's run went; else its history."""
        if not self.repeats:
            return self.history
        runs = [self.history, *self.repeats]
        n = min(len(h) for h in runs)
        return [float(v) for v in np.mean([h[:n] for h in runs], axis=0)] if n else []

    def chosen(self, lower_is_better: bool) -> dict[str, Any]:
        """Its settings with the post-fit values of its best iteration."""
        return {**self.settings, **(self.post[_best_at(self.curve, lower_is_better)] if self.curve else {})}


# The refit's iterations per best validation iteration, by model kind. Measured on development splits
# of three data sets (docs/quality.md, "Iterations of the refit"): an explicit fit stopped early is
# regularized by stopping, and more iterations on the larger refit lose test RMSE; an implicit fit's
# ranking goes on improving slowly past the validation metric's noisy peak, and twice the iterations
# gained test NDCG on average.
REFIT_ITERATIONS = {"explicit": 1.0, "implicit": 2.0}


@dataclass
class Search:
    trials: list[Trial]
    metric: str
    lower_is_better: bool
    params: list[str]  # the searched keys, in the space's order
    best: Trial
    kind: str = "explicit"
    # the best trial's validation metric with each day factor offsets' lambda (AFTER_SEARCH), at its
    # best iteration, over its seeds' mean; empty when there are none to fit
    offsets: dict[float, float] = field(default_factory=dict)

    @property
    def best_iteration(self) -> int:
        return _best_at(self.best.curve, self.lower_is_better) + 1

    @property
    def best_value(self) -> float:
        return self.best.curve[self.best_iteration - 1]

    @property
    def offsets_reg(self) -> float | None:
        """The day factor offsets' lambda chosen on the best trial; None when none were scored."""
        if not self.offsets:
            return None
        pick = min if self.lower_is_better else max
        return pick(self.offsets, key=self.offsets.get)  # the first listed of equals

    @property
    def validation(self) -> float:
        """The validation metric of what the refit fits: the best trial's, with the chosen offsets."""
        return self.best_value if self.offsets_reg is None else self.offsets[self.offsets_reg]

    @property
    def refit_iterations(self) -> int:
        return math.ceil(self.best_iteration * REFIT_ITERATIONS[self.kind])

    @property
    def best_settings(self) -> dict[str, Any]:
        """The best trial's settings, post-fit values and the refit's iterations: what the refit uses."""
        offsets = {} if self.offsets_reg is None else {"day_factor_reg": self.offsets_reg}
        return {**self.best.chosen(self.lower_is_better), **offsets, "iterations": self.refit_iterations}


def _best_at(history: list[float], lower: bool) -> int:
    """0-based position of the best value (the earliest of equals)."""
    values = np.asarray(history, np.float64)
    return int(np.argmin(values) if lower else np.argmax(values))


def best_of(trial: Trial, lower_is_better: bool) -> float | None:
    """The trial's best validation metric (over its seeds' mean, for a finalist); None for a trial
    that diverged."""
    curve = trial.curve
    return curve[_best_at(curve, lower_is_better)] if curve else None


def _model(run: RunConfig, trial: Trial) -> ModelConfig:
    return dataclasses.replace(run.model, **trial.settings, checkpoint_interval=0)


def _advance(
    trial: Trial, inner: Ready, run: RunConfig, blocks: als.SharedBlocks, validate: Validation, to: int
) -> None:
    """Run `trial` on from its factors until it has `to` iterations, its metric stops improving for
    tune.patience iterations, or its fit diverges."""
    cfg = _model(run, trial)
    todo = min(to, cfg.iterations) - trial.iterations
    if trial.stopped or todo <= 0:
        return
    patience = run.tune.patience

    def on_iteration(iteration: int, factors: Factors) -> dict[str, Any]:
        value, post = validate(factors)
        trial.history.append(value)
        trial.post.append(post)
        since_best = len(trial.history) - 1 - _best_at(trial.history, validate.lower_is_better)
        trial.stopped = since_best >= patience
        return {"validation": value, "stop": trial.stopped}

    on_iteration.spark_free = validate.spark_free
    started = time.perf_counter()
    try:
        fit = als.fit(
            inner.train,
            inner.users.size,
            inner.items.size,
            dataclasses.replace(cfg, iterations=todo),
            on_iteration=on_iteration,
            stats=inner.stats,
            initial=trial.factors,
            blocks=blocks,
            user_ids=inner.users.ids,
        )
        trial.factors = fit.factors
    except FitDiverged as e:
        trial.stopped, trial.failed, trial.factors = True, str(e), None
        del trial.history[:], trial.post[:]
    trial.seconds += time.perf_counter() - started
    shown = f"{trial.history[-1]:.5g}" if trial.history else "diverged"
    log.info(
        "trial %d %s: %s %s after %d iterations%s",
        trial.number,
        trial.settings,
        validate.metric,
        shown,
        trial.iterations,
        " (stopped)" if trial.stopped and trial.history else "",
    )


def _value(trial: Trial, validate: Validation) -> float:
    """The trial's best metric so far; the worst possible for a trial with none (diverged)."""
    value = best_of(trial, validate.lower_is_better)
    return (math.inf if validate.lower_is_better else -math.inf) if value is None else value


def _leader(trials: list[Trial], validate: Validation) -> Trial | None:
    """The trial with the best metric so far (the first of equals, in the trials' order); None when
    none has one."""
    pick = min if validate.lower_is_better else max
    return pick((t for t in trials if t.history), key=lambda t: _value(t, validate), default=None)


def _drop_all_but(keep: Trial | None, trials: list[Trial]) -> None:
    for t in trials:
        if t is not keep:
            t.factors = None


def _extend(
    trials: list[Trial], inner: Ready, run: RunConfig, blocks: als.SharedBlocks, validate: Validation, spent
) -> list[Trial]:
    """Rounds past the space's edges from the best trial (tune.extend_rounds): the trials they add.
    `spent(trial)`: whether the time budget is spent before that trial."""
    space = {k: v for k, v in space_of(run).items() if k not in POST_FIT}
    added: list[Trial] = []
    best = _leader(trials, validate)
    for _ in range(run.tune.extend_rounds):
        if best is None:
            break
        before, tried = _value(best, validate), []
        ceiling = best.settings["iterations"]
        last_best = best.history and _best_at(best.history, validate.lower_is_better) + 1 == best.iterations
        if best.factors is not None and not best.stopped and best.iterations == ceiling and last_best:
            log.info(
                "tuning: trial %d still improves at iteration %d: going on to %d", best.number, ceiling, 2 * ceiling
            )
            best.settings["iterations"] = 2 * ceiling
            _advance(best, inner, run, blocks, validate, 2 * ceiling)
        for key, choice in space.items():
            step = beyond(key, choice, best.settings[key])
            if step is None:
                continue
            value, space[key] = step
            t = Trial(len(trials) + len(added), {**best.settings, key: value})
            if spent(t):
                return added
            log.info("tuning: %s = %r is on the edge of the space: trying %r", key, best.settings[key], value)
            _advance(t, inner, run, blocks, validate, t.settings["iterations"])
            added.append(t)
            tried.append(t)
        leader = _leader([best, *tried], validate)
        _drop_all_but(leader, [best, *tried])
        if leader is best and _value(best, validate) == before:
            break  # nothing past the edges did better
        best = leader
    return added


def _refine(
    trials: list[Trial], inner: Ready, run: RunConfig, blocks: als.SharedBlocks, validate: Validation, spent
) -> list[Trial]:
    """The best trial again with each other listed value of each REFINED key in the space, one key
    after another from the best so far by the trials' own metric: [that first best trial, the trials
    added], or [] when none were. `spent(trial)`: as in `_extend`."""
    space, added = space_of(run), []
    start = best = _leader(trials, validate)
    for key in (k for k in REFINED if k in space and best is not None):
        tried = []
        for value in space[key]:
            t = Trial(len(trials) + len(added), {**best.settings, key: value})
            if value == best.settings[key] or spent(t):
                continue
            _advance(t, inner, run, blocks, validate, t.settings["iterations"])
            added.append(t)
            tried.append(t)
        leader = _leader([best, *tried], validate)
        _drop_all_but(leader, [best, *tried])
        best = leader
    if not added:
        return []
    keys = ", ".join(k for k in REFINED if k in space)
    log.info("tuning: %d trials refined trial %d's %s", len(added), start.number, keys)
    return [start, *added]


# Trials whose validation metric is averaged over tune.seeds model seeds before the choice: the best
# few and trial 0 ([model]'s own settings, so that a draw that beat them by one seed's luck does not
# replace them).
FINALISTS = 3


def _average_seeds(
    trials: list[Trial],
    inner: Ready,
    run: RunConfig,
    blocks: als.SharedBlocks,
    validate: Validation,
    over,
    refined: list[Trial] = (),
) -> None:
    """Run the finalists (and the `refined` trials, whose choice comes after) again with tune.seeds - 1
    other model seeds, as many iterations as they ran (`over()`: whether the time budget is spent);
    their `curve` is then the seeds' mean."""
    if run.tune.seeds <= 1:
        return
    ranked = sorted(
        (t for t in trials if t.history), key=lambda t: _value(t, validate), reverse=not validate.lower_is_better
    )
    finalists: list[Trial] = []
    for t in ranked:
        if all(f.settings != t.settings for f in finalists):
            finalists.append(t)
        if len(finalists) == FINALISTS:
            break
    for t in (trials[0], *refined):
        if t.history and t not in finalists:
            finalists.append(t)
    log.info(
        "tuning: the validation metric of trials %s averaged over %d seeds",
        [t.number for t in finalists],
        run.tune.seeds,
    )
    for seed in range(1, run.tune.seeds):
        reseeded = dataclasses.replace(run, model=dataclasses.replace(run.model, seed=run.model.seed + seed))
        for t in finalists:
            if over():
                return
            again = Trial(t.number, dict(t.settings))
            _advance(again, inner, reseeded, blocks, validate, t.iterations)
            t.seconds += again.seconds
            if again.history:  # a seed that diverged leaves the trial its other runs
                t.repeats.append(again.history)


def _with_offsets(
    pool: list[Trial], inner: Ready, run: RunConfig, blocks: als.SharedBlocks, validate: Validation
) -> tuple[Trial, dict[float, float]]:
    """The trial of `pool` (the best by its own metric, then the refined trials) best with its best day
    factor offsets, and its Search.offsets. The offsets' ridge acts on the item factors, whose scale
    the refined keys move, so the refined trials are compared with them."""
    scored = []
    for t in (t for n, t in enumerate(pool) if t.history and all(t is not o for o in pool[:n])):  # each once
        offsets = _score_offsets(t, inner, run, blocks, validate)
        scored.append((min(offsets.values()) if validate.lower_is_better else max(offsets.values()), t, offsets))
    pick = min if validate.lower_is_better else max
    _, best, offsets = pick(scored, key=lambda x: x[0])  # the first of equals: the best by its own metric
    return best, offsets


def _score_offsets(
    best: Trial, inner: Ready, run: RunConfig, blocks: als.SharedBlocks, validate: Validation
) -> dict[float, float]:
    """Search.offsets of `best`: the trial fitted again with each model seed it ran with, to its best
    iteration (the same factors as its run, which kept only its last), and each day factor offsets'
    lambda scored on top of the day biases it chose."""
    at = _best_at(best.curve, validate.lower_is_better)
    day_bias_reg = best.chosen(validate.lower_is_better).get("day_bias_reg", run.model.day_bias_reg)
    scores = []
    for seed in range(1 + len(best.repeats)):
        cfg = dataclasses.replace(_model(run, best), iterations=at + 1, seed=run.model.seed + seed)
        fit = als.fit(
            inner.train,
            inner.users.size,
            inner.items.size,
            cfg,
            stats=inner.stats,
            blocks=blocks,
            user_ids=inner.users.ids,
        )
        if not validate.spark_free:
            blocks.engine.pause()  # resident tasks hold every slot; the offsets of Spark's ratings need some
        scores.append(validate.offsets(fit.factors, day_bias_reg))
    offsets = dict(zip(validate.factor_regs, (float(v) for v in np.mean(scores, axis=0))))
    log.info("tuning: trial %d with day factor offsets, %s by lambda: %s", best.number, validate.metric, offsets)
    return offsets


def search(inner: Ready, run: RunConfig) -> Search:
    """Run the search of run.tune over `inner` (the fit part, and the validation part as its held-out
    rows). Trials are deterministic for a given tune.seed and model.seed."""
    run = for_data(run, inner.stats)
    tune = run.tune
    validate = Validation(inner, run)
    chosen = settings(run)
    trials = [Trial(n, s) for n, s in enumerate(chosen)]
    deadline = time.perf_counter() + 60.0 * tune.budget_minutes if tune.budget_minutes else math.inf
    cut: list[int] = []  # the trial number at which the budget stopped the search

    def spent(t: Trial) -> bool:
        """Whether the budget is spent before trial `t` (trial 0, [model]'s own, always runs)."""
        if t.number and time.perf_counter() >= deadline:
            cut.append(t.number)
            return True
        return False

    for t in trials:  # [tune.space] iterations caps its own trials; max_iterations the others
        t.settings.setdefault("iterations", tune.max_iterations)
    ceiling = lambda t: t.settings["iterations"]
    log.info(
        "tuning: %d trials (%s), %s on %s",
        len(trials),
        tune.method,
        validate.metric,
        scored(inner.heldout),
    )
    with als.SharedBlocks(inner.train, inner.users.size, inner.items.size, run.model, inner.stats.n) as blocks:
        if tune.method == "halving":
            alive, budget = trials, tune.min_iterations
            while alive:
                for t in alive:  # each keeps its factors: it may go on
                    if spent(t):
                        break
                    _advance(t, inner, run, blocks, validate, budget)
                going = [t for t in alive if not t.stopped and t.iterations < ceiling(t)]
                if cut or not going or budget >= tune.max_iterations:
                    break
                ranked = sorted(going, key=lambda t: _value(t, validate), reverse=not validate.lower_is_better)
                keep = ranked[: max(1, math.ceil(len(ranked) / tune.eta))]
                for t in alive:
                    if t not in keep:
                        t.factors = None  # out of the search: its factors are not needed
                alive, budget = keep, min(budget * tune.eta, tune.max_iterations)
        else:
            for t in trials:
                if spent(t):
                    break
                _advance(t, inner, run, blocks, validate, ceiling(t))
                _drop_all_but(_leader(trials, validate), trials)  # the leader may go on (_extend)
        if not cut:
            trials += _extend(trials, inner, run, blocks, validate, spent)
        refined = _refine(trials, inner, run, blocks, validate, spent) if not cut and tune.method != "grid" else []
        trials += refined[1:]
        _average_seeds(trials, inner, run, blocks, validate, lambda: time.perf_counter() >= deadline, refined)
        best, offsets = _leader(trials, validate), {}
        if best is not None and validate.factor_regs:
            best, offsets = _with_offsets([best, *refined], inner, run, blocks, validate)
    for t in trials:
        t.factors = None
    if cut:
        ran = [t for t in trials if t.iterations or t.failed]
        log.warning(
            "tuning: the time budget of %g minutes ran out at trial %d (%d of %d trials ran); choosing the best so far",
            tune.budget_minutes,
            cut[0],
            len(ran),
            len(trials),
        )
        trials = ran
    if best is None:
        raise InputError(f"every one of the {len(trials)} trials diverged; first: {trials[0].failed}")
    params = [k for k in space_of(run) if k not in AFTER_SEARCH]
    return Search(trials, validate.metric, validate.lower_is_better, params, best, run.model.kind, offsets)


def best_run(run: RunConfig, found: Search) -> RunConfig:
    """`run` with the best trial's settings, iterations = its best iteration."""
    model = dataclasses.replace(run.model, **found.best_settings)
    return dataclasses.replace(run, model=model)


def trials_table(found: Search) -> pa.Table:
    """tuning/trials.parquet: a row per trial, its settings (a column per searched key), the best
    validation metric and its iteration (of the seeds' mean for a finalist), the iterations run,
    seconds, the model seeds it ran with, the metric after every iteration of its first seed, and
    why a diverged trial failed."""
    column = f"validation_{found.metric}"
    rows = []
    for t in found.trials:
        curve = t.curve
        at = _best_at(curve, found.lower_is_better) if curve else None
        chosen = t.chosen(found.lower_is_better)
        rows.append(
            {
                "trial": t.number,
                **{k: chosen.get(k) for k in found.params},
                column: None if at is None else curve[at],
                "best_iteration": None if at is None else at + 1,
                "iterations_run": t.iterations,
                "seconds": t.seconds,
                "seeds": 1 + len(t.repeats),
                "history": list(t.history),
                "failed": t.failed or None,
            }
        )
    types = {bool: pa.bool_(), int: pa.int64(), float: pa.float64(), str: pa.string()}
    fields = [("trial", pa.int64())]
    for k in found.params:
        kinds = {type(c[k]) for c in (t.chosen(found.lower_is_better) for t in found.trials) if k in c}
        fields.append((k, pa.float64() if kinds == {int, float} else types[kinds.pop()] if kinds else pa.string()))
    fields += [
        (column, pa.float64()),
        ("best_iteration", pa.int64()),
        ("iterations_run", pa.int64()),
        ("seconds", pa.float64()),
        ("seeds", pa.int64()),
        ("history", pa.list_(pa.float64())),
        ("failed", pa.string()),
    ]
    return pa.Table.from_pylist(rows, pa.schema(fields))


def summary(run: RunConfig, search, inner, seconds: float) -> dict[str, Any]:
    """metrics.json's "tuning" entry: how the search went (`search` from `search`, on the prepared
    fit part `inner`), and what it chose."""
    return {
        "method": run.tune.method,
        "metric": search.metric,
        "trials": len(search.trials),
        "budget_minutes": run.tune.budget_minutes or None,
        "best_trial": search.best.number,
        "best_validation": search.validation,
        "day_factor_validation": {str(k): v for k, v in search.offsets.items()} or None,
        "best_iteration": search.best_iteration,
        "refit_iterations": search.refit_iterations,
        "seeds": run.tune.seeds,
        "validation_ratings": inner.heldout.n,
        "validation_ratings_scored": inner.heldout.r.size,
        "fit_ratings": inner.stats.n,
        "seconds": seconds,
        "best": search.best_settings,
    }


def offsets_note(search: Search) -> str:
    """The report's line on the day factor offsets chosen after the search; "" when none were scored."""
    if search.offsets_reg is None:
        return ""
    each = ", ".join(f"{v:.5g} (lambda {k:g})" for k, v in search.offsets.items())
    return (
        f"Day factor offsets, scored on trial {search.best.number}'s factors at its best iteration: "
        f"{search.metric} {each}; the refit fits lambda {search.offsets_reg:g}."
    )


def scored(heldout) -> str:
    """The validation ratings a trial is scored on: all, or a sample of users' past eval.driver_rows."""
    if heldout.whole:
        return f"{heldout.n} validation ratings"
    return f"{heldout.r.size} validation ratings (a sample of the users of {heldout.n}: eval.driver_rows)"


def chosen_header(run: RunConfig, search, inner) -> str:
    """best.toml's opening comment: which trial was chosen, on what, and how to train it again."""
    return (
        f"Chosen by jobs/tune.py: trial {search.best.number} of {len(search.trials)} "
        f"({run.tune.method}), validation {search.metric} {search.validation:.5g} after "
        f"{search.best_iteration} iterations (mean of {1 + len(search.best.repeats)} seeds)"
        f"{'' if search.offsets_reg is None else f' with day factor offsets {search.offsets_reg:g}'},\non "
        f"{scored(inner.heldout)} carved from the training data (never the test set); "
        f"the refit on all of it runs {search.refit_iterations}.\n"
        f"Train it again: jobs/train.py --input ... --config best.toml"
    )
