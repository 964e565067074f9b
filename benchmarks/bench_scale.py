"""Beyond one machine (issue 11): the embed engines side by side, and indexes built from shards.

    # (a) Ray vs the local pipeline on the same images, one run each
    python benchmarks/bench_scale.py engines --images ../shared/data/flickr8k/images --n 256
    # synthetic shards clustered like real embeddings (streamed to disk, any size)
    python benchmarks/bench_scale.py gen --n 10000000 --out /tmp/syn10m
    # (b) index them (on-disk IVF-PQ above --ondisk-threshold): RSS, time, p50 and recall per nprobe
    python benchmarks/bench_scale.py build --src /tmp/syn10m --index /tmp/idx10m
    # (c) 1M vectors around real Flickr8k image embeddings, queried with real held-out captions
    clipsearch embed ../shared/data/flickr8k/images --out /tmp/flickr-emb
    python benchmarks/bench_scale.py gen --n 1000000 --out /tmp/anc1m --anchors /tmp/flickr-emb
    python benchmarks/bench_scale.py build --src /tmp/anc1m --index /tmp/idx1m \
        --anchors /tmp/flickr-emb --ondisk-threshold 500000
    python benchmarks/bench_scale.py text-recall --src /tmp/anc1m --index /tmp/idx1m \
        --captions ../shared/data/flickr8k/captions.csv --split val

The synthetic vectors are a Gaussian mixture on the sphere: cluster sizes follow a Zipf law, each
cluster is a centre plus an anisotropic spread (its own decaying variances over the axes of a
random rotation), all around a shared mean direction (real CLIP embeddings sit in a cone). On
uniform random vectors IVF recall means nothing; here neighbours are clustered as in real data.
Their directions have nothing to do with any text tower, though, so text queries find in them
no neighbours the way they do among photos. ``--anchors`` draws the vectors around real image
embeddings instead (``Anchored``), so real captions have real neighbours: what (c) measures.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class Mixture:
    """The generator: ``sample(rng, n)`` draws ``n`` unit vectors of dimension ``dim``."""

    def __init__(self, dim: int, clusters: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        mean = rng.standard_normal(dim)
        mean /= np.linalg.norm(mean)
        centres = rng.standard_normal((clusters, dim)) / np.sqrt(dim)
        self.centres = (0.6 * mean + centres).astype(np.float32)
        # Anisotropic clusters: each has its own decaying spread over the axes of one shared
        # random rotation (a few directions carry most of a cluster's variance).
        self.rotation = np.linalg.qr(rng.standard_normal((dim, dim)))[0].astype(np.float32)
        spectrum = 0.5 / np.arange(1, dim + 1) ** 0.8
        self.spreads = np.stack([rng.permutation(spectrum) for _ in range(clusters)])
        self.spreads = self.spreads.astype(np.float32)
        weights = 1.0 / np.arange(1, clusters + 1) ** 0.7  # Zipf-like cluster sizes
        self.weights = weights / weights.sum()

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        out = np.empty((n, self.centres.shape[1]), np.float32)
        for start in range(0, n, 65_536):
            m = min(65_536, n - start)
            c = rng.choice(len(self.weights), size=m, p=self.weights)
            z = rng.standard_normal((m, self.centres.shape[1]), dtype=np.float32)
            x = self.centres[c] + (z * self.spreads[c]) @ self.rotation
            out[start : start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
        return out


class Anchored:
    """Vectors around real image embeddings (``anchors``): each is a real embedding moved toward a
    random mix of its ``k`` nearest real neighbours (by up to ``reach`` of the way), plus a small
    isotropic jitter, so the synthetic points fill the real embeddings' neighbourhoods, not
    directions no photo has. Their model's text tower then queries them as it queries photos."""

    def __init__(self, anchors: np.ndarray, k: int = 10, reach: float = 0.6) -> None:
        a = anchors / np.linalg.norm(anchors, axis=1, keepdims=True)
        self.anchors = a.astype(np.float32)
        sims = self.anchors @ self.anchors.T
        np.fill_diagonal(sims, -np.inf)
        self.neighbours = np.argpartition(-sims, k, axis=1)[:, :k]
        nearest = np.sqrt(np.maximum(0.0, 2 - 2 * sims.max(axis=1)))
        self.jitter = 0.15 * float(np.median(nearest))  # norm of the isotropic part
        self.k, self.reach = k, reach

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        out = np.empty((n, self.anchors.shape[1]), np.float32)
        d = self.anchors.shape[1]
        for start in range(0, n, 65_536):
            m = min(65_536, n - start)
            i = rng.integers(len(self.anchors), size=m)
            w = rng.dirichlet(np.ones(self.k), size=m) * rng.uniform(0, self.reach, (m, 1))
            toward = np.einsum("mk,mkd->md", w, self.anchors[self.neighbours[i]])
            x = self.anchors[i] * (1 - w.sum(axis=1, keepdims=True)) + toward
            x += rng.standard_normal((m, d)) * (self.jitter / np.sqrt(d))
            out[start : start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
        return out


def _read_anchors(src: Path) -> tuple[np.ndarray, dict]:
    """Every image vector of the embedding shards in ``src``, and their manifest (model, ...)."""
    from indexer import shards as sh

    manifest = sh.read_manifest(src)
    vectors = [
        np.asarray(sh.read_shard(src, sh.IMAGES, i, int(manifest["model"]["dim"])).vectors)
        for i in sh.finished(src, sh.IMAGES)
    ]
    return np.concatenate(vectors), manifest


def _provenance(model: str) -> tuple[dict, str]:
    from models.encoder import Encoder

    encoder = Encoder.load(model, None, "cpu")
    return encoder.provenance.to_dict(), repr(encoder.preprocess)


def gen(args: argparse.Namespace) -> None:
    """Write ``--n`` synthetic vectors as embedding shards, one shard in memory at a time."""
    from indexer import shards as sh

    if args.anchors:
        anchors, manifest = _read_anchors(args.anchors)
        model, preprocess = manifest["model"], manifest["preprocess"]
        mixture: Mixture | Anchored = Anchored(anchors)
        print(f"{len(anchors)} anchors from {model['model']}", flush=True)
    else:
        model, preprocess = _provenance(args.model)
        mixture = Mixture(int(model["dim"]), args.clusters)
    sh.open_for_writing(args.out, model, preprocess)
    start = sum(
        len(sh.read_shard(args.out, sh.IMAGES, i, int(model["dim"])).meta)
        for i in sh.finished(args.out, sh.IMAGES)
    )
    t0 = time.perf_counter()
    i = sh.next_shard(args.out, sh.IMAGES)
    while start < args.n:
        n = min(args.shard_size, args.n - start)
        vectors = mixture.sample(np.random.default_rng(1000 + i), n)
        paths = [f"/synthetic/{k // 1000:07d}/{k:09d}.jpg" for k in range(start, start + n)]
        rows = {
            "path": paths,
            "sha256": [f"{k:064x}" for k in range(start, start + n)],
            "size": [100_000] * n,
            "mtime_ns": [0] * n,
            "width": [640] * n,
            "height": [480] * n,
        }
        sh.write_shard(args.out, sh.IMAGES, i, vectors, rows)
        start += n
        i += 1
        print(f"{start} vectors in {time.perf_counter() - t0:.0f} s", flush=True)


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class AnonPeak:
    """Peak anonymous memory (``RssAnon``, sampled every 0.2 s): what the process allocated,
    without the file-backed pages of memory-mapped shards that the kernel can drop at will."""

    def __init__(self) -> None:
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("RssAnon:"):
                        self.peak_kib = max(self.peak_kib, int(line.split()[1]))

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak_kib / 1024


def _parts(src: Path) -> list:
    """Every image shard of ``src`` as an on-disk builder part whose ids are row numbers."""
    from indexer import ondisk
    from indexer import shards as sh

    parts, offset = [], 0
    for i in sh.finished(src, sh.IMAGES):
        vectors = np.load(sh.IMAGES.emb(src, i), mmap_mode="r")
        parts.append(ondisk.Part(f"shard-{i}", vectors, np.arange(offset, offset + len(vectors))))
        offset += len(vectors)
    return parts


def _exact(src: Path, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k row numbers over every shard of ``src`` (in shard order), streamed."""
    from indexer import ondisk

    parts = _parts(src)
    return ondisk._exact(parts, [np.ones(len(p.ids), bool) for p in parts], queries, k)


def _paths_to_rows(index, ids: np.ndarray) -> np.ndarray:
    """Catalog ids → the synthetic row numbers their paths encode."""
    rows = index.catalog.rows([int(i) for i in np.unique(ids[ids >= 0])])
    table = {i: int(Path(r.path).stem) for i, r in rows.items()}
    return np.vectorize(lambda i: table.get(int(i), -1))(ids)


def build(args: argparse.Namespace) -> None:
    """Build the index, then per nprobe: single-query p50 and recall@10 of held-out queries.

    ``--faiss-only`` builds the on-disk IVF-PQ straight from the shards (ids = row numbers),
    leaving out the catalog import (SQLite, measured separately at 1M)."""
    import faiss

    from indexer import Index, ondisk
    from indexer import faiss_index as fx
    from indexer.from_shards import index_from_embeddings

    t0 = time.perf_counter()
    anon = AnonPeak()
    index = None
    if args.faiss_only:
        parts = _parts(args.src)
        alive = np.arange(sum(len(p.ids) for p in parts))
        dim = parts[0].vectors.shape[1]
        args.index.mkdir(parents=True, exist_ok=True)
        state = ondisk.build(args.index, parts, alive, np.zeros((0, dim), np.float32), 1, 0.95)
        summary = f"on-disk {state.spec.factory()} over {state.ntotal} vectors"
    else:
        report = index_from_embeddings(args.src, args.index, ondisk_threshold=args.ondisk_threshold)
        index = Index.open(args.index, lazy=True)
        state = index._faiss.state("image")
        summary = report.summary()
    build_s = time.perf_counter() - t0
    rss, anon_mib = _peak_rss_mib(), anon.stop()
    print(
        f"{summary}; build {build_s:.0f} s, peak RSS {rss:.0f} MiB "
        f"(anonymous, without mapped shard pages: {anon_mib:.0f} MiB)",
        flush=True,
    )
    if args.anchors:
        mixture: Mixture | Anchored = Anchored(_read_anchors(args.anchors)[0])
    else:
        mixture = Mixture(int(state.index.d), args.clusters)
    queries = mixture.sample(np.random.default_rng(7), args.queries)  # not in the index
    t1 = time.perf_counter()
    truth = _exact(args.src, queries, 10)
    exact_s = time.perf_counter() - t1
    faiss.omp_set_num_threads(1)
    values = [v for v in args.nprobe if v <= state.spec.nlist] if state.spec.trained else [0]
    if args.faiss_only:
        lookup = ondisk._parts_lookup(parts, [np.ones(len(p.ids), bool) for p in parts])
    else:
        lookup = index.catalog_lookup("image")
    rows = []
    for value in values:
        row: list[float] = [value]
        for how in (None, lookup):  # the codes alone, then re-ranked as searches are
            lat, got = [], []
            for q in queries:
                s = time.perf_counter()
                _, ids = fx.search_reranked(
                    state.index, state.spec, value, q[None], 10, how, factor=state.rerank_factor
                )
                lat.append(time.perf_counter() - s)
                got.append(ids[0])
            got_rows = np.asarray(got) if index is None else _paths_to_rows(index, np.asarray(got))
            recall = fx.recall_at_k(got_rows, truth, np.full(len(queries), -1), 10)
            row += [round(float(np.median(lat)) * 1000, 3), round(recall, 4)]
        rows.append(row)
        line = f"nprobe {value}: codes {row[1]:.2f} ms, {row[2]:.3f}; re-ranked {row[3]:.2f} ms"
        print(f"{line}, {row[4]:.3f}", file=sys.stderr, flush=True)
    print(f"\n{state.spec.factory()} over {state.ntotal:,} vectors, {len(queries)} held-out "
          f"queries, one thread; re-ranked: {state.info.get('rerank')} "
          "re-scored with the float vectors\n")  # fmt: skip
    print("| nprobe | codes p50 ms | codes recall@10 | re-ranked p50 ms | re-ranked recall@10 |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r[0]} | {r[1]:.2f} | {r[2]:.3f} | {r[3]:.2f} | {r[4]:.3f} |")
    print(
        json.dumps(
            {
                "vectors": state.ntotal,
                "factory": state.spec.factory(),
                "ondisk": bool(state.info.get("ondisk")),
                "build_s": round(build_s, 1),
                "train_s": state.info.get("train_s"),
                "fill_s": state.info.get("fill_s"),
                "peak_rss_mib": round(rss),
                "peak_anon_mib": round(anon_mib),
                "index_recall@10": state.info.get("recall@10"),
                "index_nprobe": state.value,
                "exact_scan_s": round(exact_s, 1),
                "curve": rows,
            }
        )
    )
    if index is not None:
        index.close()


def _caption_queries(path: Path, split: str, n: int) -> list[str]:
    """``n`` captions of ``split`` drawn with a fixed seed (held-out human text)."""
    from models.data import read_pairs

    texts = [p.text for p in read_pairs(path, split=split, check_images=False)]
    pick = np.random.default_rng(0).choice(len(texts), size=min(n, len(texts)), replace=False)
    return [texts[i] for i in sorted(pick)]


def text_recall(args: argparse.Namespace) -> None:
    """Recall@10 of text queries searched as the service searches them, against exact search."""
    from indexer import Index
    from indexer import faiss_index as fx

    if args.captions:
        texts = _caption_queries(args.captions, args.split, args.queries)
        source = f"{args.split} captions of {args.captions.name}"
    else:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from bench_service import queries as service_queries

        texts = service_queries(1)[: args.queries]
        source = "random word strings"
    index = Index.open(args.index)
    vectors = index.encoder.encode_texts(texts)
    truth = _exact(args.src, vectors, 10)
    hits = index.search_vectors(vectors, 10)
    got = np.array([[int(Path(h.path).stem) for h in row] + [-1] * (10 - len(row)) for row in hits])
    none = np.full(len(texts), -1)
    recall = fx.recall_at_k(got, truth, none, 10)
    state = index._faiss.state("image")
    print(
        f"text queries: {len(texts)} ({source}), index {state.spec.factory()} nprobe "
        f"{state.value}, {state.info.get('rerank')} (tuned; {state.info.get('recall@10_by_query')} "
        "on its held-out queries): "
        f"recall@10 {recall:.3f}"
    )
    lookup = index.catalog_lookup("image")
    for value in (v for v in args.nprobe if v <= state.spec.nlist):
        _, ids = fx.search_reranked(
            state.index, state.spec, value, vectors, 10, lookup, factor=state.rerank_factor
        )
        rows = _paths_to_rows(index, ids)
        print(f"  nprobe {value}: recall@10 {fx.recall_at_k(rows, truth, none, 10):.3f}")
    index.close()


def _embed_process(engine: str, subset: Path, out: Path, args: argparse.Namespace) -> dict:
    """One ``clipsearch embed`` in a process of its own, as a user runs it: its report and wall
    time, start-up (imports, model load, a Ray cluster) included."""
    cmd = [sys.executable, "-m", "app.cli", "embed", str(subset), "--out", str(out)]
    cmd += ["--engine", engine, "--model", args.model, "--precision", args.precision]
    cmd += ["--batch-size", str(args.batch_size), "--json"]
    if engine == "ray":
        cmd += ["--actor-threads", str(args.actor_threads), "--pool-size", str(args.pool_size)]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{engine} run failed ({done.returncode}): {done.stderr[-2000:]}")
    return {"report": json.loads(done.stdout), "wall": wall}


def engines(args: argparse.Namespace) -> None:
    """``clipsearch embed`` on the same images with each engine, each run a fresh process;
    ``--repeats`` pairs, the order alternating (local first, then Ray first), so drift on a shared
    machine hits both alike."""
    from indexer.scan import scan

    files = [f.path for f in scan([args.images]).files if f.reason is None][: args.n]
    work = Path(tempfile.mkdtemp(prefix="bench-engines-"))
    subset = work / "images"
    subset.mkdir()
    for k, p in enumerate(files):
        (subset / f"{k:06d}{Path(p).suffix}").symlink_to(p)
    ratios = []
    try:
        for r in range(args.repeats):
            walls = {}
            for engine in ("local", "ray") if r % 2 == 0 else ("ray", "local"):
                out = work / f"{engine}-{r}"
                run = _embed_process(engine, subset, out, args)
                walls[engine] = run["wall"]
                shutil.rmtree(out, ignore_errors=True)
                report = {k: v for k, v in run["report"].items() if not isinstance(v, list | dict)}
                print(f"{engine}: {report}; {run['wall']:.1f} s wall", flush=True)
            ratios.append(walls["ray"] / walls["local"])
            print(f"ray / local wall time: {ratios[-1]:.2f} ({len(files)} images)", flush=True)
        if len(ratios) > 1:
            print(f"ray / local over {len(ratios)} pairs: median {np.median(ratios):.2f}, "
                  f"each {', '.join(f'{x:.2f}' for x in ratios)}")  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("gen")
    g.add_argument("--n", type=int, required=True)
    g.add_argument("--out", type=Path, required=True)
    g.add_argument("--shard-size", type=int, default=250_000)
    for q in (g, b := sub.add_parser("build")):
        q.add_argument("--clusters", type=int, default=4096)
    g.add_argument("--model", default="clipsearch-flickr8k")
    for q in (g, b):
        q.add_argument("--anchors", type=Path, help="real image embeddings (shards) to draw around")
    b.add_argument("--src", type=Path, required=True)
    b.add_argument("--index", type=Path, required=True)
    b.add_argument("--ondisk-threshold", type=int, default=2_000_000)
    b.add_argument("--faiss-only", action="store_true", help="no catalog: the on-disk FAISS build")
    b.add_argument("--queries", type=int, default=200)
    b.add_argument("--nprobe", type=int, nargs="+", default=[1, 4, 16, 32, 64, 128, 256])
    t = sub.add_parser("text-recall")
    t.add_argument("--src", type=Path, required=True)
    t.add_argument("--index", type=Path, required=True)
    t.add_argument("--queries", type=int, default=200)
    t.add_argument("--captions", type=Path, help="a captions CSV: its captions are the queries")
    t.add_argument("--split", default="val")
    t.add_argument("--nprobe", type=int, nargs="*", default=[], help="also recall at these")
    e = sub.add_parser("engines")
    e.add_argument("--images", type=Path, required=True)
    e.add_argument("--n", type=int, default=256)
    e.add_argument("--model", default="clipsearch-flickr8k")
    e.add_argument("--precision", default="fp32")
    e.add_argument("--batch-size", type=int, default=32)
    e.add_argument("--actor-threads", type=int, default=2)
    e.add_argument("--pool-size", type=int, default=1, help="Ray: encoder actors")
    e.add_argument("--repeats", type=int, default=1, help="pairs of runs, alternating order")
    args = p.parse_args()
    {"gen": gen, "build": build, "text-recall": text_recall, "engines": engines}[args.command](args)


if __name__ == "__main__":
    main()
