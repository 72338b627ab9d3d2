"""The resident stage's tasks (they run on executors): read or receive their ratings, build their
blocks, then serve the driver's half-steps until it says stop (see mf_spark.als.engines.stream)."""

from __future__ import annotations

import logging
import os
import socket
import threading

import numpy as np
from pyspark import BarrierTaskContext

from mf_spark.als.blocks import SIDE_CODES, CsrBlock, buckets, side_blocks, triples
from mf_spark.als.engines.stream.wire import (
    HANDSHAKE_SECONDS,
    ExchangeError,
    FrameError,
    Gate,
    challenge,
    keepalive,
    prove,
    recv_frame,
    send_frame,
)
from mf_spark.als.halfstep import block_tops
from mf_spark.data.index import IdMap
from mf_spark.data.ready import indices, unpacked
from mf_spark.kernels.solve import SolveSpec, layout, solve_block

log = logging.getLogger("mf_spark")

CONNECT_SECONDS = 60.0
EXCHANGE_SECONDS = 600.0  # a task waits this long for its peers' rating pieces


def _counts(blocks) -> list[np.ndarray]:
    """The row ids of a side's blocks and their CsrBlock.counts, (2, rows), in the same order."""
    ids = [b.row_ids for b in blocks]
    counts = [b.counts for b in blocks]
    return [
        np.concatenate(ids) if ids else np.zeros(0, np.int32),
        np.concatenate(counts, axis=1) if counts else np.zeros((2, 0), np.int64),
    ]


def _split_for_tasks(
    u: np.ndarray, i: np.ndarray, v: np.ndarray, num_blocks: dict[str, int], n_tasks: int
) -> list[list[np.ndarray]]:
    """Per task t: [user rows, item cols, values, item rows, user cols, values] of the ratings whose
    user (item) block b has b % n_tasks == t. One stable sort per side, never a loop over ratings."""
    out: list[list[np.ndarray]] = [[] for _ in range(n_tasks)]
    for side in ("user", "item"):
        rows, cols = (u, i) if side == "user" else (i, u)
        for t, sel in enumerate(buckets((rows % num_blocks[side]) % n_tasks, n_tasks)):
            out[t] += [rows[sel], cols[sel], v[sel]]
    return out


def _listen(n_tasks: int, host: str) -> socket.socket | None:
    """The socket a task receives its peers' rating pieces on, bound to the address Spark knows its
    executor by (none when it is the only task)."""
    if n_tasks == 1:
        return None
    server = socket.create_server((host, 0), backlog=max(16, 2 * n_tasks))
    server.settimeout(EXCHANGE_SECONDS)
    return server


def _exchange(
    me: int, server: socket.socket | None, peers: list[str], token: str, outgoing: list[list[np.ndarray]]
) -> list[list[np.ndarray]]:
    """All-to-all: send task t its outgoing[t], receive every task's pieces for this one.

    Every task listens on a port of its executor's host (`_listen`); the driver hands out the
    addresses (a barrier allGather would do too, but it answers on a poll that alone outlasts the
    whole exchange). Each task connects to every other once: it proves the fit's secret
    (wire.challenge), then sends one frame. Returns the received pieces indexed by sender, this
    task's own included.
    """
    n = len(outgoing)
    got: list[list[np.ndarray] | None] = [None] * n
    got[me] = outgoing[me]
    if server is None:
        return got
    arrived = threading.Event()

    def take(conn: socket.socket) -> None:
        """One connection: a peer of this fit proves the secret, then sends its pieces; anything else
        raises, and the Gate closes it and counts it."""
        with keepalive(conn):
            challenge(conn, token, "peer")
            gate.proven(conn)
            header, arrays = recv_frame(conn, wait=HANDSHAKE_SECONDS)
            sender = header.get("from")
            if type(sender) is not int or not 0 <= sender < n or sender == me or len(arrays) != 6:
                raise FrameError(f"a piece frame from {sender!r} with {len(arrays)} arrays")
            got[sender] = arrays
            if all(g is not None for g in got):
                arrived.set()

    gate = Gate(f"resident task {me}: piece listener", take, log)
    threading.Thread(target=gate.serve, args=(server,), name="mf_spark-pieces", daemon=True).start()
    errors: list[BaseException] = []
    try:
        for t in range(1, n):
            peer = (me + t) % n  # staggered, so the tasks do not all send to task 0 first
            host, port = peers[peer].rsplit(":", 1)
            with keepalive(socket.create_connection((host, int(port)), timeout=EXCHANGE_SECONDS)) as sock:
                prove(sock, token, "peer")
                send_frame(sock, {"from": me}, outgoing[peer])
        arrived.wait(EXCHANGE_SECONDS)
    except (OSError, FrameError) as e:
        errors.append(e)
    finally:
        server.close()
    if errors or any(g is None for g in got):
        raise ExchangeError(
            f"task {me}: exchanging rating pieces with the other {n - 1} tasks failed: "
            f"{errors[0] if errors else 'timed out'}"
        )
    return got


