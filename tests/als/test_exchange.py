"""The resident exchange against hostile peers: frames checked before allocation, proofs of the
secret, deadlines, stray bytes during a fit, a frozen task, leftovers after fits, secured Spark."""

from __future__ import annotations

import os
import signal
import socket
import struct
import threading
import time

import numpy as np
import pytest
from conftest import planted
from test_als import ratings_df

from mf_spark.als import loop as als
from mf_spark.als.engines import stream
from mf_spark.als.engines.stream import driver as stream_driver
from mf_spark.als.engines.stream import task as task_side
from mf_spark.als.engines.stream import wire
from mf_spark.core.config import ModelConfig


def _frame(header: bytes) -> bytes:
    return struct.pack("<I", len(header)) + header


HOSTILE_FRAMES = [
    b"\xff\xff\xff\xff",  # a 4 GiB header
    _frame(b"[1, 2, 3]"),  # not an object
    _frame(b"\xff\xfe\x00garbage"),  # not UTF-8
    _frame('{"op": "\u00e9\u00e8"'.encode()),  # cut JSON
    _frame(b'{"arrays": 1}'),
    _frame(b'{"arrays": [["<f4", ["x"]]]}'),  # a string in a shape
    _frame(b'{"arrays": [["<f4", [-1]]]}'),
    _frame(b'{"arrays": [["<f4", [1, 1, 1, 1]]]}'),  # too many dimensions
    _frame(b'{"arrays": [["|O", [1]]]}'),  # objects
    _frame(b'{"arrays": [["<f4", [100000000000]]]}'),  # 400 GB announced
    _frame(b'{"arrays": [["<f4", [1.5]]]}'),
    _frame(b'{"arrays": ' + str([["<i4", [1]]] * 65).replace("'", '"').encode() + b"}"),  # too many arrays
    _frame(b'{"arrays": [["<f8", [1000, 1000, 1000]]]}'),  # 8 GB
]


@pytest.mark.parametrize("data", HOSTILE_FRAMES)
def test_frames_out_of_bounds_are_refused_before_anything_is_allocated(data):
    a, b = socket.socketpair()
    with a, b:
        a.sendall(data)
        with pytest.raises(wire.FrameError):
            wire.recv_frame(b, wait=2, limit=1 << 30, seconds=2)


def test_a_frame_that_trickles_in_times_out():
    a, b = socket.socketpair()
    with a, b:
        a.sendall(_frame(b'{"op": "solve", "arrays": []}')[:6])
        started = time.monotonic()
        with pytest.raises(wire.FrameError, match="timed out"):
            wire.recv_frame(b, wait=1, seconds=0.5)
        assert time.monotonic() - started < 3


def test_only_a_holder_of_the_secret_gets_past_the_challenge(monkeypatch):
    monkeypatch.setattr(wire, "HANDSHAKE_SECONDS", 0.5)
    for answer, ok in ((None, True), (b"\x00" * 32, False), (b"", False)):
        a, b = socket.socketpair()
        with a, b:

            def client(a=a, answer=answer):
                if answer is None:
                    wire.prove(a, "s3cret", "task")
                else:
                    a.recv(16)
                    a.sendall(answer)

            t = threading.Thread(target=client)
            t.start()
            if ok:
                wire.challenge(b, "s3cret", "task")
            else:
                with pytest.raises(wire.FrameError):
                    wire.challenge(b, "s3cret", "task")
            t.join()


def _hostile_connections(address: tuple[str, int]) -> int:
    """Open 24 connections to `address`, each misbehaving in its own way; returns how many."""
    payloads = [
        b"",
        b"\x00",
        os.urandom(16),
        os.urandom(32),
        os.urandom(64),
        b"\x00" * 32,
        b"GET / HTTP/1.1\r\n\r\n",
        *HOSTILE_FRAMES,
        os.urandom(1 << 16),
    ]
    socks = []
    for p in payloads:
        s = socket.create_connection(address, timeout=5)
        try:
            s.recv(16)  # the nonce
            s.sendall(p)
        except OSError:
            pass
        socks.append(s)
    socks.append(socket.create_connection(address, timeout=5))  # connects and says nothing
    s = socket.create_connection(address, timeout=5)
    s.sendall(b"\x01")  # one byte, then nothing
    socks.append(s)
    time.sleep(0.2)
    for s in socks:
        s.close()
    return len(socks)


def test_hostile_bytes_at_the_driver_during_a_fit_leave_the_factors_alone(spark, monkeypatch):
    monkeypatch.setattr(wire, "HANDSHAKE_SECONDS", 1.0)
    u, i, r, _ = planted(n_users=60, n_items=40, rank=4, density=0.5, seed=3)
    cfg = ModelConfig(rank=4, iterations=4, reg=0.1, seed=1, exchange="stream")
    want = als.fit(ratings_df(spark, u, i, r), 60, 40, cfg)
    sent = []

    def attack(iteration, factors):
        (stage,) = list(stream.ACTIVE)
        sent.append(_hostile_connections(stage.address))
        return {}

    attack.spark_free = True
    got = als.fit(ratings_df(spark, u, i, r), 60, 40, cfg, on_iteration=attack)
    assert sum(sent) >= 4 * 20 and got.exchange == "stream"
    np.testing.assert_allclose(got.factors.X, want.factors.X, atol=1e-6)
    np.testing.assert_allclose(got.factors.Y, want.factors.Y, atol=1e-6)


