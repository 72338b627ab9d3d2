"""Resident blocks: a whole fit in one gang-scheduled Spark stage, factors streamed by the driver.

A Spark job per half-step costs scheduling and Python-worker round trips whatever the data size,
which dwarfs the arithmetic below a few million ratings. Here the rating blocks are built inside one
barrier stage (all its tasks start together and are retried together) whose tasks stay alive for
the whole fit. Each task reads one partition of the ratings (Arrow, the only time they cross from
the JVM to Python), cuts them per owning task and exchanges the pieces with the other tasks directly
over TCP (no Spark shuffle), then builds its CSR blocks and connects back to the driver. Every
half-step the driver sends the fixed side's factors to every task and gathers the solved rows:

    driver  --(fixed factors, biases, Gramian)-->  task 0: user blocks 0, 2; item blocks 0, 2
            <--(row ids, new factors, losses)----  task 1: user blocks 1, 3; item blocks 1, 3

Ratings the driver already holds (ready.Triples, from the driver front end) skip the reading and the
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

Modules: wire (the connection proof and the frames), task (what runs on the executors), driver (the
stage's life and every half-step).

Threat model. The stage listens on TCP ports of the driver (and, while the pieces are exchanged, of
the executors), so anything that can reach those hosts can connect. What it guards against: stray or
hostile connections, malformed or oversized frames, peers that stall, tasks that freeze or vanish.
Each fit draws a random secret, which reaches the tasks inside the task closure Spark ships; every
connection must first answer a fresh nonce with an HMAC of that secret (wire.challenge) within a few
seconds, before a byte of it is parsed. Listeners admit connections through wire.Gate: each proves
itself in a thread of its own, unproven ones are bounded per source address and in all (the oldest
dropped first), and refusals are logged once a minute, so silent or scanning connections neither
block nor delay a real peer. Frames announce their sizes, and each is checked against fixed caps before
anything is allocated; every read has a deadline (a half-step's replies: the stall deadline,
max(model.stall_floor_seconds, 20 x the slowest recent half-step), capped by
model.exchange_timeout_seconds), after which the stage is dropped and submitted again, and after
repeated failures the fit goes on with one Spark job per half-step. What it does not give:
confidentiality. Frames travel in plaintext and the secret travels in Spark's own task messages, so
where Spark's traffic is protected (spark.authenticate, spark.network.crypto.enabled,
spark.ssl.enabled) the fit uses Spark's own channels instead (als._exchange picks the jobs exchange).
"""

from mf_spark.als.engines.stream.driver import ACTIVE, Resident, driver_host, resident_inputs
from mf_spark.als.engines.stream.task import _blocks_of, _split_for_tasks
from mf_spark.als.engines.stream.wire import ExchangeError, FrameError, recv_frame, send_frame

__all__ = [
    "ACTIVE",
    "ExchangeError",
    "FrameError",
    "Resident",
    "driver_host",
    "recv_frame",
    "resident_inputs",
    "send_frame",
    "_blocks_of",
    "_split_for_tasks",
]
