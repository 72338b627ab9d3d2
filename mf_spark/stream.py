"""Resident blocks: a whole fit in one gang-scheduled Spark stage, factors streamed by the driver.

A Spark job per half-step costs 50-100 ms of scheduling and Python-worker round trips whatever the
data size, which dwarfs the arithmetic below a few million ratings. Here the rating blocks are built
inside one barrier stage (all its tasks start together and are retried together) whose tasks stay
alive for the whole fit. Each task reads one partition of the ratings (Arrow, the only time they
cross from the JVM to Python), cuts them per owning task and exchanges the pieces with the other
tasks directly over TCP (no Spark shuffle), then builds its CSR blocks and connects back to the
driver. Every half-step the driver sends the fixed side's factors to every task and gathers the
solved rows:

    driver  --(fixed factors, biases, Gramian)-->  task 0: user blocks 0, 2; item blocks 0, 2
            <--(row ids, new factors, losses)----  task 1: user blocks 1, 3; item blocks 1, 3

Ratings the driver already holds (blocks.Triples, from the driver front end) skip the reading and the
exchange: the stage is then an RDD barrier stage over nothing, and the driver sends each task its
pieces in reply to its hello.

The driver holds the factors after every half-step, so per-iteration metrics and checkpoints work as
with one job per half-step. Frames are a JSON header plus raw little-endian arrays (no pickle); a
connection proves itself with a per-fit secret. When a task dies, Spark fails the whole barrier job
(result stages are not retried); the driver submits it again (the tasks read the ratings again, from
the caller's cached DataFrame), the new tasks connect, and the driver repeats the half-step it was on
from factors it still holds, so a recovered fit ends with the same factors as an undisturbed one.

Needs: executors that can open a TCP connection to the driver (as they do for Spark's own RPC), as
many free task slots as tasks, and no dynamic allocation (barrier stages refuse it). `als.fit` falls
back to one Spark job per half-step otherwise (model.exchange).
"""
from __future__ import annotations

import hmac
import json
import logging
import os
import queue
import secrets
import socket
import struct
import sys
import threading
import time
import weakref
from dataclasses import dataclass

import numpy as np
from pyspark import BarrierTaskContext, InheritableThread
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from mf_spark.blocks import SIDE_CODES, CsrBlock, Triples, buckets, rating_columns, triples
from mf_spark.errors import InputError
from mf_spark.halfstep import HalfStepResult
from mf_spark.kernels.solve import SolveSpec, layout, solve_block, start_point
from mf_spark.kernels.topk import top_n
from mf_spark.types import USER_IDX

log = logging.getLogger("mf_spark")

DTYPES = {"<f4", "<f8", "<i4", "<i8"}
CONNECT_SECONDS = 60.0
EXCHANGE_SECONDS = 600.0     # a task waits this long for its peers' rating pieces


ACTIVE: "weakref.WeakSet[Resident]"     # stages running in this driver (diagnostics, fault tests)


class ExchangeError(RuntimeError):
    """The resident stage could not start or failed for good (the Spark job's error is the cause)."""


