"""The file operations of core.fs for a Spark Connect client, which has no JVM of its own and may not
see the cluster's files at all (a laptop far from it): each operation runs in one Spark task, through
pyarrow.fs, and sends back a JSON answer. Local paths (file: or none) are the cluster's local disks;
hdfs:, s3:/s3a: and gs: go to pyarrow's file systems (hdfs needs libhdfs on the executors); other
schemes get an OSError that says so.

A classic session keeps core.fs's Hadoop FileSystem calls: they cost no Spark job.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from typing import Any, Callable
from urllib.parse import unquote, urlparse

import pyarrow as pa
from pyarrow import fs as pafs

from mf_spark.core.session import on_cluster


def resolve(path: str) -> tuple[pafs.FileSystem, str, bool]:
    """(file system, path on it, whether it is the local disk) for a Hadoop-style path."""
    parsed = urlparse(path)
    if parsed.scheme in ("", "file"):
        return pafs.LocalFileSystem(), os.path.abspath(unquote(parsed.path) if parsed.scheme else path), True
    uri = "s3" + path[3:] if parsed.scheme == "s3a" else path
    try:
        fsys, inner = pafs.FileSystem.from_uri(uri)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
        raise OSError(
            f"{path}: on a Spark Connect session mf_spark reaches files from a task through pyarrow.fs, "
            f"which cannot open {parsed.scheme}: paths ({exc}); use a classic session for this location"
        ) from None
    return fsys, inner, False


def _info(path: str) -> tuple[pafs.FileSystem, str, bool, pafs.FileInfo]:
    fsys, inner, local = resolve(path)
    return fsys, inner, local, fsys.get_file_info(inner)


def _qualify(path: str) -> str:
    fsys, inner, local = resolve(path)
    return f"file:{inner}" if local else path


def _exists(path: str) -> bool:
    return _info(path)[3].type != pafs.FileType.NotFound


def _is_dir(path: str) -> bool:
    return _info(path)[3].type == pafs.FileType.Directory


def _delete(path: str) -> None:
    fsys, inner, _, info = _info(path)
    if info.type == pafs.FileType.Directory:
        fsys.delete_dir(inner)
    elif info.type != pafs.FileType.NotFound:
        fsys.delete_file(inner)


def _mkdirs(path: str) -> None:
    fsys, inner, _ = resolve(path)
    fsys.create_dir(inner, recursive=True)


def _rename(src: str, dst: str) -> bool:
    fsys, s, _, info = _info(src)
    _, d, _, target = _info(dst)
    if info.type == pafs.FileType.NotFound or target.type != pafs.FileType.NotFound:
        return False
    fsys.move(s, d)
    return True


def _list_names(path: str) -> list[str]:
    fsys, inner, _, info = _info(path)
    if info.type != pafs.FileType.Directory:
        return []
    return sorted(i.base_name for i in fsys.get_file_info(pafs.FileSelector(inner)))


def _data_files(path: str) -> list[tuple[str, int, int]]:
    fsys, inner, local, info = _info(path)
    if info.type == pafs.FileType.File:
        found = [info]
    else:
        found = [i for i in fsys.get_file_info(pafs.FileSelector(inner, recursive=True)) if i.is_file]
    out = []
    for i in found:
        rel = i.path[len(inner) :]
        if any(part.startswith((".", "_")) and "=" not in part for part in rel.split("/") if part):
            continue
        name = f"file:{i.path}" if local else f"{urlparse(path).scheme}://{i.path}"
        out.append((name, int(i.size), int(i.mtime_ns // 1_000_000)))
    return sorted(out)


def _create_new(path: str, text: str = "") -> bool:
    fsys, inner, local, info = _info(path)
    data = text.encode("utf-8")
    if local:  # link(2) refuses an existing name: exactly one of several callers wins
        os.makedirs(os.path.dirname(inner), exist_ok=True)
        private = f"{inner}.{uuid.uuid4().hex}.tmp"
        with open(private, "wb") as fh:
            fh.write(data)
        try:
            os.link(private, inner)
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(private)
    if info.type != pafs.FileType.NotFound:
        return False
    with fsys.open_output_stream(inner) as out:
        out.write(data)
    return True


def _age_seconds(path: str) -> float | None:
    info = _info(path)[3]
    if info.type == pafs.FileType.NotFound:
        return None
    return time.time() - info.mtime_ns / 1e9


def _write(path: str, data: bytes) -> None:
    """Create or replace a file; on a local disk atomically (a private file renamed into place)."""
    fsys, inner, local = resolve(path)
    parent = _parent(inner)
    if parent:
        fsys.create_dir(parent, recursive=True)
    if local:
        private = f"{inner}.{uuid.uuid4().hex}.tmp"
        with open(private, "wb") as fh:
            fh.write(data)
        os.replace(private, inner)
        return
    with fsys.open_output_stream(inner) as out:
        out.write(data)


def _read_text(path: str) -> str:
    fsys, inner, _ = resolve(path)
    with fsys.open_input_stream(inner) as src:
        return src.read().decode("utf-8")


def sha256_of(local: str) -> str:
    """SHA-256 of a local file's bytes, hex."""
    h = hashlib.sha256()
    with open(local, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _checksum(path: str) -> str:
    fsys, inner, local = resolve(path)
    if local:
        return sha256_of(inner)
    h = hashlib.sha256()
    with fsys.open_input_stream(inner) as src:
        for block in iter(lambda: src.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _parent(path: str) -> str:
    return path.rsplit("/", 1)[0] if "/" in path.strip("/") else ""


OPS: dict[str, Callable[..., Any]] = {
    "qualify": _qualify,
    "exists": _exists,
    "is_dir": _is_dir,
    "delete": _delete,
    "mkdirs": _mkdirs,
    "rename": _rename,
    "list_names": _list_names,
    "data_files": _data_files,
    "create_new": _create_new,
    "age_seconds": _age_seconds,
    "write_text": lambda path, text: _write(path, text.encode("utf-8")),
    "write_bytes": _write,
    "read_text": _read_text,
    "checksum": _checksum,
}


def run(spark, op: str, *args: Any, data: bytes | memoryview | None = None) -> Any:
    """`op`(*args) run in one task of `spark`'s cluster; `data` (a file's contents) goes with it."""
    return on_cluster(spark, OPS[op], *args, data=data)
