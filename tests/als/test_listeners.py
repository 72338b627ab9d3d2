"""The resident exchange's listeners under silent, slow and scanning connections (wire.Gate): a real
peer is served at once whatever is held open beside it, with bounded threads and quiet logs."""

from __future__ import annotations

import logging
import socket
import threading
import time

import numpy as np
from conftest import planted
from test_als import ratings_df

from mf_spark.als import loop as als
from mf_spark.als.engines import stream
from mf_spark.als.engines.stream import wire
from mf_spark.core.config import ModelConfig

log = logging.getLogger("mf_spark")


def _silent(address: tuple[str, int], n: int) -> list[socket.socket]:
    """`n` connections that connect and say nothing (a port scanner, a stuck client)."""
    return [socket.create_connection(address, timeout=5) for _ in range(n)]


def test_a_real_peer_is_served_at_once_behind_80_silent_connections(caplog, monkeypatch):
    monkeypatch.setattr(wire, "HANDSHAKE_SECONDS", 2.0)  # the silent ones still pending end at it
    server = socket.create_server(("127.0.0.1", 0))
    heard, ready = [], threading.Event()

    def handle(sock):
        wire.challenge(sock, "tok", "peer")
        gate.proven(sock)
        header, _ = wire.recv_frame(sock, wait=5)
        heard.append(header["from"])
        ready.set()

    gate = wire.Gate("test listener", handle, log, limit=64, per_source=16)
    threading.Thread(target=gate.serve, args=(server,), daemon=True).start()
    with caplog.at_level(logging.WARNING, logger="mf_spark"):
        held = _silent(server.getsockname()[:2], 80)
        started = time.monotonic()
        with socket.create_connection(server.getsockname()[:2], timeout=5) as s:
            wire.prove(s, "tok", "peer")
            wire.send_frame(s, {"from": 7})
            assert ready.wait(5)
        took = time.monotonic() - started
    assert heard == [7] and took < 1.0
    assert len(gate.pending) <= 16  # the oldest unproven were dropped, not the newest refused
    waited = time.monotonic()  # the dropped ones end at once, the rest at the handshake deadline
    while sum(t.name == "mf_spark-test listener" for t in threading.enumerate()) > 16 + 1:
        assert time.monotonic() - waited < wire.HANDSHAKE_SECONDS + 5, "the connections' threads did not end"
        time.sleep(0.05)
    refusals = [r for r in caplog.records if "refused" in r.getMessage()]
    assert 1 <= len(refusals) <= 2  # one line a minute, not one per connection
    for s in held:
        s.close()
    server.close()


def test_a_fit_with_silent_connections_on_the_driver_listener_ends_as_an_undisturbed_one(spark):
    """Every iteration's callback runs a Spark job, so the stage is paused and its tasks say hello
    again each iteration, through 80 silent connections held on the listener."""
    u, i, r, _ = planted(n_users=60, n_items=40, rank=4, density=0.5, seed=5)
    cfg = ModelConfig(rank=4, iterations=3, reg=0.1, seed=1, exchange="stream")
    started = time.monotonic()
    want = als.fit(ratings_df(spark, u, i, r), 60, 40, cfg, on_iteration=lambda it, f: spark.range(1).count() and {})
    alone = time.monotonic() - started
    held: list[socket.socket] = []

    def flood(iteration, factors):
        spark.range(1).count()
        (stage,) = list(stream.ACTIVE)
        held.extend(_silent(stage.address, 80))
        return {}

    started = time.monotonic()
    try:
        got = als.fit(ratings_df(spark, u, i, r), 60, 40, cfg, on_iteration=flood)
    finally:
        for s in held:
            s.close()
    assert len(held) == 3 * 80 and got.exchange == "stream"
    assert time.monotonic() - started <= 1.5 * alone + 30
    np.testing.assert_allclose(got.factors.X, want.factors.X, atol=1e-6)
    np.testing.assert_allclose(got.factors.Y, want.factors.Y, atol=1e-6)