# ---- frames ------------------------------------------------------------------------------------------
def send_frame(sock: socket.socket, header: dict, arrays: list[np.ndarray] = ()) -> None:
    """A 4-byte length, a JSON header naming each array's dtype and shape, then the arrays' bytes."""
    arrays = [np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")) for a in arrays]
    head = json.dumps({**header, "arrays": [[a.dtype.str, list(a.shape)] for a in arrays]}).encode()
    sock.sendall(struct.pack("<I", len(head)) + head)
    for a in arrays:
        if a.size:
            sock.sendall(memoryview(a).cast("B"))


def _recv_exact(sock: socket.socket, n: int) -> bytearray:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise ConnectionError(f"connection closed after {got} of {n} bytes")
        got += k
    return buf


def recv_frame(sock: socket.socket) -> tuple[dict, list[np.ndarray]]:
    (n,) = struct.unpack("<I", _recv_exact(sock, 4))
    header = json.loads(_recv_exact(sock, n))
    arrays = []
    for dtype, shape in header.pop("arrays"):
        if dtype not in DTYPES:
            raise ConnectionError(f"unexpected array type {dtype!r} in a frame")
        count = int(np.prod(shape)) if shape else 1
        raw = _recv_exact(sock, count * np.dtype(dtype).itemsize) if count else bytearray()
        arrays.append(np.frombuffer(raw, dtype=dtype).reshape(shape))
    return header, arrays


# ---- the task side (runs on executors) ---------------------------------------------------------------
def _counts(blocks) -> list[np.ndarray]:
    ids = [b.row_ids for b in blocks]
    counts = [b.counts for b in blocks]
    return [np.concatenate(ids) if ids else np.zeros(0, np.int32),
            np.concatenate(counts) if counts else np.zeros(0, np.int64)]


def _split_for_tasks(u: np.ndarray, i: np.ndarray, v: np.ndarray, num_blocks: dict[str, int],
                     n_tasks: int) -> list[list[np.ndarray]]:
    """Per task t: [user rows, item cols, values, item rows, user cols, values] of the ratings whose
    user (item) block b has b % n_tasks == t. One stable sort per side, never a loop over ratings."""
    out: list[list[np.ndarray]] = [[] for _ in range(n_tasks)]
    for side in ("user", "item"):
        rows, cols = (u, i) if side == "user" else (i, u)
        for t, sel in enumerate(buckets((rows % num_blocks[side]) % n_tasks, n_tasks)):
            out[t] += [rows[sel], cols[sel], v[sel]]
    return out


def _listen(n_tasks: int) -> socket.socket | None:
    """The socket a task receives its peers' rating pieces on (none when it is the only task)."""
    if n_tasks == 1:
        return None
    server = socket.create_server(("", 0), backlog=n_tasks)
    server.settimeout(EXCHANGE_SECONDS)
    return server


def _exchange(me: int, server: socket.socket | None, peers: list[str], token: str,
              outgoing: list[list[np.ndarray]]) -> list[list[np.ndarray]]:
    """All-to-all: send task t its outgoing[t], receive every task's pieces for this one.

    Every task listens on a port of its executor's host (`_listen`); the driver hands out the
    addresses (a barrier allGather would do too, but it answers on a 1 s poll: 1.0 s against 35 ms
    for the whole exchange of 4M ratings between two tasks). Each task connects to every other once:
    a JSON header with the fit's secret plus raw arrays, as with the driver. Returns the received
    pieces indexed by sender, this task's own included.
    """
    n = len(outgoing)
    got: list[list[np.ndarray] | None] = [None] * n
    got[me] = outgoing[me]
    if server is None:
        return got
    errors: list[BaseException] = []

    def receive() -> None:
        try:
            while any(g is None for g in got):
                conn, _ = server.accept()
                with conn:
                    conn.settimeout(EXCHANGE_SECONDS)
                    header, arrays = recv_frame(conn)
                    if not hmac.compare_digest(str(header.get("token", "")), token):
                        continue            # not one of this fit's tasks
                    got[int(header["from"])] = arrays
        except BaseException as e:  # noqa: BLE001 - re-raised by the task below
            errors.append(e)
    receiver = threading.Thread(target=receive, name="mf_spark-pieces", daemon=True)
    receiver.start()
    try:
        for t in range(1, n):
            peer = (me + t) % n             # staggered, so the tasks do not all send to task 0 first
            host, port = peers[peer].rsplit(":", 1)
            with socket.create_connection((host, int(port)), timeout=EXCHANGE_SECONDS) as sock:
                send_frame(sock, {"token": token, "from": me}, outgoing[peer])
        receiver.join(EXCHANGE_SECONDS)
    finally:
        server.close()
    if errors or any(g is None for g in got):
        raise ExchangeError(f"task {me}: exchanging rating pieces with the other {n - 1} tasks failed: "
                            f"{errors[0] if errors else 'timed out'}")
    return got


def _blocks_of(received: list[list[np.ndarray]], num_blocks: dict[str, int]) -> dict[tuple[int, int], CsrBlock]:
    """(side code, block) -> CsrBlock from the pieces every task sent this one (any order: each block
    sorts its triples by (row, col), so the result does not depend on who sent what)."""
    out = {}
    for s, side in enumerate(("user", "item")):
        rows, cols, vals = (np.concatenate([r[3 * s + j] for r in received]) for j in range(3))
        for b, sel in enumerate(buckets(rows % num_blocks[side], num_blocks[side])):
            if sel.size == rows.size:    # the task's only block of this side: no copy
                out[(SIDE_CODES[side], b)] = CsrBlock.from_triples(b, rows, cols, vals)
            elif sel.size:
                out[(SIDE_CODES[side], b)] = CsrBlock.from_triples(b, rows[sel], cols[sel], vals[sel])
    return out


def pin_to_core(task: int, n_tasks: int) -> set[int] | None:
    """Run the calling thread (and the threads it starts) on core `task` of the cores it may use, when
    there are at least n_tasks of them; returns the cores it ran on before, for the caller to restore
    (Python workers are reused), or None where pinning does not apply (fewer cores than tasks, or no
    sched_setaffinity, as on macOS).

    For the resident tasks under a local master, where all of them share this machine: each
    half-step wakes them from a socket read, and the OS tends to wake both on the core that woke
    them and leave them there for a while. ml-latest-small, rank 10, 6,000 iterations, two tasks on
    two cores: item half-step median 6.4 ms (p90 11.7) placed by the OS, 4.1 ms (p90 6.1) pinned;
    user half-step 2.5 -> 1.6 ms. On a busy host the OS does as well (30-iteration fits alternated:
    7.6-8.8 ms per iteration pinned, one fit at 16.8, against 7.8-9.2 placed by the OS), so it is
    off by default (model.pin_tasks). Not done on a cluster, where an executor cannot know which
    cores the other executors' tasks on its host took."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    try:
        before = os.sched_getaffinity(0)
        cores = sorted(before)
        if n_tasks > len(cores):
            return None
        os.sched_setaffinity(0, {cores[task]})
        return before
    except OSError as e:         # a container that forbids it: the OS places the task
        log.info("resident task %d: could not pin to a core (%s)", task, e)
        return None


def _task_body(address: tuple[str, int], token: str, spec: SolveSpec, num_blocks: dict[str, int],
               from_driver: bool):
    def run(batches):
        ctx = BarrierTaskContext.get()
        me, n_tasks = ctx.partitionId(), len(ctx.getTaskInfos())
        if from_driver:     # the driver sends this task its pieces with the peers' addresses
            for _ in batches:
                pass
            pieces = None
        else:
            pieces = _split_for_tasks(*triples(batches), num_blocks, n_tasks)
        server = _listen(n_tasks) if not from_driver else None
        host = ctx.getTaskInfos()[me].address.rsplit(":", 1)[0].strip("[]")     # an executor's host:port
        pinned = None
        try:
            with _dial(address, me) as sock:
                send_frame(sock, {"token": token, "task": me, "tasks": n_tasks, "stage": ctx.stageId(),
                                  "pid": os.getpid(), "peer": f"{host}:{server.getsockname()[1] if server else 0}"})
                header, mine = recv_frame(sock)         # every task's address, once all have said hello
                if header.get("pin"):
                    pinned = pin_to_core(me, n_tasks)
                received = [mine] if from_driver else _exchange(me, server, header["peers"], token, pieces)
                blocks = _blocks_of(received, num_blocks)
                del pieces
                _serve(sock, blocks, spec)
        finally:
            if pinned is not None:       # the worker may run other tasks next
                try:
                    os.sched_setaffinity(0, pinned)
                except OSError as e:
                    log.warning("resident task %d: could not restore its cores %s (%s)", me, sorted(pinned), e)
            if server is not None:       # _exchange closes it; this is for a task that fails before
                server.close()
        return iter(())
    return run


def _dial(address: tuple[str, int], task: int) -> socket.socket:
    try:
        sock = socket.create_connection(address, timeout=CONNECT_SECONDS)
    except OSError as e:
        raise ExchangeError(f"task {task} could not connect to the driver at {address[0]}:{address[1]} ({e}); "
                            f"set model.exchange = \"jobs\" where executors cannot reach the driver") from e
    sock.settimeout(None)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _serve(sock: socket.socket, blocks: dict[tuple[int, int], CsrBlock], spec: SolveSpec) -> None:
    """A resident task with its blocks built: report them, then solve whatever half-steps the driver
    sends, and score top-N lists for its users when asked, until it says stop."""
    by_side = {side: [b for (c, _), b in blocks.items() if c == code] for side, code in SIDE_CODES.items()}
    plans: dict = {}        # (side, block) -> its padded layout, built on the first half-step, kept
    send_frame(sock, {"op": "built"}, _counts(by_side["user"]) + _counts(by_side["item"]))
    while True:
        header, arrays = recv_frame(sock)
        if header["op"] == "stop":
            return
        if header["op"] == "top":
            send_frame(sock, {"op": "top"}, _top_blocks(by_side["user"], header, list(arrays)))
            continue
        send_frame(sock, *_solve_blocks(by_side[header["side"]], header, list(arrays), plans, spec))


def _top_blocks(blocks: list[CsrBlock], header: dict, arrays: list[np.ndarray]) -> list[np.ndarray]:
    """The reply to one "top" frame: the best header["n"] items of every user of `blocks`, the items
    each rated excluded (a user block's row is that user's training items). `arrays`: the users'
    factors in the order the task reported them, the item factors, and with header["bias"] the
    users' offsets (mu + b_u) in the same order and the item biases. Returns [user ids, counts,
    items, scores] in the layout of kernels.topk.top_n."""
    X, Y = arrays[0], arrays[1]
    offset, item_bias = (arrays[2], arrays[3]) if header["bias"] else (None, None)
    ids, counts, items, scores = [], [], [], []
    at = 0
    for blk in blocks:
        m = blk.row_ids.size
        c, i, sc = top_n(X[at:at + m], Y, header["n"], blk.indptr, blk.cols,
                         None if offset is None else offset[at:at + m], item_bias)
        at += m
        ids.append(blk.row_ids)
        counts.append(c)
        items.append(i)
        scores.append(sc)
    cat = lambda parts, dtype: np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)  # noqa: E731
    return [cat(ids, np.int32), cat(counts, np.int32), cat(items, np.int32), cat(scores, np.float32)]


def _solve_blocks(blocks: list[CsrBlock], header: dict, arrays: list[np.ndarray], plans: dict,
                  spec: SolveSpec) -> tuple[dict, list[np.ndarray]]:
    """The reply to one "solve" frame: new factors (and biases) of `blocks`' rows and the loss pieces.
    `plans` keeps each block's padded layout from the first half-step on."""
    fixed = arrays.pop(0)
    fixed_bias = arrays.pop(0) if header["bias"] else None
    gram = arrays.pop(0) if header["gram"] else None
    x0 = arrays.pop(0) if header.get("x0") else None     # this task's rows, block by block
    ids, parts, biases, loss = [], [], [], np.zeros(3)
    width = fixed.shape[1] + (fixed_bias is not None)
    at = 0
    for blk in blocks:
        key = (header["side"], blk.block)
        if key not in plans:     # the fixed side's shape is the same for the whole fit
            plans[key] = layout(blk.indptr, blk.cols, blk.values, spec, fixed.shape[0], width)
        start = None if x0 is None else x0[at:at + blk.row_ids.size]
        at += blk.row_ids.size
        sol = solve_block(blk.indptr, blk.cols, blk.values, fixed, spec, fixed_bias=fixed_bias, gram=gram,
                          plan=plans[key], x0=start)
        ids.append(blk.row_ids)
        parts.append(sol.factors)
        if sol.bias is not None:
            biases.append(sol.bias)
        loss += (sol.data_loss, sol.reg_loss, sol.sq_err)
    out = [np.concatenate(ids) if ids else np.zeros(0, np.int32),
           np.concatenate(parts) if parts else np.zeros((0, fixed.shape[1]), np.float32)]
    if header["bias"]:
        out.append(np.concatenate(biases) if biases else np.zeros(0, np.float32))
    return {"loss": loss.tolist()}, out


