"""The resident stage's wire format: a proof of the fit's secret, then frames of a JSON header and raw
arrays, every length checked before anything is allocated, every read under a deadline.

    connection  server sends a 16-byte nonce; the client answers HMAC-SHA256(secret, role | nonce)
                (32 bytes); the server closes the connection unless it matches. Nothing else is read
                from a peer before that.
    frame       4-byte little-endian header length (<= MAX_HEADER), the JSON header (an object; its
                "arrays" a list of [dtype, shape] with dtype in DTYPES, at most MAX_ARRAYS, at most
                MAX_DIMS non-negative integer dimensions), then each array's bytes; the arrays
                together hold at most the reader's `limit` bytes.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import socket
import struct
import time

import numpy as np

DTYPES = {"<f4", "<f8", "<i4", "<i8"}
MAX_HEADER = 1 << 20
MAX_ARRAYS = 64
MAX_DIMS = 3
FRAME_LIMIT = 1 << 36  # bytes of arrays in one frame by default: 64 GiB, any real block piece
NONCE, DIGEST = 16, 32
HANDSHAKE_SECONDS = 10.0  # for a peer to prove itself
FRAME_SECONDS = 600.0  # for a frame, once its first byte is in, to arrive whole


class ExchangeError(RuntimeError):
    """The resident stage could not start or failed for good (the Spark job's error is the cause)."""


class FrameError(ConnectionError):
    """A peer sent bytes that are not a frame of this protocol, or not in time."""


def keepalive(sock: socket.socket) -> socket.socket:
    """TCP keepalive (a peer host that vanishes without a reset is noticed in about a minute) and no
    Nagle delay on a connection."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", 30), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, name):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class Gate:
    """The front door of a listener: every accepted connection is handled (`handle(sock)`: prove the
    secret, read the hello or the pieces) in a thread of its own, under the handshake deadline, so
    that no number of silent, slow or scanning connections delays a real peer. Unproven connections
    are bounded, `per_source` from one address and `limit` in all; past either bound the oldest
    unproven one is dropped, not the newest refused (a flood cannot lock out a peer that arrives
    after it). `handle` calls `proven(sock)` once the peer has shown the secret: from then on the
    connection no longer counts. Refusals are logged at most once a minute, with their count."""

    def __init__(self, name: str, handle, log, limit: int = 64, per_source: int = 16) -> None:
        import threading

        self.name, self.handle, self.log = name, handle, log
        self.limit, self.per_source = limit, per_source
        self.lock = threading.Lock()
        self.pending: dict[socket.socket, tuple[float, str]] = {}  # unproven: accepted at, source
        self.dropped, self.reasons, self.last_log = 0, {}, 0.0

    def serve(self, server: socket.socket, until=lambda: False) -> None:
        """Accept until the server socket closes (or `until()` after a connection)."""
        while not until():
            try:
                sock, addr = server.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.admit(sock, addr[0] if isinstance(addr, tuple) else str(addr))

    def admit(self, sock: socket.socket, source: str) -> None:
        import threading

        with self.lock:
            self.pending[sock] = (time.monotonic(), source)
            mine = [s for s, (_, src) in self.pending.items() if src == source]
            if len(mine) > self.per_source:
                self._drop(min(mine, key=lambda s: self.pending[s][0]), "too many unproven from one address")
            if len(self.pending) > self.limit:
                self._drop(min(self.pending, key=lambda s: self.pending[s][0]), "too many unproven")
        threading.Thread(target=self._run, args=(sock, source), name=f"mf_spark-{self.name}", daemon=True).start()

    def proven(self, sock: socket.socket) -> None:
        with self.lock:
            self.pending.pop(sock, None)

    def _drop(self, sock: socket.socket, why: str) -> None:
        """Close an unproven connection (its thread's read then fails); the lock is held."""
        self.pending.pop(sock, None)
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()
        self._refused(why)

    def _refused(self, why: str) -> None:
        self.dropped += 1
        self.reasons[why] = self.reasons.get(why, 0) + 1
        now = time.monotonic()
        if now - self.last_log >= 60.0:
            shown = "; ".join(f"{n} x {r}" for r, n in sorted(self.reasons.items(), key=lambda kv: -kv[1])[:3])
            self.log.warning("%s: refused %d connection(s) (%s)", self.name, self.dropped, shown)
            self.dropped, self.reasons, self.last_log = 0, {}, now

    def _run(self, sock: socket.socket, source: str) -> None:
        try:
            self.handle(sock)
        except Exception as e:  # noqa: BLE001 - a stray or hostile peer must not harm the listener
            with self.lock:
                if self.pending.pop(sock, None) is not None:
                    self._refused(f"{type(e).__name__}: {str(e)[:80]}")
                elif sock.fileno() != -1:  # proven, then failed (a dropped one was closed and counted)
                    self.log.info("%s: a connection failed after its proof (%s)", self.name, e)
            sock.close()


def _digest(secret: str, role: str, nonce: bytes) -> bytes:
    return hmac.new(secret.encode(), role.encode() + b"|" + nonce, hashlib.sha256).digest()


def challenge(sock: socket.socket, secret: str, role: str) -> None:
    """Server side: FrameError unless the peer proves it holds `secret` (for `role`) in time."""
    nonce = os.urandom(NONCE)
    deadline = time.monotonic() + HANDSHAKE_SECONDS
    sock.sendall(nonce)
    answer = _recv_exact(sock, DIGEST, deadline)
    if not hmac.compare_digest(bytes(answer), _digest(secret, role, nonce)):
        raise FrameError("the peer does not hold this fit's secret")


def prove(sock: socket.socket, secret: str, role: str) -> None:
    """Client side of `challenge`."""
    nonce = _recv_exact(sock, NONCE, time.monotonic() + HANDSHAKE_SECONDS)
    sock.sendall(_digest(secret, role, bytes(nonce)))


def send_frame(sock: socket.socket, header: dict, arrays: list[np.ndarray] = ()) -> None:
    """A 4-byte length, a JSON header naming each array's dtype and shape, then the arrays' bytes."""
    arrays = [np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")) for a in arrays]
    head = json.dumps({**header, "arrays": [[a.dtype.str, list(a.shape)] for a in arrays]}).encode()
    if len(head) > MAX_HEADER or len(arrays) > MAX_ARRAYS:
        raise ValueError(f"frame header of {len(head)} bytes and {len(arrays)} arrays is over the limits")
    sock.sendall(struct.pack("<I", len(head)) + head)
    for a in arrays:
        if a.size:
            sock.sendall(memoryview(a).cast("B"))


def _recv_exact(sock: socket.socket, n: int, deadline: float | None) -> bytearray:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise FrameError(f"timed out after {got} of {n} bytes")
            sock.settimeout(left)
        try:
            k = sock.recv_into(view[got:], n - got)
        except socket.timeout:
            raise FrameError(f"timed out after {got} of {n} bytes") from None
        if k == 0:
            raise FrameError(f"connection closed after {got} of {n} bytes")
        got += k
    return buf


def _layout(header, limit: int) -> list[tuple[str, tuple[int, ...], int]]:
    """(dtype, shape, bytes) of every array a header announces; FrameError if any is out of bounds."""
    if not isinstance(header, dict) or not isinstance(header.get("arrays"), list):
        raise FrameError("a frame header must be a JSON object with an 'arrays' list")
    specs = header.pop("arrays")
    if len(specs) > MAX_ARRAYS:
        raise FrameError(f"{len(specs)} arrays in one frame (at most {MAX_ARRAYS})")
    out, total = [], 0
    for spec in specs:
        if not (
            isinstance(spec, list)
            and len(spec) == 2
            and spec[0] in DTYPES
            and isinstance(spec[1], list)
            and len(spec[1]) <= MAX_DIMS
            and all(type(d) is int and 0 <= d <= limit for d in spec[1])
        ):
            raise FrameError(f"bad array description {str(spec)[:80]!r}")
        shape = tuple(spec[1])
        size = int(np.prod(shape, dtype=object)) * np.dtype(spec[0]).itemsize
        total += size
        if total > limit:
            raise FrameError(f"a frame announces over {limit} bytes of arrays")
        out.append((spec[0], shape, size))
    return out


def recv_frame(
    sock: socket.socket, wait: float | None = None, limit: int = FRAME_LIMIT, seconds: float = FRAME_SECONDS
) -> tuple[dict, list[np.ndarray]]:
    """The next frame: (header, arrays). Waits up to `wait` seconds for it to start (None: as long as
    the connection lives), then up to `seconds` for the rest; FrameError for anything that is not a
    frame within the limits (nothing larger than a header of MAX_HEADER bytes is allocated first)."""
    start = None if wait is None else time.monotonic() + wait
    (n,) = struct.unpack("<I", _recv_exact(sock, 4, start))
    deadline = time.monotonic() + seconds
    if n > MAX_HEADER:
        raise FrameError(f"a frame header of {n} bytes (at most {MAX_HEADER})")
    try:
        header = json.loads(_recv_exact(sock, n, deadline))
    except (UnicodeDecodeError, ValueError) as e:
        raise FrameError(f"a frame header that is not JSON ({e})") from None
    arrays = []
    for dtype, shape, size in _layout(header, limit):
        raw = _recv_exact(sock, size, deadline) if size else bytearray()
        arrays.append(np.frombuffer(raw, dtype=dtype).reshape(shape))
    sock.settimeout(None)
    return header, arrays
