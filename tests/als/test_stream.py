"""Resident blocks (model.exchange = "stream"): frames, same factors as one job per half-step, recovery
from a killed task, fallback when the stage cannot start."""

from __future__ import annotations

import dataclasses
import os
import signal
import socket

import numpy as np
import pytest
from conftest import planted
from test_als import ratings_df

from mf_spark.als import loop as als
from mf_spark.als.engines import stream
from mf_spark.core.config import ModelConfig
from mf_spark.data import ready


def test_frames_round_trip_arrays_of_every_wire_type():
    a, b = socket.socketpair()
    with a, b:
        arrays = [
            np.arange(6, dtype=np.float32).reshape(2, 3),
            np.zeros(0, np.int32),
            np.array([1.5, -2.0]),
            np.array([7, 9], dtype=np.int64),
        ]
        stream.send_frame(a, {"op": "solve", "side": "user"}, arrays)
        header, got = stream.recv_frame(b)
    assert header == {"op": "solve", "side": "user"}
    for want, have in zip(arrays, got):
        assert have.dtype == want.dtype and have.shape == want.shape
        np.testing.assert_array_equal(have, want)


def test_frames_refuse_object_arrays_and_a_closed_connection():
    a, b = socket.socketpair()
    with a, b:
        header = b'{"op": "solve", "arrays": [["|O", [1]]]}'
        a.sendall(len(header).to_bytes(4, "little") + header)
        with pytest.raises(ConnectionError, match="bad array description"):
            stream.recv_frame(b)
        a.close()
        with pytest.raises(ConnectionError):
            stream.recv_frame(b)


def _fit(spark, cfg, **kwargs):
    u, i, r, _ = planted(n_users=80, n_items=50, rank=5, density=0.6, noise=0.05, seed=5)
    return als.fit(ratings_df(spark, u, i, r), 80, 50, cfg, **kwargs)


@pytest.mark.parametrize("exchange", ["stream", "driver"])
@pytest.mark.parametrize("extra", [{"biases": True, "num_user_blocks": 3}, {"kind": "implicit", "alpha": 2.0}])
def test_top_lists_scored_where_the_blocks_are_equal_the_spark_jobs_lists(spark, extra, exchange):
    """fit(top_n=...) with the stream (in its tasks) or the driver exchange (in the driver's threads):
    every user's lists, training items excluded, are those model.recommend_unseen_idx scores by Spark
    jobs from the same factors; the jobs exchange gives none."""
    import pyarrow as pa

    from mf_spark.data.index import IdMap
    from mf_spark.model.factors import FactorModel

    u, i, r, _ = planted(n_users=80, n_items=50, rank=5, density=0.6, noise=0.05, seed=5)
    df = ratings_df(spark, u, i, r)
    cfg = ModelConfig(rank=4, iterations=3, reg=0.1, seed=3, exchange=exchange, **extra)
    fit = als.fit(df, 80, 50, cfg, top_n=7)
    assert fit.top is not None and fit.top.items.shape == (80, 7)
    model = FactorModel(
        cfg.kind,
        fit.factors,
        IdMap(pa.array(np.arange(80)), "user"),
        IdMap(pa.array(np.arange(50)), "item"),
        float(r.mean()),
        None,
    )
    want = model.recommend_unseen_idx(df, 7).toPandas().sort_values(["user_idx", "rank"])
    rated = {(a, b) for a, b in zip(u.tolist(), i.tolist())}
    for user, rows in want.groupby("user_idx"):
        n = fit.top.counts[user]
        assert n == len(rows)
        assert fit.top.items[user, :n].tolist() == rows["item_idx"].tolist()
        np.testing.assert_allclose(fit.top.scores[user, :n], rows["score"], rtol=1e-5, atol=1e-6)
        assert not any((user, it) in rated for it in fit.top.items[user, :n].tolist())
    assert als.fit(df, 80, 50, dataclasses.replace(cfg, exchange="jobs"), top_n=7).top is None