def _blocks_of(received: list[list[np.ndarray]], num_blocks: dict[str, int]) -> dict[tuple[int, int], CsrBlock]:
    """(side code, block) -> CsrBlock from the pieces every task sent this one (any order: each block
    sorts its triples by (row, col), so the result does not depend on who sent what)."""
    out = {}
    for s, side in enumerate(("user", "item")):
        rows, cols, vals = (np.concatenate([r[3 * s + j] for r in received]) for j in range(3))
        for b, blk in side_blocks(rows, cols, vals, num_blocks[side]).items():
            out[(SIDE_CODES[side], b)] = blk
    return out


def _task_body(
    address: tuple[str, int],
    token: str,
    num_blocks: dict[str, int],
    from_driver: bool,
    maps: tuple[IdMap, IdMap] | None = None,
):
    """The barrier task: `maps` (users, items) when its rows carry the IDs as read (ready.Keyed)."""

    def run(batches):
        ctx = BarrierTaskContext.get()
        me, n_tasks = ctx.partitionId(), len(ctx.getTaskInfos())
        if from_driver:  # the driver sends this task its pieces with the peers' addresses
            for _ in batches:
                pass
            pieces = None
        else:
            rows = triples(batches) if maps is None else indices(unpacked(batches), *maps)
            pieces = _split_for_tasks(*rows, num_blocks, n_tasks)
        host = ctx.getTaskInfos()[me].address.rsplit(":", 1)[0].strip("[]")  # an executor's host:port
        server = _listen(n_tasks, host) if not from_driver else None
        try:
            with _dial(address, me, token) as sock:
                send_frame(
                    sock,
                    {
                        "task": me,
                        "tasks": n_tasks,
                        "stage": ctx.stageId(),
                        "pid": os.getpid(),
                        "peer": f"{host}:{server.getsockname()[1] if server else 0}",
                    },
                )
                header, mine = recv_frame(sock)  # every task's address, once all have said hello
                received = [mine] if from_driver else _exchange(me, server, header["peers"], token, pieces)
                blocks = _blocks_of(received, num_blocks)
                del pieces
                _serve(sock, blocks)
        finally:
            if server is not None:  # _exchange closes it; this is for a task that fails before
                server.close()
        return iter(())

    return run


def _dial(address: tuple[str, int], task: int, token: str) -> socket.socket:
    try:
        sock = keepalive(socket.create_connection(address, timeout=CONNECT_SECONDS))
        prove(sock, token, "task")
    except (OSError, FrameError) as e:
        raise ExchangeError(
            f"task {task} could not connect to the driver at {address[0]}:{address[1]} ({e}); "
            f'set model.exchange = "jobs" where executors cannot reach the driver'
        ) from e
    sock.settimeout(None)
    return sock


