"""The decode thread runs torch on one thread without touching the encoder's thread count
(faiss's thread setting never reached torch there: see ``one_torch_thread_here``)."""

from __future__ import annotations

import torch

from indexer.pipeline import Item, _thread_batches


class _Recorder:
    """A dataset whose items record torch's thread count in the thread that makes them."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.seen: list[int] = []

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[Item, None]:
        self.seen.append(torch.get_num_threads())
        return Item(i, reason="corrupt"), None


def test_the_decode_thread_uses_one_torch_thread_and_leaves_the_callers() -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        data = _Recorder(6)
        batches = list(_thread_batches(data, batch_size=2, prefetch=1))  # type: ignore[arg-type]
        assert len(batches) == 3
        assert data.seen == [1] * 6
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