def test_a_task_whose_blocks_hold_no_rating_still_joins_the_stage(spark, caplog):
    # Even users and even items only: with 2 blocks a side, every rating is in task 0's blocks.
    u, i, r, _ = planted(n_users=40, n_items=30, rank=3, density=0.7, noise=0.05, seed=2)
    keep = (u % 2 == 0) & (i % 2 == 0)
    df = ratings_df(spark, u[keep], i[keep], r[keep])
    base = ModelConfig(rank=3, iterations=3, reg=0.1, seed=1, num_user_blocks=2, num_item_blocks=2)
    with caplog.at_level("WARNING", logger="mf_spark"):
        streamed = als.fit(df, 40, 30, dataclasses.replace(base, exchange="stream"))
    jobs = als.fit(df, 40, 30, dataclasses.replace(base, exchange="jobs"))
    assert not [m for m in caplog.messages if "falling back" in m or "lost" in m]
    np.testing.assert_allclose(streamed.factors.X, jobs.factors.X, atol=1e-6)
    np.testing.assert_allclose(streamed.factors.Y, jobs.factors.Y, atol=1e-6)


@pytest.mark.slow
def test_a_killed_task_is_replaced_and_the_fit_ends_with_the_same_factors(spark):
    cfg = ModelConfig(rank=4, iterations=5, reg=0.1, seed=3, exchange="stream")
    whole = _fit(spark, cfg)
    killed = []

    def kill_at_2(iteration, factors):
        if iteration == 2:
            (stage,) = list(stream.ACTIVE)
            killed.append(stage.conns[0].pid)
            os.kill(stage.conns[0].pid, signal.SIGKILL)
        return {}

    kill_at_2.spark_free = True
    recovered = _fit(spark, cfg, on_iteration=kill_at_2)
    assert killed
    np.testing.assert_allclose(recovered.factors.X, whole.factors.X, atol=1e-6)
    np.testing.assert_allclose(recovered.factors.Y, whole.factors.Y, atol=1e-6)
    assert not stream.ACTIVE


def test_a_callback_that_runs_spark_jobs_pauses_the_stage(spark):
    """Resident tasks hold every slot: a callback without spark_free gets them back first."""
    cfg = ModelConfig(rank=4, iterations=3, reg=0.1, seed=3, exchange="stream")
    counts = []
    res = _fit(spark, cfg, on_iteration=lambda it, f: counts.append(spark.range(10).count()) or {})
    assert counts == [10, 10, 10] and len(res.history) == 3


@pytest.mark.slow
def test_a_task_lost_while_the_stage_is_submitted_again_after_a_pause_is_retried(spark, monkeypatch):
    """E.g. an executor killed during a checkpoint write: the resubmission after the pause fails, the
    half-step submits a new plan and goes on; the factors are those of an undisturbed fit."""
    cfg = ModelConfig(rank=4, iterations=3, reg=0.1, seed=3, exchange="stream")
    connect, calls = stream.Resident._connect, []

    def flaky_connect(self):
        connect(self)
        calls.append(self.stage)
        if len(calls) == 2:  # the first resubmission after a pause: its tasks drop out
            for c in self.conns:
                c.sock.close()
            self.conns = []
            raise stream.ExchangeError("simulated: a task was lost while the stage started")

    monkeypatch.setattr(stream.Resident, "_connect", flaky_connect)
    pausing = lambda it, f: {}  # noqa: E731 - no spark_free: the stage pauses after every iteration
    got = _fit(spark, cfg, on_iteration=pausing)
    monkeypatch.undo()
    want = _fit(spark, dataclasses.replace(cfg, exchange="jobs"))
    assert len(calls) >= 4 and calls == sorted(calls)
    np.testing.assert_allclose(got.factors.X, want.factors.X, atol=1e-6)
    np.testing.assert_allclose(got.factors.Y, want.factors.Y, atol=1e-6)


@pytest.mark.slow
def test_auto_falls_back_to_jobs_when_the_driver_cannot_listen(spark, monkeypatch):
    cfg = ModelConfig(rank=4, iterations=2, reg=0.1, seed=3)
    want = _fit(spark, dataclasses.replace(cfg, exchange="jobs"))
    monkeypatch.setattr(stream, "driver_host", lambda sc: "192.0.2.1")  # TEST-NET-1: not ours
    got = _fit(spark, cfg)
    np.testing.assert_allclose(got.factors.X, want.factors.X, atol=1e-6)
    with pytest.raises(stream.ExchangeError, match="cannot listen"):
        _fit(spark, dataclasses.replace(cfg, exchange="stream"))