# ---- the driver side ---------------------------------------------------------------------------------
@dataclass
class _Conn:
    task: int
    tasks: int            # tasks in its stage (the partitions of the input it reads)
    stage: int            # Spark stage id: every submission of the resident job gets a new, larger one
    pid: int              # of the Python worker running the task (diagnostics, fault tests)
    sock: socket.socket
    peer: str             # host:port it takes its peers' rating pieces on
    counts: list[np.ndarray] | None = None    # row ids and counts of its blocks, once built


class Resident:
    """The resident stage over `ratings`: a DataFrame (one task per partition; resident_inputs), or
    ratings the driver holds (blocks.Triples: n_tasks tasks, each sent its pieces by the driver).

        with Resident(resident_inputs(train, n_tasks)[0], spec, host, num_blocks).start() as stage:  # ExchangeError
            counts = stage.row_counts("user", n_users)
            items = stage.half_step("item", n_items, X, user_bias, previous)
    """

    def __init__(self, ratings: DataFrame | Triples, spec: SolveSpec, host: str, num_blocks: dict[str, int],
                 pin: bool = False, n_tasks: int = 0):
        self.triples = ratings if isinstance(ratings, Triples) else None
        self.ratings, self.spec, self.host, self.num_blocks = ratings, spec, host, num_blocks
        self.pin = pin                   # each task on a core of its own (pin_to_core): local masters only
        if self.triples is not None:
            self.n_tasks, self.sc = n_tasks, self.triples.spark.sparkContext
        else:
            self.n_tasks = ratings.rdd.getNumPartitions()    # the stage's own count wins (_connect)
            self.sc = ratings.sparkSession.sparkContext
        self.token = secrets.token_hex(16)
        self.hellos: queue.Queue[_Conn] = queue.Queue()
        self.conns: list[_Conn] = []
        self.counts: list[np.ndarray] | None = None
        self.stage = -1                  # stage id of the tasks connected last; older ones are stale
        self.launches = 0
        self.job_error: BaseException | None = None
        self.job_done = threading.Event()
        self.tag = f"mf_spark-resident-{self.token[:8]}"

    # -- lifecycle
    def start(self) -> "Resident":
        """Listen, submit the stage and wait for every task to connect; ExchangeError when it cannot."""
        try:
            self.server = socket.create_server((self.host, 0), backlog=max(16, 2 * self.n_tasks))
        except OSError as e:
            raise ExchangeError(f"cannot listen on the driver address {self.host!r}: {e}") from e
        ACTIVE.add(self)
        self.address = (self.host, self.server.getsockname()[1])
        self.job = self._job()
        threading.Thread(target=self._accept, name="mf_spark-accept", daemon=True).start()
        try:
            self._launch()
            self._connect()
        except BaseException:
            self.__exit__(*sys.exc_info())
            raise
        return self

    def __enter__(self) -> "Resident":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None and self.job_error is None:
            self.pause()                 # the tasks stop, the job ends
        else:
            for c in self.conns:
                c.sock.close()
            self.conns = []
            self.sc.cancelJobsWithTag(self.tag)
            self.job_done.wait(timeout=120)
        self.server.close()
        ACTIVE.discard(self)
        while not self.hellos.empty():
            self.hellos.get_nowait().sock.close()

    def _job(self):
        body = _task_body(self.address, self.token, self.spec, self.num_blocks, self.triples is not None)
        if self.triples is None:
            return self.ratings.mapInArrow(body, "done int", barrier=True)
        # Nothing for the tasks to read: an RDD stage, which a cold application starts seconds sooner
        # than its first SQL stage (docs/performance.md).
        return self.sc.parallelize(range(self.n_tasks), self.n_tasks).barrier().mapPartitions(body)

    def _launch(self) -> None:
        """Submit the barrier job (again) in a thread; its tasks connect from a new, larger stage id."""
        self.launches += 1
        self.job_error, self.job_done = None, threading.Event()
        done = self.job_done

        def run_job() -> None:
            # A tag, not a job group: the job stays in the caller's group (phases.PhaseClock counts it).
            self.sc.addJobTag(self.tag)
            self.sc.setInterruptOnCancel(True)
            try:
                self.job.collect()
            except BaseException as e:   # reported by whichever driver call waits next
                self.job_error = e
            finally:
                done.set()
        InheritableThread(target=run_job, name=f"mf_spark-resident-{self.launches}", daemon=True).start()

    def pause(self) -> None:
        """Let the stage's tasks finish (they hold every slot) so that other Spark jobs can run, e.g. a
        checkpoint write; the next half-step submits the stage again."""
        for c in self.conns:
            try:
                send_frame(c.sock, {"op": "stop"})
            except OSError:
                pass
        for c in self.conns:
            c.sock.close()
        self.conns = []
        self.job_done.wait()

    def _drop(self) -> None:
        """After a lost task: end the old job (Spark aborts a failed barrier job) and make a new plan
        (running a plan whose barrier stage failed fails again at once; after a clean end, `pause`,
        the same plan runs again)."""
        for c in self.conns:
            c.sock.close()
        self.conns = []
        if not self.job_done.wait(timeout=60):
            self.sc.cancelJobsWithTag(self.tag)
            self.job_done.wait(timeout=60)
        self.job = self._job()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.server.accept()
            except OSError:
                return
            try:
                sock.settimeout(CONNECT_SECONDS)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                header, arrays = recv_frame(sock)
                if not hmac.compare_digest(str(header.get("token", "")), self.token):
                    raise ConnectionError("bad token")
                sock.settimeout(None)
                self.hellos.put(_Conn(int(header["task"]), int(header["tasks"]), int(header["stage"]),
                                      int(header["pid"]), sock, str(header["peer"])))
            except (OSError, ValueError, KeyError, ConnectionError) as e:
                log.warning("resident stage: refused a connection (%s)", e)
                sock.close()

    def _connect(self) -> None:
        """Wait for one connection from every task of the job just submitted: the first stage id above
        the last one accepted that all n_tasks tasks connect from (a failed job's late tasks carry
        an older id and are dropped)."""
        waiting: dict[int, dict[int, _Conn]] = {}
        while True:
            try:
                c = self.hellos.get(timeout=0.1)
            except queue.Empty:
                if self.job_done.is_set():
                    raise ExchangeError(f"the resident stage ended before its {self.n_tasks} tasks connected: "
                                        f"{self.job_error or 'no error reported'}") from self.job_error
                continue
            if c.stage <= self.stage:
                c.sock.close()
                continue
            stage = waiting.setdefault(c.stage, {})
            if c.task in stage:          # a retried task of this stage: the newest connection wins
                stage[c.task].sock.close()
            stage[c.task] = c
            if len(stage) == c.tasks:
                conns = [stage.pop(t) for t in range(c.tasks)]
                for old in waiting.values():
                    for other in old.values():
                        other.sock.close()
                self._build(conns)
                self.n_tasks, self.conns, self.stage = c.tasks, conns, c.stage
                if self.counts is None:
                    self.counts = [c.counts for c in self.conns]
                return

    def _build(self, conns: list[_Conn]) -> None:
        """Give every task the others' addresses, then wait for each to report its built blocks."""
        peers = [c.peer for c in conns]
        t = self.triples
        pieces = (_split_for_tasks(t.u, t.i, t.r.astype(np.float32), self.num_blocks, len(conns)) if t is not None
                  else [[] for _ in conns])
        try:
            for c in conns:
                send_frame(c.sock, {"op": "peers", "peers": peers, "pin": self.pin}, pieces[c.task])
                pieces[c.task] = []
            for c in conns:
                header, c.counts = recv_frame(c.sock)
                if header.get("op") != "built":
                    raise ConnectionError(f"task {c.task} answered {header.get('op')!r} instead of its blocks")
        except (OSError, ConnectionError) as e:
            for c in conns:
                c.sock.close()
            raise ExchangeError(f"a resident task failed while building its blocks: {e}") from e

    # -- work
    def row_counts(self, side: str, n_rows: int) -> np.ndarray:
        """Ratings per global row of `side`, from the tasks' blocks."""
        counts = np.zeros(n_rows, dtype=np.int64)
        at = 0 if side == "user" else 2
        for got in self.counts or []:
            ids, n = got[at], got[at + 1]
            if ids.size and (ids.min() < 0 or ids.max() >= n_rows):
                raise InputError(f"block rows {ids.min()}..{ids.max()} outside 0..{n_rows - 1}")
            counts[ids] = n
        return counts

    def half_step(self, side: str, n_rows: int, fixed: np.ndarray, fixed_bias: np.ndarray | None,
                  previous: HalfStepResult, retries: int = 3) -> HalfStepResult:
        """New factors for every row of `side` against `fixed`; repeated on a new stage attempt when a
        task is lost (Spark retries barrier stages whole)."""
        fixed = np.ascontiguousarray(fixed, dtype=np.float32)
        arrays = [fixed]
        if fixed_bias is not None:
            arrays.append(np.asarray(fixed_bias, dtype=np.float32))
        gram = fixed.T.astype(np.float64) @ fixed if self.spec.kind == "implicit" else None
        if gram is not None:
            arrays.append(gram)
        header = {"op": "solve", "side": side, "bias": fixed_bias is not None, "gram": gram is not None}
        for attempt in range(retries + 1):
            try:
                if not self.conns:          # paused, or a task was lost: (re)submit the stage
                    started = time.perf_counter()
                    self._launch()
                    self._connect()
                    if attempt:
                        log.warning("resident stage: stage %d connected after %.1f s; repeating the %s "
                                    "half-step", self.stage, time.perf_counter() - started, side)
                return self._solve_once(header, arrays, n_rows, fixed.shape[1], previous)
            except (OSError, ConnectionError, ExchangeError) as e:
                # A task lost while solving, or while the stage was being submitted again after a
                # pause (an executor killed during a checkpoint write): a new plan, a new stage.
                if attempt == retries:
                    raise ExchangeError(f"lost the resident stage {retries + 1} times; last: {e}") from e
                log.warning("resident stage: lost a task (%s); submitting the stage again", e)
                self._drop()
        raise AssertionError("unreachable")

    def top(self, X: np.ndarray, user_offset: np.ndarray | None, Y: np.ndarray, item_bias: np.ndarray | None,
            n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
        """Every user's best n items, the items the user rated excluded, scored in the tasks that hold
        the user blocks (so the training pairs never leave them): (user ids, counts, items, scores),
        flattened per user as kernels.topk.top_n. None when the stage is not running or a task is
        lost meanwhile (the caller then scores through Spark jobs)."""
        if not self.conns:
            return None
        header = {"op": "top", "n": int(n), "bias": user_offset is not None}
        try:
            for c in self.conns:
                rows = c.counts[0]
                arrays = [np.ascontiguousarray(X[rows], np.float32), np.ascontiguousarray(Y, np.float32)]
                if user_offset is not None:
                    arrays += [np.asarray(user_offset[rows], np.float32), np.asarray(item_bias, np.float32)]
                send_frame(c.sock, header, arrays)
            parts = [recv_frame(c.sock)[1] for c in self.conns]
        except (OSError, ConnectionError) as e:
            log.warning("resident stage: lost a task while scoring top-%d lists (%s); scoring by Spark jobs", n, e)
            self._drop()
            return None
        return tuple(np.concatenate([p[j] for p in parts]) for j in range(4))

    def _solve_once(self, header: dict, arrays: list[np.ndarray], n_rows: int, k: int,
                    previous: HalfStepResult) -> HalfStepResult:
        x0 = None
        if self.spec.cg_steps:      # conjugate gradients start from the rows' current factors
            x0 = (start_point(previous.factors, previous.bias, self.spec) if previous.factors is not None
                  else np.zeros((n_rows, k + self.spec.with_bias), np.float32))
        at = 0 if header["side"] == "user" else 2
        for c in self.conns:
            if x0 is None:
                send_frame(c.sock, header, arrays)
            else:           # each task gets its own rows, in the order of the ids it reported
                send_frame(c.sock, {**header, "x0": True}, arrays + [x0[c.counts[at]]])
        X = previous.factors.copy() if previous.factors is not None else np.zeros((n_rows, k), np.float32)
        bias = None
        if header["bias"] or previous.bias is not None:
            bias = previous.bias.copy() if previous.bias is not None else np.zeros(n_rows, np.float32)
        loss = np.zeros(3)
        for c in self.conns:
            reply, got = recv_frame(c.sock)
            X[got[0]] = got[1]
            if len(got) > 2:
                bias[got[0]] = got[2]
            loss += reply["loss"]
        return HalfStepResult(X, bias, float(loss[0]), float(loss[1]), float(loss[2]))


ACTIVE = weakref.WeakSet()


def driver_host(sc) -> str:
    """The address executors reach the driver at (Spark's own spark.driver.host)."""
    return sc.getConf().get("spark.driver.host", None) or socket.gethostbyname(socket.gethostname())


def resident_inputs(ratings: DataFrame, n_tasks: int) -> list[DataFrame]:
    """user_idx, item_idx (int), rating (float) of `ratings`, one partition per resident task: the ways to
    try, cheapest first.

    The tasks read these rows once, cut them per destination task and exchange the pieces among
    themselves (`_exchange`), so the ratings cross from the JVM to Python once. Performance note: when
    `ratings` already has n_tasks partitions they are read where they are (no shuffle; 5M ratings:
    stage start 1.0 s against 1.8 s after a shuffle); that fails when the stage's lineage changes the
    partition count (a union or a coalesce: barrier stages refuse those), hence the second way, one
    shuffle in the JVM (rows placed by user index).
    """
    rows = rating_columns(ratings)
    placed = rows.repartitionById(n_tasks, F.col(USER_IDX) % F.lit(n_tasks))
    return [rows, placed] if rows.rdd.getNumPartitions() == n_tasks else [placed]
