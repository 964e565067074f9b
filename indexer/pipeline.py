"""Files → preprocessed tensors decoded alongside the encoder, so it does not wait on decoding.

Each file is read once and hashed; a hash that is already known skips the decode (the vector is
reused); otherwise it is decoded (JPEG draft mode to the model's input size) and put through the
model's own preprocessing. Failures come back as reasons, never as exceptions. Batches arrive in
order.

Two ways to decode in parallel with the encoder, chosen by ``default_workers``:

* worker processes (a DataLoader), when there are cores to spare beyond the encoder's threads
  (or the encoder is on a GPU): decoding then runs truly in parallel;
* one decode thread in this process (``workers=0``), when the encoder's threads already use every
  core: Pillow and torch release the GIL, so the thread fills the gaps the encoder leaves, with
  no inter-process copies. Measured on 2 cores (docs/benchmarks.md), processes competing with the
  encoder's OpenMP team cost ~10% of its speed; the thread costs only the decode time itself.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import multiprocessing
import os
import queue
import threading
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from indexer.decode import Item, decode_file

log = logging.getLogger(__name__)
PREFETCH = 4  # batches decoded ahead (per worker process)


@dataclass
class Batch:
    items: list[Item]
    tensor: torch.Tensor | None  # one row per item in ``rows``
    rows: list[int]  # positions within ``items`` of the decoded ones, in tensor order


def default_workers(encoder_on_cpu: bool = True) -> int:
    """Decode processes to start: the cores the encoder leaves free (at most 4), else 0 (a
    decode thread)."""
    cores = os.cpu_count() or 1
    spare = cores - torch.get_num_threads() if encoder_on_cpu else cores
    return max(0, min(4, spare))


class DecodeDataset(Dataset):
    def __init__(
        self,
        paths: Sequence[str],
        preprocess: Callable[[Image.Image], torch.Tensor],
        max_pixels: int,
        draft_size: int | None,
        known: Collection[int] = frozenset(),
    ) -> None:
        self.paths = list(paths)
        self.preprocess = preprocess
        self.max_pixels = max_pixels
        self.draft_size = draft_size
        self.known = known

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, pos: int) -> tuple[Item, torch.Tensor | None]:
        return decode_file(
            pos, self.paths[pos], self.preprocess, self.max_pixels, self.draft_size, self.known
        )


def collate(samples: list[tuple[Item, torch.Tensor | None]]) -> Batch:
    items = [s[0] for s in samples]
    rows = [i for i, s in enumerate(samples) if s[1] is not None]
    tensor = torch.stack([samples[i][1] for i in rows]) if rows else None
    return Batch(items, tensor, rows)


def _init_worker(max_pixels: int, nice: int, _worker_id: int) -> None:
    # Our own cap is checked from the header; lift PIL's so it never pre-empts a higher cap.
    if max_pixels > 2 * (Image.MAX_IMAGE_PIXELS or 0):
        Image.MAX_IMAGE_PIXELS = None
    if nice:
        # Decoding runs ahead (prefetch) and needs a fraction of a core; the encoder's OpenMP
        # threads stall as a team when any one of them is preempted, so they get the CPU first.
        with contextlib.suppress(OSError):
            os.nice(nice)


def one_torch_thread_here() -> None:
    """Run torch's parallel regions in the calling thread on one thread, leaving other threads'
    counts alone. ``faiss.omp_set_num_threads`` cannot do it: torch and faiss share one OpenMP
    runtime only when torch is loaded first (each bundles its own), and even then torch sets a
    thread's count itself on its first parallel op there, undoing an earlier setting (measured:
    faiss at 1 left torch at 2 in this thread). ``torch.set_num_threads`` would change the
    default of every thread started later. So this calls the per-thread ``omp_set_num_threads``
    of torch's own runtime, after torch has initialised this thread. A torch build without a
    bundled libgomp (another OpenMP, or none) is left as it is."""
    torch.get_num_threads()  # torch sets the thread's count on first use; ours must come after
    runtime = sorted(Path(torch.__file__).parent.glob("lib/libgomp*.so*"))
    if runtime:
        ctypes.CDLL(str(runtime[0])).omp_set_num_threads(1)


def _thread_batches(dataset: DecodeDataset, batch_size: int, prefetch: int) -> Iterator[Batch]:
    """Batches decoded by one background thread, ``prefetch`` batches ahead."""
    q: queue.Queue = queue.Queue(maxsize=prefetch)
    stop = threading.Event()
    done = object()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        # Small torch ops in the transforms must not start an OpenMP team next to the encoder's.
        one_torch_thread_here()
        try:
            for start in range(0, len(dataset), batch_size):
                stop_at = min(start + batch_size, len(dataset))
                if not put(collate([dataset[i] for i in range(start, stop_at)])):
                    return
            put(done)
        except BaseException as e:  # handed to the consumer, raised there
            put(e)

    thread = threading.Thread(target=produce, name="clipsearch-decode", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        thread.join(timeout=5)


def batches(
    dataset: DecodeDataset,
    batch_size: int,
    workers: int | None = None,
    mp_context: str | None = None,
    worker_nice: int = 0,
) -> Iterator[Batch]:
    """Batches of ``dataset`` in order, decoded by ``workers`` processes, or by one thread of this
    process when ``workers`` is 0 (None: ``default_workers()``).

    Jobs of one batch or less are decoded inline (starting anything would cost more). Worker
    processes are forked when this process has a single thread; otherwise (the service indexes
    from a request thread, and forking a process whose other threads hold locks is unsafe) they
    come from a fork server, which pays the imports once per process. ``worker_nice`` lowers the
    workers' priority (for a CPU encoder, which must not lose its cores to decoding).
    """
    workers = default_workers() if workers is None else max(0, int(workers))
    if len(dataset) <= batch_size:
        yield collate([dataset[i] for i in range(len(dataset))])
        return
    if workers == 0:
        yield from _thread_batches(dataset, batch_size, PREFETCH)
        return
    if mp_context is None:
        mp_context = "fork" if threading.active_count() == 1 else "forkserver"
    if mp_context == "forkserver":
        # The server imports torch and PIL once per process; every later run forks from it.
        multiprocessing.get_context("forkserver").set_forkserver_preload([__name__])
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate,
        prefetch_factor=PREFETCH,
        multiprocessing_context=mp_context,
        worker_init_fn=functools.partial(_init_worker, dataset.max_pixels, worker_nice),
    )
    yield from loader
