"""Resident blocks: a whole fit in one gang-scheduled Spark stage, factors streamed by the driver.

A Spark job per half-step costs 50-100 ms of scheduling and Python-worker round trips whatever the
data size, which dwarfs the arithmetic below a few million ratings. Here the rating blocks are built
inside one barrier stage (all its tasks start together and are retried together) whose tasks stay
alive for the whole fit. Each task connects back to the driver over TCP; every half-step the driver
sends the fixed side's factors to every task and gathers the solved rows:

    driver  --(fixed factors, biases, Gramian)-->  task 0: user blocks 0, 2; item blocks 0, 2
            <--(row ids, new factors, losses)----  task 1: user blocks 1, 3; item blocks 1, 3

The driver holds the factors after every half-step, so per-iteration metrics and checkpoints work as
with one job per half-step. Frames are a JSON header plus raw little-endian arrays (no pickle); a
connection proves itself with a per-fit secret. When a task dies, Spark fails the whole barrier job
(result stages are not retried); the driver submits it again (the pieces are cut again from the
training DataFrame, cached by the caller), the new tasks connect, and the driver repeats the half-step it was on from
factors it still holds, so a recovered fit ends with the same factors as an undisturbed one.

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

from mf_spark.blocks import SIDE_CODES, merge_all
from mf_spark.errors import InputError
from mf_spark.halfstep import HalfStepResult
from mf_spark.kernels.solve import SolveSpec, layout, solve_block, start_point

log = logging.getLogger("mf_spark")

DTYPES = {"<f4", "<f8", "<i4", "<i8"}
CONNECT_SECONDS = 60.0


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


def _pieces_of(batches):
    """((side, block), (rows, cols, values) bytes) of the Arrow batches a task receives; the marker
    rows `placed_for_tasks` adds (side -1) are skipped."""
    for batch in batches:
        for r in batch.to_pylist():
            if r["side"] >= 0:
                yield (r["side"], r["block"]), (r["rows"], r["cols"], r["values"])


def _task_body(address: tuple[str, int], token: str, spec: SolveSpec):
    def run(batches):
        ctx = BarrierTaskContext.get()
        blocks = merge_all(_pieces_of(batches))
        by_side = {side: [b for (c, _), b in blocks.items() if c == code] for side, code in SIDE_CODES.items()}
        plans = {}          # (side, block) -> its padded layout, built on the first half-step, kept
        try:
            sock = socket.create_connection(address, timeout=CONNECT_SECONDS)
        except OSError as e:
            raise ExchangeError(f"task {ctx.partitionId()} could not connect to the driver at "
                                f"{address[0]}:{address[1]} ({e}); set model.exchange = \"jobs\" where executors "
                                f"cannot reach the driver") from e
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with sock:
            send_frame(sock, {"token": token, "task": ctx.partitionId(), "stage": ctx.stageId(),
                              "pid": os.getpid()},
                       _counts(by_side["user"]) + _counts(by_side["item"]))
            while True:
                header, arrays = recv_frame(sock)
                if header["op"] == "stop":
                    break
                arrays = list(arrays)
                fixed = arrays.pop(0)
                fixed_bias = arrays.pop(0) if header["bias"] else None
                gram = arrays.pop(0) if header["gram"] else None
                x0 = arrays.pop(0) if header.get("x0") else None     # this task's rows, block by block
                ids, parts, biases, loss = [], [], [], np.zeros(3)
                width = fixed.shape[1] + (fixed_bias is not None)
                at = 0
                for blk in by_side[header["side"]]:
                    key = (header["side"], blk.block)
                    if key not in plans:     # the fixed side's shape is the same for the whole fit
                        plans[key] = layout(blk.indptr, blk.cols, blk.values, spec, fixed.shape[0], width)
                    plan = plans[key]
                    start = None if x0 is None else x0[at:at + blk.row_ids.size]
                    at += blk.row_ids.size
                    sol = solve_block(blk.indptr, blk.cols, blk.values, fixed, spec, fixed_bias=fixed_bias,
                                      gram=gram, plan=plan, x0=start)
                    ids.append(blk.row_ids)
                    parts.append(sol.factors)
                    if sol.bias is not None:
                        biases.append(sol.bias)
                    loss += (sol.data_loss, sol.reg_loss, sol.sq_err)
                k = fixed.shape[1]
                out = [np.concatenate(ids) if ids else np.zeros(0, np.int32),
                       np.concatenate(parts) if parts else np.zeros((0, k), np.float32)]
                if header["bias"]:
                    out.append(np.concatenate(biases) if biases else np.zeros(0, np.float32))
                send_frame(sock, {"loss": loss.tolist()}, out)
        return iter(())
    return run


# ---- the driver side ---------------------------------------------------------------------------------
@dataclass
class _Conn:
    task: int
    stage: int            # Spark stage id: every submission of the resident job gets a new, larger one
    pid: int              # of the Python worker running the task (diagnostics, fault tests)
    sock: socket.socket
    counts: list[np.ndarray]


class Resident:
    """The resident stage over `placed` pieces (partition t holds task t's pieces; placed_for_tasks).

        with Resident(placed, n_tasks, spec, host).start() as stage:   # ExchangeError: cannot start
            counts = stage.row_counts("user", n_users)
            items = stage.half_step("item", n_items, X, user_bias, previous)
    """

    def __init__(self, placed: DataFrame, n_tasks: int, spec: SolveSpec, host: str):
        self.placed, self.n_tasks, self.spec, self.host = placed, n_tasks, spec, host
        self.sc = placed.sparkSession.sparkContext
        self.token = secrets.token_hex(16)
        self.hellos: queue.Queue[_Conn] = queue.Queue()
        self.conns: list[_Conn] = []
        self.counts: list[np.ndarray] | None = None
        self.stage = -1                  # stage id of the tasks connected last; older ones are stale
        self.launches = 0
        self.job_error: BaseException | None = None
        self.job_done = threading.Event()
        self.group = f"mf_spark-resident-{self.token[:8]}"

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
            self.sc.cancelJobGroup(self.group)
            self.job_done.wait(timeout=120)
        self.server.close()
        ACTIVE.discard(self)
        while not self.hellos.empty():
            self.hellos.get_nowait().sock.close()

    def _job(self) -> DataFrame:
        return self.placed.mapInArrow(_task_body(self.address, self.token, self.spec), "done int", barrier=True)

    def _launch(self) -> None:
        """Submit the barrier job (again) in a thread; its tasks connect from a new, larger stage id."""
        self.launches += 1
        self.job_error, self.job_done = None, threading.Event()
        done = self.job_done

        def run_job() -> None:
            self.sc.setJobGroup(self.group, "mf_spark fit: resident blocks", interruptOnCancel=True)
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
        the same plan runs again and its tasks read the pieces' shuffle files)."""
        for c in self.conns:
            c.sock.close()
        self.conns = []
        if not self.job_done.wait(timeout=60):
            self.sc.cancelJobGroup(self.group)
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
                self.hellos.put(_Conn(int(header["task"]), int(header["stage"]), int(header["pid"]), sock, arrays))
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
            if len(stage) == self.n_tasks:
                self.conns = [stage.pop(t) for t in range(self.n_tasks)]
                self.stage = c.stage
                for old in waiting.values():
                    for other in old.values():
                        other.sock.close()
                if self.counts is None:
                    self.counts = [c.counts for c in self.conns]
                return

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


def placed_for_tasks(pieces: DataFrame, n_tasks: int) -> DataFrame:
    """`blocks.pieces_frame` rows placed so that partition t holds every block b with b % n_tasks == t.

    Plus one marker row (side -1) per partition: a barrier task must run, and connect, even where no
    rating falls in its blocks. Performance note: one shuffle of the packed pieces, in the JVM.
    """
    spark = pieces.sparkSession
    markers = spark.range(n_tasks).select(F.lit(-1).alias("side"), F.col("id").cast("int").alias("block"),
                                          *(F.lit(b"").alias(c) for c in ("rows", "cols", "values")))
    return pieces.unionByName(markers).repartitionById(n_tasks, F.col("block") % F.lit(n_tasks))