@pytest.mark.slow
def test_hostile_bytes_at_a_tasks_piece_listener_leave_its_pieces_alone(monkeypatch):
    """A task's listener takes its peers' pieces whatever else connects to it first."""
    monkeypatch.setattr(wire, "HANDSHAKE_SECONDS", 0.5)
    monkeypatch.setattr(task_side, "HANDSHAKE_SECONDS", 0.5)
    server = task_side._listen(2, "127.0.0.1")
    mine = [np.arange(3, dtype=np.int32)] * 6
    theirs = [np.arange(5, dtype=np.int32) + 7] * 6
    peer = socket.create_server(("127.0.0.1", 0))  # task 1's listener: takes task 0's pieces

    def task_1():
        conn, _ = peer.accept()
        with conn:
            wire.challenge(conn, "tok", "peer")
            wire.recv_frame(conn, wait=5)
        n = _hostile_connections(server.getsockname()[:2])
        assert n >= 20
        with socket.create_connection(server.getsockname()[:2]) as s:
            wire.prove(s, "tok", "peer")
            wire.send_frame(s, {"from": 1}, theirs)

    t = threading.Thread(target=task_1)
    t.start()
    got = task_side._exchange(0, server, ["127.0.0.1:0", f"127.0.0.1:{peer.getsockname()[1]}"], "tok", [mine, mine])
    t.join()
    peer.close()
    assert [a.tolist() for a in got[1]] == [a.tolist() for a in theirs]


@pytest.mark.slow
def test_a_frozen_task_is_dropped_as_a_stall_and_the_fit_ends_right(spark, caplog):
    """The fixed deadline stays at its ten minutes: the stall deadline (a floor of 3 s here, over
    half-steps of milliseconds) notices the frozen task."""
    u, i, r, _ = planted(n_users=60, n_items=40, rank=4, density=0.5, seed=4)
    cfg = ModelConfig(rank=4, iterations=4, reg=0.1, seed=1, exchange="stream", stall_floor_seconds=3)
    want = als.fit(ratings_df(spark, u, i, r), 60, 40, cfg)
    frozen = []

    def freeze(iteration, factors):
        if iteration == 2:
            (stage,) = list(stream.ACTIVE)
            frozen.append(stage.conns[0].pid)
            os.kill(frozen[0], signal.SIGSTOP)
        return {}

    freeze.spark_free = True
    started = time.monotonic()
    try:
        got = als.fit(ratings_df(spark, u, i, r), 60, 40, cfg, on_iteration=freeze)
    finally:
        for pid in frozen:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
    assert frozen and time.monotonic() - started < 120
    assert any("a stall" in r.getMessage() for r in caplog.records)
    np.testing.assert_allclose(got.factors.X, want.factors.X, atol=1e-6)
    np.testing.assert_allclose(got.factors.Y, want.factors.Y, atol=1e-6)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else 0


def test_fits_leave_no_threads_or_sockets_behind(spark):
    u, i, r, _ = planted(n_users=40, n_items=30, rank=3, density=0.5, seed=5)
    cfg = ModelConfig(rank=3, iterations=2, reg=0.1, seed=1, exchange="stream")
    df = ratings_df(spark, u, i, r).cache()
    als.fit(df, 40, 30, cfg)  # the first fit may start Spark's and py4j's own threads
    time.sleep(0.5)
    threads, fds = threading.active_count(), _open_fds()
    for _ in range(3):
        als.fit(df, 40, 30, cfg)
    time.sleep(0.5)
    assert threading.active_count() <= threads
    assert _open_fds() <= fds
    assert not stream.ACTIVE
    df.unpersist()


class _Conf:
    def __init__(self, values):
        self.values = values

    def get(self, key, default=None):
        return self.values.get(key, default)


class _Context:
    def __init__(self, values):
        self.conf = _Conf(values)

    def getConf(self):
        return self.conf


@pytest.mark.parametrize("key", als.SECURED)
@pytest.mark.parametrize("asked", ["auto", "stream"])
def test_secured_spark_never_carries_factors_in_plaintext(key, asked):
    assert als._exchange(ModelConfig(exchange=asked), _Context({key: "true"})) == "jobs"
    assert als._exchange(ModelConfig(exchange=asked), _Context({})) == "stream"


@pytest.mark.slow
def test_a_stage_that_keeps_failing_hands_the_fit_to_the_jobs_exchange(spark, monkeypatch, caplog):
    u, i, r, _ = planted(n_users=50, n_items=30, rank=3, density=0.5, seed=6)
    df = ratings_df(spark, u, i, r)
    cfg = ModelConfig(rank=3, iterations=3, reg=0.1, seed=1, driver_max_ratings=0)
    want = als.fit(df, 50, 30, ModelConfig(rank=3, iterations=3, reg=0.1, seed=1, exchange="jobs"))
    calls = []

    def broken(self, *args, **kwargs):
        calls.append(1)
        if len(calls) > 2:  # the first iteration's two half-steps go through, then it fails
            raise ConnectionError("injected")
        return real(self, *args, **kwargs)

    real = stream.Resident._solve_once
    monkeypatch.setattr(stream.Resident, "_solve_once", broken)
    monkeypatch.setattr(stream_driver, "RETRIES", 1)  # one new stage is enough to show it keeps failing
    with caplog.at_level("WARNING", logger="mf_spark"):
        got = als.fit(df, 50, 30, cfg)
    assert got.exchange == "jobs" and any("failed for good" in m for m in caplog.messages)
    assert [h["iteration"] for h in got.history] == [1, 2, 3] and len(got.losses) == 6
    np.testing.assert_allclose(got.factors.X, want.factors.X, atol=1e-6)
    with pytest.raises(stream.ExchangeError):
        als.fit(df, 50, 30, ModelConfig(rank=3, iterations=3, reg=0.1, seed=1, exchange="stream"))