def _serve(sock: socket.socket, blocks: dict[tuple[int, int], CsrBlock]) -> None:
    """A resident task with its blocks built: report them, then solve whatever half-steps the driver
    sends, and score top-N lists for its users when asked, until it says stop."""
    by_side = {side: [b for (c, _), b in blocks.items() if c == code] for side, code in SIDE_CODES.items()}
    plans: dict = {}  # (side, block) -> (spec, width, its padded layout), kept while they hold
    send_frame(sock, {"op": "built"}, _counts(by_side["user"]) + _counts(by_side["item"]))
    while True:
        header, arrays = recv_frame(sock)
        if header["op"] == "stop":
            return
        if header["op"] == "top":
            send_frame(sock, {"op": "top"}, _top_blocks(by_side["user"], header, list(arrays)))
            continue
        send_frame(sock, *_solve_blocks(by_side[header["side"]], header, list(arrays), plans))


def _top_blocks(blocks: list[CsrBlock], header: dict, arrays: list[np.ndarray]) -> list[np.ndarray]:
    """The reply to one "top" frame: halfstep.block_tops of the task's user blocks. `arrays`: the
    users' factors in the order the task reported them, the item factors, and with header["bias"]
    the users' offsets (mu + b_u) in the same order and the item biases."""
    ends = np.cumsum([0] + [blk.row_ids.size for blk in blocks])
    rows = lambda a: [a[ends[j] : ends[j + 1]] for j in range(len(blocks))]
    offset, item_bias = (rows(arrays[2]), arrays[3]) if header["bias"] else (None, None)
    return block_tops(blocks, rows(arrays[0]), offset, arrays[1], item_bias, header["n"])


def spec_of(header: dict) -> SolveSpec:
    """The SolveSpec a "solve" frame carries (each does: a tuning search changes it between fits on
    the same blocks)."""
    try:
        return SolveSpec(**header["spec"])
    except (KeyError, TypeError, ValueError) as e:
        raise FrameError(f"a solve frame with a bad spec: {e}") from None


def _solve_blocks(
    blocks: list[CsrBlock], header: dict, arrays: list[np.ndarray], plans: dict
) -> tuple[dict, list[np.ndarray]]:
    """The reply to one "solve" frame: new factors (and biases) of `blocks`' rows and the loss pieces.
    `plans` keeps each block's padded layout while the spec and the fixed side's width stay."""
    spec = spec_of(header)
    fixed = arrays.pop(0)
    fixed_bias = arrays.pop(0) if header["bias"] else None
    gram = arrays.pop(0) if header["gram"] else None
    x0 = arrays.pop(0) if header.get("x0") else None  # this task's rows, block by block
    ids, parts, biases, loss = [], [], [], np.zeros(3)
    width = fixed.shape[1] + (fixed_bias is not None)
    at = 0
    for blk in blocks:
        key = (header["side"], blk.block)
        if plans.get(key, (None, None))[:2] != (spec, width):
            plans[key] = (spec, width, layout(blk.indptr, blk.cols, blk.values, spec, fixed.shape[0], width))
        start = None if x0 is None else x0[at : at + blk.row_ids.size]
        at += blk.row_ids.size
        sol = solve_block(
            blk.indptr,
            blk.cols,
            blk.values,
            fixed,
            spec,
            fixed_bias=fixed_bias,
            gram=gram,
            plan=plans[key][2],
            x0=start,
        )
        ids.append(blk.row_ids)
        parts.append(sol.factors)
        if sol.bias is not None:
            biases.append(sol.bias)
        loss += (sol.data_loss, sol.reg_loss, sol.sq_err)
    out = [
        np.concatenate(ids) if ids else np.zeros(0, np.int32),
        np.concatenate(parts) if parts else np.zeros((0, fixed.shape[1]), np.float32),
    ]
    if header["bias"]:
        out.append(np.concatenate(biases) if biases else np.zeros(0, np.float32))
    return {"loss": loss.tolist()}, out
