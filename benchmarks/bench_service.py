"""Text→image search throughput and latency of a served index, with dynamic batching on and off.

Builds an index of ``--n`` random unit vectors (written straight into the catalog: embedding 100k
images would measure the indexer, not the service), serves it with ``clipsearch serve`` in a
subprocess, and drives it with an asyncio load generator in this process (a minimal keep-alive
HTTP/1.1 client): ``c`` closed-loop clients, each sending its next query when the last one is
answered. Every request is a distinct
text, so the encoder runs for each one.

    python benchmarks/bench_service.py --n 100000 --append docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Search service (issue 4)"
HEADER = (
    "| batching | concurrency | QPS | p50 ms | p99 ms | batch | encode ms | search ms "
    "| requests | errors |"
)
WORDS = (
    "red",
    "green",
    "blue",
    "yellow",
    "purple",
    "orange",
    "white",
    "black",
    "dog",
    "cat",
    "horse",
    "bird",
    "child",
    "man",
    "woman",
    "boat",
    "car",
    "bicycle",
    "beach",
    "mountain",
    "street",
    "park",
    "snow",
    "water",
    "grass",
    "running",
    "jumping",
    "sitting",
    "playing",
    "sunny",
    "dark",
    "small",
    "large",
    "old",
    "young",
    "two",
    "three",
)


def build_index(directory: Path, n: int, model: str, pretrained: str, seed: int = 0) -> None:
    """An index with ``n`` random unit image vectors (fake paths), its FAISS checkpoint written."""
    from indexer import Index

    index = Index.create(directory, model=model, pretrained=pretrained, device="cpu")
    dim = index.dim
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    with index.catalog.write() as w:
        for start in range(0, n, 10_000):
            block = rng.standard_normal((min(10_000, n - start), dim)).astype(np.float32)
            block /= np.linalg.norm(block, axis=1, keepdims=True)
            for i, vec in enumerate(block, start):
                name = f"/bench/images/{i:07d}.jpg"
                sha = hashlib.sha256(name.encode()).hexdigest()
                w.put_image(name, 100_000, 0, sha, 640, 480, vec)
    index.rebuild()  # builds the FAISS index from the catalog and checkpoints it
    index.close()
    print(
        f"indexed {n} random vectors of dim {dim} in {time.perf_counter() - t0:.1f} s", flush=True
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(
    directory: Path, batching: bool, env: dict[str, str]
) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "app.cli",
            "serve",
            "--index",
            str(directory),
            "--port",
            str(port),
            "--batching" if batching else "--no-batching",
            "--reload-interval",
            "0",
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise RuntimeError("server not ready in 180 s")


def queries(seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=rng.integers(3, 9))) for _ in range(20_000)]


class Connection:
    """A minimal keep-alive HTTP/1.1 client on asyncio streams. httpx's pool costs more CPU per
    request than the server's own work at high concurrency (measured: /healthz at 32 clients
    gives ~220 QPS through httpx, ~4,400 through this), and the generator shares the cores."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str):
        self.reader, self.writer, self.host = reader, writer, host

    @classmethod
    async def open(cls, base: str) -> Connection:
        url = urlsplit(base)
        reader, writer = await asyncio.open_connection(url.hostname, url.port)
        return cls(reader, writer, url.netloc)

    async def post_json(self, path: str, body: bytes) -> tuple[int, bytes]:
        self.writer.write(
            f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        status = int((await self.reader.readline()).split()[1])
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


async def load(base: str, concurrency: int, duration: float, warmup: float, k: int) -> dict:
    """``concurrency`` closed-loop clients for ``warmup`` + ``duration`` seconds."""
    texts = queries(concurrency)
    latencies: list[float] = []
    errors = 0
    counter = 0
    start = time.perf_counter()
    measure_from = start + warmup
    stop_at = measure_from + duration

    async def worker() -> None:
        nonlocal errors, counter
        conn = await Connection.open(base)
        try:
            while (t0 := time.perf_counter()) < stop_at:
                counter += 1
                body = json.dumps({"query": texts[counter % len(texts)], "k": k}).encode()
                status, _ = await conn.post_json("/v1/search/text", body)
                t1 = time.perf_counter()
                if t0 >= measure_from:
                    if status == 200:
                        latencies.append(t1 - t0)
                    else:
                        errors += 1
        finally:
            conn.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - measure_from
    lat = np.asarray(latencies) * 1000
    return {
        "qps": len(latencies) / elapsed,
        "p50": float(np.percentile(lat, 50)) if len(lat) else float("nan"),
        "p99": float(np.percentile(lat, 99)) if len(lat) else float("nan"),
        "n": len(latencies),
        "errors": errors,
    }


def server_stats(base: str) -> dict[str, float]:
    """Sums and counts of the server's batch-size, encode-time and search-time histograms."""
    samples = {}
    for line in httpx.get(f"{base}/metrics").text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    out = {}
    for key, metric, labels in (
        ("batch", "clipsearch_text_batch_size", ""),
        ("encode", "clipsearch_encode_seconds", '{modality="text"}'),
        ("search", "clipsearch_search_seconds", '{target="images"}'),
    ):
        for part in ("sum", "count"):
            out[f"{key}_{part}"] = samples.get(f"{metric}_{part}{labels}", 0.0)
    return out


def run(args: argparse.Namespace) -> list[dict]:
    directory = args.index or Path(tempfile.mkdtemp(prefix="bench-service-")) / "index"
    if not (directory / "manifest.json").exists():
        build_index(directory, args.n, args.model, args.pretrained)
    env = {
        "CLIPSEARCH_BATCH_WINDOW_MS": str(args.window_ms),
        "CLIPSEARCH_MAX_BATCH": str(args.max_batch),
    }
    if args.threads:
        env["CLIPSEARCH_TORCH_THREADS"] = str(args.threads)
    servers: dict[bool, tuple[subprocess.Popen, str]] = {}
    rows = []
    try:
        # Both servers stay up (an idle one costs no CPU) and the two modes alternate at each
        # concurrency, so background load on a shared machine hits both alike.
        for batching in (True, False):
            servers[batching] = start_server(directory, batching, env)
            asyncio.run(load(servers[batching][1], 4, 2.0, 0.0, args.k))  # warm-up
        info = httpx.get(f"{servers[True][1]}/v1/index").json()
        args.index_type = info["stats"]["index_type"]
        args.threads_used = info["service"]["inference_threads"]
        for c in args.concurrency:
            for batching in (True, False):
                result = measure(servers[batching][1], c, args)
                result.update(batching=batching, concurrency=c)
                rows.append(result)
                print(format_row(result), flush=True)
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(timeout=30)
        if args.index is None:
            shutil.rmtree(directory.parent, ignore_errors=True)
    rows.sort(key=lambda r: (not r["batching"], r["concurrency"]))
    return rows


def measure(base: str, concurrency: int, args: argparse.Namespace) -> dict:
    """One load run, plus what the server's metrics say it spent per encoder and FAISS call."""
    before = server_stats(base)
    result = asyncio.run(load(base, concurrency, args.duration, args.warmup, args.k))
    after = server_stats(base)
    d = {key: after[key] - before[key] for key in after}
    result["mean_batch"] = d["batch_sum"] / max(d["batch_count"], 1)
    result["encode_ms"] = 1000 * d["encode_sum"] / max(d["encode_count"], 1)
    result["search_ms"] = 1000 * d["search_sum"] / max(d["search_count"], 1)
    return result


def format_row(r: dict) -> str:
    return (
        f"| {'on' if r['batching'] else 'off'} | {r['concurrency']} | {r['qps']:.0f} | "
        f"{r['p50']:.1f} | {r['p99']:.1f} | {r['mean_batch']:.1f} | {r['encode_ms']:.1f} | "
        f"{r['search_ms']:.1f} | {r['n']} | {r['errors']} |"
    )


def table(rows: list[dict], args: argparse.Namespace, command: str) -> str:
    cpu = platform.processor() or platform.machine()
    lines = [
        SECTION,
        "",
        f"Text→image search over HTTP against a served index of {args.n:,} vectors "
        f"(model `{args.model}`, pretrained `{args.pretrained}`; FAISS `{args.index_type}`, chosen "
        f"by `auto`), k={args.k}, {args.threads_used} inference thread(s)"
        f" ({'set' if args.threads else 'the default: cores less one'}); "
        f"{os.cpu_count()} CPU cores ({cpu}), load generator in the same script and "
        f"on the same cores. Each point: {args.warmup:g} s warm-up, then {args.duration:g} s "
        f"measured, the two modes alternating at each concurrency; closed-loop clients, every "
        f"query a distinct text. Batching on: window "
        f"{args.window_ms:g} ms, max batch {args.max_batch}; off: one query per encoder and "
        "FAISS call. `batch` is the mean number of queries per encoder call; `encode ms` and "
        "`search ms` are the server's mean time per encoder call and per FAISS call (from "
        "/metrics), the rest of the latency is queueing, HTTP and JSON. FAISS multiplies a "
        "batch's queries in one BLAS call (the server lowers FAISS's BLAS threshold, see "
        "`_tune_faiss` in app/service.py)." + (f" {args.note}" if args.note else ""),
        "",
        "```",
        command,
        "```",
        "",
        HEADER,
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        *(format_row(r) for r in rows),
        "",
    ]
    return "\n".join(lines)


def append_section(path: Path, text: str) -> None:
    """Replace this script's section of ``path`` (or add it), leaving the others as they are."""
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    start = old.find(SECTION)
    if start >= 0:
        nxt = old.find("\n## ", start + len(SECTION))
        old = old[:start].rstrip("\n") + ("\n\n" + old[nxt + 1 :] if nxt >= 0 else "")
    path.write_text(old.rstrip("\n") + "\n\n" + text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=100_000, help="vectors in the served index")
    p.add_argument("--model", default="clipsearch-flickr8k")
    p.add_argument("--pretrained", default="none")
    p.add_argument("--index", type=Path, help="reuse (or keep) the index in this directory")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--window-ms", type=float, default=2.0)
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--threads", type=int, help="CLIPSEARCH_TORCH_THREADS for the server")
    p.add_argument("--append", type=Path, help="write the table under its section of this file")
    p.add_argument("--note", default="", help="a sentence on the conditions, added to the text")
    args = p.parse_args()
    command = shlex.join(["python", Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    print(HEADER)
    rows = run(args)
    text = table(rows, args, command)
    print()
    print(text)
    if args.append:
        append_section(args.append, text)
        print(f"written to {args.append}")


if __name__ == "__main__":
    main()
