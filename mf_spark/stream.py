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
(result stages are not retried); the driver submits it again (the blocks come back from the shuffle
files, not from the input), the new tasks connect, and the driver repeats the half-step it was on from
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
from pyspark import RDD, BarrierTaskContext, InheritableThread

from mf_spark.blocks import SIDE_CODES, merge_all
from mf_spark.errors import InputError
from mf_spark.halfstep import HalfStepResult
from mf_spark.kernels.solve import SolveSpec, solve_block

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


def _task_body(address: tuple[str, int], token: str, spec: SolveSpec, generation: int):
    def run(keyed_pieces):
        ctx = BarrierTaskContext.get()
        blocks = merge_all(piece for _, piece in keyed_pieces)
        by_side = {side: [b for (c, _), b in blocks.items() if c == code] for side, code in SIDE_CODES.items()}
        try:
            sock = socket.create_connection(address, timeout=CONNECT_SECONDS)
        except OSError as e:
            raise ExchangeError(f"task {ctx.partitionId()} could not connect to the driver at "
                                f"{address[0]}:{address[1]} ({e}); set model.exchange = \"jobs\" where executors "
                                f"cannot reach the driver") from e
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with sock:
            send_frame(sock, {"token": token, "task": ctx.partitionId(), "attempt": generation,
                              "pid": os.getpid()},
                       _counts(by_side["user"]) + _counts(by_side["item"]))
            while True:
                header, arrays = recv_frame(sock)
                if header["op"] == "stop":
                    break
                fixed, fixed_bias, gram = arrays[0], arrays[1] if header["bias"] else None, \
                    arrays[-1] if header["gram"] else None
                ids, parts, biases, loss = [], [], [], np.zeros(3)
                for blk in by_side[header["side"]]:
                    sol = solve_block(blk.indptr, blk.cols, blk.values, fixed, spec, fixed_bias=fixed_bias, gram=gram)
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
    attempt: int
    pid: int              # of the Python worker running the task (diagnostics, fault tests)
    sock: socket.socket
    counts: list[np.ndarray]


class Resident:
    """The resident stage over `keyed` pieces (partition t holds task t's pieces).

        with Resident(keyed, n_tasks, spec, host).start() as stage:   # ExchangeError: cannot start
            counts = stage.row_counts("user", n_users)
            items = stage.half_step("item", n_items, X, user_bias, previous)
    """

    def __init__(self, keyed: RDD, n_tasks: int, spec: SolveSpec, host: str):
        self.keyed, self.n_tasks, self.spec, self.host = keyed, n_tasks, spec, host
        self.token = secrets.token_hex(16)
        self.hellos: queue.Queue[_Conn] = queue.Queue()
        self.conns: list[_Conn] = []
        self.counts: list[np.ndarray] | None = None
        self.generation = -1
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
            self.keyed.context.cancelJobGroup(self.group)
            self.job_done.wait(timeout=120)
        self.server.close()
        ACTIVE.discard(self)
        while not self.hellos.empty():
            self.hellos.get_nowait().sock.close()

    def _launch(self) -> None:
        """Submit the barrier job (again) in a thread; its tasks connect with the new generation."""
        self.generation += 1
        self.job_error, self.job_done = None, threading.Event()
        body = _task_body(self.address, self.token, self.spec, self.generation)
        done = self.job_done

        def run_job() -> None:
            sc = self.keyed.context
            sc.setJobGroup(self.group, "mf_spark fit: resident blocks", interruptOnCancel=True)
            try:
                self.keyed.barrier().mapPartitions(body).collect()
            except BaseException as e:   # reported by whichever driver call waits next
                self.job_error = e
            finally:
                done.set()
        InheritableThread(target=run_job, name=f"mf_spark-resident-{self.generation}", daemon=True).start()

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

    def _relaunch(self) -> None:
        """After a lost task: end the old job (Spark aborts a failed barrier job), submit a new one."""
        for c in self.conns:
            c.sock.close()
        self.conns = []
        if not self.job_done.wait(timeout=60):
            self.keyed.context.cancelJobGroup(self.group)
            self.job_done.wait(timeout=60)
        self._launch()
        self._connect()

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
                self.hellos.put(_Conn(int(header["task"]), int(header["attempt"]), int(header["pid"]), sock, arrays))
            except (OSError, ValueError, KeyError, ConnectionError) as e:
                log.warning("resident stage: refused a connection (%s)", e)
                sock.close()

    def _connect(self) -> None:
        """Wait for one connection from every task of the current generation's job."""
        waiting: dict[int, _Conn] = {}
        while True:
            try:
                c = self.hellos.get(timeout=0.1)
            except queue.Empty:
                if self.job_done.is_set():
                    raise ExchangeError(f"the resident stage ended before its {self.n_tasks} tasks connected: "
                                        f"{self.job_error or 'no error reported'}") from self.job_error
                continue
            if c.attempt != self.generation:
                c.sock.close()
                continue
            if c.task in waiting:        # a retried task of this job: the newest connection wins
                waiting[c.task].sock.close()
            waiting[c.task] = c
            if len(waiting) == self.n_tasks:
                self.conns = [waiting[t] for t in range(self.n_tasks)]
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
        if not self.conns:          # paused
            self._launch()
            self._connect()
        for attempt in range(retries + 1):
            try:
                return self._solve_once(header, arrays, n_rows, fixed.shape[1], previous)
            except (OSError, ConnectionError) as e:
                if attempt == retries:
                    raise ExchangeError(f"lost the resident stage {retries + 1} times; last: {e}") from e
                log.warning("resident stage: lost a task (%s); submitting the stage again", e)
                started = time.perf_counter()
                self._relaunch()
                log.warning("resident stage: generation %d connected after %.1f s; repeating the %s half-step",
                            self.generation, time.perf_counter() - started, side)
        raise AssertionError("unreachable")

    def _solve_once(self, header: dict, arrays: list[np.ndarray], n_rows: int, k: int,
                    previous: HalfStepResult) -> HalfStepResult:
        for c in self.conns:
            send_frame(c.sock, header, arrays)
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


def keyed_for_tasks(pieces: RDD, n_tasks: int) -> RDD:
    """Pieces keyed by (side, block) placed so that task t holds every block b with b % n_tasks == t."""
    return pieces.map(lambda kv: (kv[0][1] % n_tasks, kv)).partitionBy(n_tasks, lambda t: t)
