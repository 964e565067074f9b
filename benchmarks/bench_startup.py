"""Start-up: how long the command line takes, against the floor of ``python -c "import torch"``.

Each row is a fresh process, timed from start to exit (wall clock), ``--repeats`` times; the
table gives the median and the best. Rows:

- ``import torch``: what any command that touches the model pays at least.
- ``clipsearch --help`` and ``import app.client``: nothing heavy may load.
- ``clipsearch search "..." --local`` on an index of ``--n`` photos (built once with the shipped
  model), cold: with the index's exported text tower (no torch), and without it (the full encoder,
  as before issue 9).
- ``clipsearch search "..."`` while ``clipsearch serve`` runs for that index (the command finds
  the server's announcement and asks it).

    python benchmarks/bench_startup.py --images ../shared/data/flickr8k/images --n 1000
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUERIES = ("a dog running through the grass", "children playing in the water", "a red bicycle")


def _timed(args: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    took = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {proc.stderr[-2000:]}")
    return took


def _build(index: Path, images: Path, n: int) -> None:
    if (index / "manifest.json").is_file():
        return
    files = sorted(p for p in images.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if len(files) < n:
        raise SystemExit(f"{images} has {len(files)} images, fewer than --n {n}")
    from indexer import Index

    with Index.create(index, workers=0) as idx:
        report = idx.add_images(files[:n])
    print(f"built {index}: {report.summary()}", file=sys.stderr)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(port: int, timeout: float = 300.0) -> None:
    import http.client

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/readyz")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"server on port {port} not ready after {timeout} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=Path, default=ROOT.parent / "shared/data/flickr8k/images")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--index", type=Path, default=ROOT / "runs" / "bench-startup-index")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    _build(args.index, args.images, args.n)

    runtime = Path(tempfile.mkdtemp(prefix="clipsearch-bench-"))
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime), "PYTHONPATH": str(ROOT)}
    env.pop("CLIPSEARCH_URL", None)
    py, cli = sys.executable, [sys.executable, "-m", "app.cli"]
    idx = str(args.index)
    tower = args.index / "query-text.tower"
    hidden = args.index.parent / f".{args.index.name}.query-text.tower"

    def search(i: int, *extra: str) -> list[str]:
        return [*cli, "search", QUERIES[i % len(QUERIES)], "-i", idx, "-k", "10", *extra]

    rows: list[tuple[str, list[float]]] = []

    def measure(label: str, make: object) -> None:
        times = [_timed(make(i), env) for i in range(args.repeats)]  # type: ignore[operator]
        rows.append((label, times))
        print(f"{label}: {', '.join(f'{t:.2f}' for t in times)} s", file=sys.stderr)

    measure('python -c "import torch"', lambda i: [py, "-c", "import torch"])
    measure("clipsearch --help", lambda i: [*cli, "--help"])
    measure('python -c "import app.client"', lambda i: [py, "-c", "import app.client"])
    if not tower.is_file():
        raise SystemExit(f"{tower} is missing: the index's model has no exportable text tower")
    measure(
        f"clipsearch search (local, {args.n} images, text tower)", lambda i: search(i, "--local")
    )
    shutil.move(tower, hidden)
    try:
        label = f"clipsearch search (local, {args.n} images, full encoder)"
        measure(label, lambda i: search(i, "--local"))
    finally:
        shutil.move(hidden, tower)

    port = _free_port()
    server = subprocess.Popen(
        [*cli, "serve", "-i", idx, "--port", str(port), "--log-level", "warning"],
        cwd=ROOT,
        env=env,
    )
    try:
        _wait(port)
        _timed(search(0), env)  # the server's first query warms its encoder
        measure("clipsearch search (server up for the index)", lambda i: search(i))
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(runtime, ignore_errors=True)

    floor = statistics.median(rows[0][1])
    where = (
        f"{platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} cores"
    )
    print(f"\n{where}, {args.repeats} runs each, wall clock of a fresh process\n")
    print("| command | median s | best s | vs import torch |")
    print("| --- | --- | --- | --- |")
    for label, times in rows:
        median = statistics.median(times)
        print(f"| `{label}` | {median:.2f} | {min(times):.2f} | {median / floor:.2f}x |")


if __name__ == "__main__":
    main()
