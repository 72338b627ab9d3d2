"""Warm start: a fit that starts from a saved model's factors where the model knows the IDs."""

from __future__ import annotations

import logging

from mf_spark.als.loop import seeded_factors
from mf_spark.core.config import ModelConfig
from mf_spark.core.errors import InputError
from mf_spark.core.types import Factors
from mf_spark.data.index import IdMap
from mf_spark.model.factors import FactorModel

log = logging.getLogger("mf_spark")


def check_warm_start(previous: FactorModel, cfg: ModelConfig) -> None:
    """InputError when a saved model's rank or kind differs from `cfg`'s: its factors cannot start this fit."""
    for what, was, now in (("rank", previous.rank, cfg.rank), ("kind", previous.kind, cfg.kind)):
        if was != now:
            raise InputError(
                f"--init-model: the model's {what} is {was!r}, this run's model.{what} is {now!r}; "
                f"a warm start needs the same {what} (train without --init-model to change it)"
            )


def warm_factors(previous: FactorModel, users: IdMap, items: IdMap, cfg: ModelConfig) -> Factors:
    """Starting factors for a fit over `users` x `items` from a saved model (a warm start): the rows
    of IDs the previous model knows are its factors (and biases), new IDs start as a cold fit's."""
    check_warm_start(previous, cfg)
    start = seeded_factors(cfg, users.size, items.size, user_ids=users.ids)
    f = previous.factors
    out = []
    for new_ids, old_ids, init, old, init_bias, old_bias in (
        (users, previous.users, start.X, f.X, start.user_bias, f.user_bias),
        (items, previous.items, start.Y, f.Y, start.item_bias, f.item_bias),
    ):
        try:
            at = old_ids.index_of(new_ids.ids)
        except TypeError as exc:
            raise InputError(f"--init-model: {exc}") from None
        known = at >= 0
        init[known] = old[at[known]]
        if init_bias is not None and old_bias is not None:
            init_bias[known] = old_bias[at[known]]
        out.append(int(known.sum()))
    log.info(
        "--init-model: %d of %d users and %d of %d items start from the saved model's factors",
        out[0],
        users.size,
        out[1],
        items.size,
    )
    return start