def test_pieces_cut_per_task_rebuild_every_block_whoever_sent_them(rng):
    from mf_spark.als.blocks import CsrBlock

    u = rng.integers(0, 50, 400).astype(np.int32)
    i = rng.integers(0, 30, 400).astype(np.int32)
    keep = np.unique(u.astype(np.int64) * 100 + i, return_index=True)[1]  # distinct pairs
    u, i, v = u[keep], i[keep], rng.uniform(1, 5, keep.size).astype(np.float32)
    num_blocks, n_tasks = {"user": 5, "item": 3}, 3
    parts = np.array_split(np.arange(u.size), 4)  # 4 input partitions
    sent = [stream._split_for_tasks(u[p], i[p], v[p], num_blocks, n_tasks) for p in parts]
    for t in range(n_tasks):
        got = stream._blocks_of([s[t] for s in sent][::-1], num_blocks)  # any arrival order
        for (code, b), blk in got.items():
            side = "user" if code == 0 else "item"
            rows, cols = (u, i) if side == "user" else (i, u)
            assert b % n_tasks == t
            sel = rows % num_blocks[side] == b
            want = CsrBlock.from_triples(b, rows[sel], cols[sel], v[sel])
            for field in ("row_ids", "indptr", "cols", "values"):
                np.testing.assert_array_equal(getattr(blk, field), getattr(want, field))
        expected = {
            (c, b)
            for c, side in ((0, "user"), (1, "item"))
            for b in range(num_blocks[side])
            if b % n_tasks == t and np.any((u if c == 0 else i) % num_blocks[side] == b)
        }
        assert set(got) == expected


def test_ratings_read_where_they_are_even_with_an_empty_partition(spark, caplog):
    from pyspark.sql import functions as F

    u, i, r, _ = planted(n_users=40, n_items=30, rank=3, density=0.6, noise=0.05, seed=4)
    df = ratings_df(spark, u, i, r).repartitionById(2, F.lit(0)).cache()  # partition 1 holds nothing
    assert [len(p) for p in df.rdd.glom().collect()] == [u.size, 0]
    base = ModelConfig(rank=3, iterations=3, reg=0.1, seed=1)
    with caplog.at_level("INFO", logger="mf_spark"):
        streamed = als.fit(df, 40, 30, dataclasses.replace(base, exchange="stream"))
    assert not [m for m in caplog.messages if "shuffling" in m or "falling back" in m]
    jobs = als.fit(df, 40, 30, dataclasses.replace(base, exchange="jobs"))
    np.testing.assert_allclose(streamed.factors.X, jobs.factors.X, atol=1e-6)
    np.testing.assert_allclose(streamed.factors.Y, jobs.factors.Y, atol=1e-6)


def test_a_lineage_barrier_stages_refuse_is_shuffled_first(spark, caplog):
    """A coalesce in the ratings' last stage: a barrier stage may not read them as they are, so they
    are shuffled to the tasks (still the resident stage, not a job per half-step)."""
    u, i, r, _ = planted(n_users=40, n_items=30, rank=3, density=0.6, noise=0.05, seed=4)
    many = ratings_df(spark, u, i, r).repartition(6).cache()
    df = many.coalesce(2)
    assert many.rdd.getNumPartitions() == 6 and df.rdd.getNumPartitions() == 2
    base = ModelConfig(rank=3, iterations=3, reg=0.1, seed=1)
    with caplog.at_level("INFO", logger="mf_spark"):
        streamed = als.fit(df, 40, 30, dataclasses.replace(base, exchange="stream"))
    assert [m for m in caplog.messages if "shuffling" in m]
    assert not [m for m in caplog.messages if "falling back" in m]
    jobs = als.fit(df, 40, 30, dataclasses.replace(base, exchange="jobs"))
    np.testing.assert_allclose(streamed.factors.X, jobs.factors.X, atol=1e-6)


