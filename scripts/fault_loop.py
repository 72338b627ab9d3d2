"""What a scheduler does to a training job, in a loop on one output folder: each round runs
`python -m jobs.train` and ends it at a random moment by SIGKILL or SIGTERM to its process group, or
fills the volume under it, then checks what a reader finds there and what the run left behind.

    python scripts/fault_loop.py [--rounds 30] [--ratings 200000] [--seed 0] [--doc docs/reliability.md]

The output lives on a small tmpfs mounted for the run (root only; without it the disk-full rounds are
left out and the output goes to a temporary folder). A first clean run publishes an output; then every
round, after its fault:
- a reader (`load_model`, as the recommend job and `--init-model` read) must load a complete model
  from the output (the new or the previous one, never a half of either);
- a SIGTERM'd run must exit 143 within 10 s with its own last line; a run on a full volume must exit 1
  naming the full disk; a killed one exits -9;
- nothing but the output, its checkpoints and (after a SIGKILL) a lease or staging folder may be left,
  and the next round's run must start without any clean-up by hand.
A last run with --resume must publish. Printed: counts per fault; --doc replaces the section of
docs/reliability.md this script writes.
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

ARGS = ["--set", "model.rank=16", "--set", "model.iterations=12", "--set", "model.checkpoint_interval=2"]
START, END = "<!-- fault_loop -->", "<!-- /fault_loop -->"


def _job(data: str, out: str, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable)
    return subprocess.Popen(
        [sys.executable, "-m", "jobs.train", "--input", data, "--output", out, *ARGS, *extra],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _last_line(err: str) -> str:
    lines = [line for line in err.splitlines() if " mf_spark: " in line]
    return lines[-1] if lines else ""


def _mount(folder: str, size: str) -> bool:
    os.makedirs(folder, exist_ok=True)
    return (
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", folder], capture_output=True).returncode
        == 0
    )


def _leftovers(parent: str) -> list[str]:
    """Names beside the output other than the output and its checkpoints."""
    return sorted(n for n in os.listdir(parent) if n not in ("out", ".out_checkpoint"))


def _readable(spark, out: str) -> bool:
    from mf_spark.model.factors import load_model

    try:
        model = load_model(out, spark)
        return model.factors.X.shape[0] > 0
    except Exception:  # noqa: BLE001 - counted, never raised
        return False


def _fill(volume: str, leave: int) -> str:
    """A file taking all but `leave` bytes of the volume."""
    st = os.statvfs(volume)
    path = os.path.join(volume, "filler")
    with open(path, "wb") as fh:
        fh.write(b"\0" * max(0, st.f_bavail * st.f_frsize - leave))
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--ratings", type=int, default=200_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--doc", help="markdown file whose fault_loop section this run replaces")
    args = p.parse_args(argv)
    rng = random.Random(args.seed)
    work = tempfile.mkdtemp(prefix="mf_spark-faults-")
    volume = os.path.join(work, "volume")
    mounted = _mount(volume, "256m")
    os.makedirs(volume, exist_ok=True)
    out = os.path.join(volume, "out")
    data = os.path.join(work, "ratings.parquet")
    subprocess.run(
        [sys.executable, os.path.join(HERE, "make_synthetic.py"), "--ratings", str(args.ratings), "--output", data],
        check=True,
        capture_output=True,
    )
    from pyspark.sql import SparkSession

    spark = SparkSession.builder.master("local[1]").config("spark.ui.enabled", "false").getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    try:
        t0 = time.perf_counter()
        first = _job(data, out)
        err = first.stderr.read()
        if first.wait() != 0:
            raise SystemExit(f"the clean run failed:\n{err[-3000:]}")
        whole = time.perf_counter() - t0
        kinds = ["kill", "term"] + (["full"] if mounted else [])
        for n in range(args.rounds):
            kind = kinds[n % len(kinds)]
            c = counts[kind]
            c["rounds"] += 1
            filler = None
            if kind == "full":
                filler = _fill(volume, rng.choice([64 << 10, 256 << 10, 1 << 20]))
            run = _job(data, out, "--resume")
            if kind != "full":
                time.sleep(rng.uniform(0.3, whole))
                if run.poll() is None:
                    os.killpg(run.pid, signal.SIGKILL if kind == "kill" else signal.SIGTERM)
                    sent = time.perf_counter()
                else:
                    c["finished before the signal"] += 1
                    sent = None
            err = run.stderr.read()
            code = run.wait()
            if filler:
                os.unlink(filler)
            c[f"exit {code}"] += 1
            last = _last_line(err)
            if kind == "term" and code == 143:
                c["stopped within 10 s" if sent and time.perf_counter() - sent < 10 else "stopped late"] += 1
                c["last line ours" if "stopped by SIGTERM" in last else "last line not ours"] += 1
            if kind == "full" and code == 1:
                c["last line names the full disk" if "no space left" in last else "last line other"] += 1
            c["reader found a complete model" if _readable(spark, out) else "reader found none"] += 1
            left = _leftovers(volume)
            if left:
                c["left a lease or staging folder (the next run clears it)"] += 1
            print(f"round {n + 1} {kind}: exit {code}, left {left}, last: {last[-120:]}", flush=True)
        final = _job(data, out, "--resume")
        err = final.stderr.read()
        counts["final --resume run"]["exit 0" if final.wait() == 0 else "failed"] += 1
        counts["final --resume run"]["nothing left beside the output" if not _leftovers(volume) else "leftovers"] += 1
    finally:
        spark.stop()
        if mounted:
            subprocess.run(["umount", volume], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    lines = [
        "### Faults in a loop",
        "",
        f"`python scripts/fault_loop.py {' '.join(argv if argv is not None else sys.argv[1:])}` "
        f"({args.rounds} rounds on {args.ratings:,} synthetic ratings, one output folder"
        f"{' on a 256 MB tmpfs' if mounted else ''}; a clean run took {whole:.1f} s)",
        "",
        "| fault | count |",
        "|---|---|",
    ]
    for kind, c in counts.items():
        lines += [f"| {kind}: {what} | {n} |" for what, n in c.items()]
    section = "\n".join(lines) + "\n"
    print("\n" + section)
    if args.doc:
        text = open(args.doc).read() if os.path.exists(args.doc) else "# Reliability\n\n"
        block = f"{START}\n{section}{END}\n"
        if START in text and END in text:
            text = text[: text.index(START)] + block + text[text.index(END) + len(END) + 1 :]
        else:
            text = text.rstrip("\n") + "\n\n" + block
        with open(args.doc, "w") as fh:
            fh.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
