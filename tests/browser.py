"""Real headless Chromium for the report tests: found, installed where missing, run offline, and the
PNG it screenshots decoded without PIL.

`chromium()` returns Debian's /usr/bin/chromium. Where it is missing it waits for an install already
running (.ci/run starts one in the background, before the tests), else installs it with apt-get
(root only), one pytest-xdist worker at a time; it calls pytest.skip, giving the reason, when neither
works. `run()` gives every call a fresh profile and the flags that keep Chromium off the network: the
machine's network is closed, and without them Chromium waits on connections that never come.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import struct
import subprocess
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

INSTALL_TIMEOUT = 300.0
RUN_TIMEOUT = 120.0
LOCK = Path(tempfile.gettempdir()) / "mf_spark-chromium-install.lock"
PACKAGE_TOOLS = {"apt", "apt-get", "dpkg", "unattended-upgr"}  # /proc/<pid>/comm is 15 chars at most
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--disable-extensions",
    "--no-default-browser-check",
    "--hide-scrollbars",
)


def _found() -> str | None:
    return shutil.which("chromium") or ("/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None)


def _installing() -> bool:
    """Whether an apt or dpkg process runs (an install under way, e.g. the one .ci/run starts)."""
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            if comm.read_text().strip() in PACKAGE_TOOLS:
                return True
        except OSError:  # the process ended while we looked
            continue
    return False


def _wait_for_install(deadline: float) -> None:
    while _installing() and time.monotonic() < deadline:
        time.sleep(2.0)


def _apt(args: list[str], deadline: float) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(
            ["apt-get", *args],
            capture_output=True,
            text=True,
            timeout=max(1.0, deadline - time.monotonic()),
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
    except subprocess.TimeoutExpired:
        return None


def _install(deadline: float) -> str:
    """Install chromium (the package lists first only when the plain install fails); '' when it
    worked, else why not."""
    install = ["install", "-y", "--no-install-recommends", "chromium"]
    got = _apt(install, deadline)
    if got is not None and got.returncode != 0:
        _apt(["update"], deadline)
        got = _apt(install, deadline)
    if got is None:
        return f"timed out after {INSTALL_TIMEOUT:.0f} s"
    return "" if got.returncode == 0 else f"exit {got.returncode}: {(got.stderr or got.stdout)[-600:].strip()}"


def chromium() -> str:
    """Path of the chromium binary, installed first where missing; pytest.skip when it cannot be."""
    deadline = time.monotonic() + INSTALL_TIMEOUT
    _wait_for_install(deadline)
    if (path := _found()) is not None:
        return path
    if os.geteuid() != 0:
        pytest.skip("Chromium is not installed and cannot be: not root")
    if shutil.which("apt-get") is None:
        pytest.skip("Chromium is not installed and cannot be: no apt-get")
    with open(LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another worker installing: wait for it, then look again
        _wait_for_install(deadline)
        why = "" if _found() else _install(deadline)
    if (path := _found()) is None:
        pytest.skip(f"Chromium is not installed and cannot be: install failed: {why}")
    return path


def run(url: str, *args: str, timeout: float = RUN_TIMEOUT) -> subprocess.CompletedProcess:
    """Chromium on `url` with a fresh profile, offline, and a timeout; raises on a non-zero exit."""
    with tempfile.TemporaryDirectory(prefix="mf_spark-chromium-") as profile:
        got = subprocess.run(
            [chromium(), *FLAGS, f"--user-data-dir={profile}", *args, url],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "HOME": profile},
        )
    if got.returncode != 0:
        raise AssertionError(f"chromium exited {got.returncode}: {got.stderr[-2000:]}")
    return got


def dump_dom(path: Path) -> str:
    """The DOM Chromium builds from the page, serialized."""
    return run(path.resolve().as_uri(), "--dump-dom").stdout


def screenshot(path: Path, png: Path, width: int = 1280, height: int = 4000) -> np.ndarray:
    """Screenshot of the page into `png`, returned decoded: (height, width, channels) uint8."""
    run(path.resolve().as_uri(), f"--screenshot={png}", f"--window-size={width},{height}")
    return decode_png(png.read_bytes())


def decode_png(data: bytes) -> np.ndarray:
    """(height, width, channels) uint8 pixels of an 8-bit grey, RGB or RGBA non-interlaced PNG."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    pos, idat, header = 8, [], None
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + n]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        pos += 12 + n
    width, height, depth, colour, _, _, interlace = header
    channels = {0: 1, 2: 3, 4: 2, 6: 4}.get(colour)
    if depth != 8 or channels is None or interlace:
        raise ValueError(f"unsupported PNG: depth {depth}, colour type {colour}, interlace {interlace}")
    raw = np.frombuffer(zlib.decompress(b"".join(idat)), np.uint8).reshape(height, 1 + width * channels)
    return _unfilter(raw, width, channels).reshape(height, width, channels)


def _unfilter(raw: np.ndarray, width: int, bpp: int) -> np.ndarray:
    """Undo the per-row PNG filters (RFC 2083 6.3): None, Up vectorized, Sub as a running sum per
    channel, Average and Paeth (each byte depends on the one decoded before it) in a loop."""
    out = np.zeros((raw.shape[0], width * bpp), np.uint8)
    prev = np.zeros(width * bpp, np.uint8)
    for y, row in enumerate(raw):
        kind, line = row[0], row[1:]
        if kind == 0:
            cur = line.copy()
        elif kind == 1:
            cur = (np.cumsum(line.reshape(width, bpp).astype(np.uint64), axis=0) % 256).astype(np.uint8).ravel()
        elif kind == 2:
            cur = line + prev
        elif kind in (3, 4):
            cur = _sequential(line, prev, bpp, kind)
        else:
            raise ValueError(f"bad PNG filter {kind} in row {y}")
        out[y] = prev = cur
    return out


def _sequential(line: np.ndarray, prev: np.ndarray, bpp: int, kind: int) -> np.ndarray:
    cur, up = bytearray(line.tobytes()), prev.tobytes()
    for j in range(len(cur)):
        a = cur[j - bpp] if j >= bpp else 0
        b = up[j]
        if kind == 3:
            cur[j] = (cur[j] + ((a + b) >> 1)) & 0xFF
            continue
        c = up[j - bpp] if j >= bpp else 0
        p = a + b - c
        pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
        cur[j] = (cur[j] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
    return np.frombuffer(bytes(cur), np.uint8)