@pytest.mark.parametrize("kind", ["explicit", "implicit"])
def test_ratings_the_driver_holds_fit_as_the_dataframe_does(spark, kind):
    """ready.Triples: an RDD stage fed by the driver gives the DataFrame stage's factors, losses and
    top lists; a killed task is replaced there too (the driver sends the pieces again)."""
    from mf_spark.data.ready import Triples

    u, i, r, _ = planted(n_users=70, n_items=45, rank=4, density=0.5, seed=9)
    if kind == "implicit":
        r = np.abs(r).astype(np.float32) + 1
    cfg = ModelConfig(kind=kind, rank=4, iterations=3, reg=0.1, seed=2, exchange="stream", num_user_blocks=3)
    want = als.fit(ratings_df(spark, u, i, r), 70, 45, cfg, top_n=5)
    held = Triples(spark, u, i, r.astype(np.float64))
    killed = []

    def kill_at_2(iteration, factors):
        if iteration == 2 and kind == "explicit":
            (stage,) = list(stream.ACTIVE)
            killed.append(stage.conns[0].pid)
            os.kill(stage.conns[0].pid, signal.SIGKILL)
        return {}

    kill_at_2.spark_free = True
    got = als.fit(held, 70, 45, cfg, top_n=5, on_iteration=kill_at_2)
    assert bool(killed) == (kind == "explicit") and not stream.ACTIVE
    np.testing.assert_allclose(got.factors.X, want.factors.X, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.factors.Y, want.factors.Y, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.losses, want.losses, rtol=1e-6)
    assert np.array_equal(got.top.items, want.top.items)
    assert 0 < got.startup_seconds < got.fit_seconds
    assert ready.train_stats(held).n == u.size


def test_ratings_with_their_ids_as_read_fit_as_the_indexed_ones(spark, caplog):
    """ready.Keyed (the Spark front end's): the tasks look the indices up in the maps as they read
    the rows, with no indexed copy made, and give the indexed DataFrame's factors; as they are
    partitioned, and shuffled by user ID where a barrier stage may not read them as they are. The
    sampled evaluator's pairs come from a filter on the users' IDs."""
    import pyarrow as pa

    from mf_spark import evaluate
    from mf_spark.data.index import sorted_map

    u, i, r, _ = planted(n_users=40, n_items=30, rank=3, density=0.6, noise=0.05, seed=4)
    users, items = np.array([f"u{x:03d}" for x in range(40)]), (i * 7 + 1000).astype(np.int64)
    rows = pa.table({"user": users[u], "item": items[i], "rating": r, "timestamp": pa.nulls(u.size, pa.int64())})
    umap, imap = sorted_map(pa.array(users), "user"), sorted_map(pa.array(np.unique(items)), "item")
    indexed = ratings_df(spark, umap.index_of(rows["user"]), imap.index_of(rows["item"]), r).cache()
    made = []
    for frame in (spark.createDataFrame(rows).repartition(2).cache(), spark.createDataFrame(rows).coalesce(2)):
        keyed = ready.Keyed(frame, umap, imap, lambda: made.append(1) or indexed)
        cfg = ModelConfig(rank=3, iterations=3, reg=0.1, seed=1, exchange="stream")
        with caplog.at_level("INFO", logger="mf_spark"):
            got = als.fit(keyed, 40, 30, cfg)
        want = als.fit(indexed, 40, 30, dataclasses.replace(cfg, exchange="jobs"))
        assert got.exchange == "stream" and not made  # never indexed in the JVM
        np.testing.assert_allclose(got.factors.X, want.factors.X, atol=1e-5)
        np.testing.assert_allclose(got.factors.Y, want.factors.Y, atol=1e-5)
    assert [m for m in caplog.messages if "shuffling" in m]  # the coalesced one
    relevant = evaluate.Relevant(np.array([3, 17], np.int32), np.array([0, 1, 2]), np.array([0, 1], np.int32))
    sampled = evaluate.RankingEvaluator(keyed, relevant, 30, 5, on_driver=True)
    assert not made
    item_idx = imap.index_of(rows["item"])
    pairs = {(a, int(b)) for a, b in zip(u.tolist(), item_idx) if a in (3, 17)}
    ptr, cols = sampled.seen_indptr, sampled.seen_cols  # CSR of the two users' training items
    assert {(int(relevant.users[k]), int(c)) for k in range(2) for c in cols[ptr[k] : ptr[k + 1]]} == pairs
