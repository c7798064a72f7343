"""``backend="chunked"`` drafter soft cross-entropy (CONTRACT §7): row chunks, gradient computed in forward.

Per chunk of rows (float32 math; float64 for float64 inputs): ``logp = log_softmax(draft)`` and
``q = softmax(target)`` are computed once, the row loss is ``-<q, logp>``, and the gradient ``scale_k * (exp(logp) - q)`` is written
straight into a buffer of the draft dtype that ``forward`` saves. ``backward`` only multiplies that
buffer by the (scalar) incoming gradient, as Liger's fused linear cross-entropy does. The chunk's
float32 temporaries stay small (about ``_CHUNK_ELEMS`` elements), so peak memory is the gradient
buffer plus a few cache-sized blocks, instead of the reference's several ``[R, V]`` float32 tensors.
With ``torch.get_num_threads() > 1`` the chunks are shared among that many Python threads, each
running single-threaded torch ops (see ``_forward``).
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch

from .reference import GradientInForward, zero_where_unsupported

__all__ = ["soft_cross_entropy_chunked", "ChunkedSoftCrossEntropyFunction"]

# float32 elements per chunk and temporary: 2**18 elements = 1 MiB, a few of them fit in L2.
_CHUNK_ELEMS = 1 << 18


def _row_tasks(live, step):
    """Split the sorted live rows into runs of consecutive rows, at most ``step`` rows each."""
    tasks = []
    i, n = 0, len(live)
    while i < n:
        j = i + 1
        while j < n and j - i < step and live[j] == live[j - 1] + 1:
            j += 1
        tasks.append((live[i], live[j - 1] + 1))
        i = j
    return tasks


def _run_tasks(tasks, draft, target, scale, grad, acc):
    loss = torch.zeros((), dtype=acc, device=draft.device)
    for r0, r1 in tasks:
        s = scale[r0:r1].to(acc)
        logp = torch.log_softmax(draft[r0:r1].to(acc), dim=-1)
        q = torch.softmax(target[r0:r1].to(acc), dim=-1)
        loss = loss - (s * torch.linalg.vecdot(q, zero_where_unsupported(logp, q))).sum()
        if grad.dtype == acc:
            torch.exp(logp, out=grad[r0:r1])
            grad[r0:r1].sub_(q).mul_(s[:, None])
        else:
            grad[r0:r1].copy_(logp.exp_().sub_(q).mul_(s[:, None]))
    return loss


def _forward(draft, target, scale, chunk_elems, num_workers=None):
    rows, v = draft.shape
    live = torch.nonzero(scale != 0).flatten().tolist()  # rows that count (never read the rest)
    alloc = torch.empty if len(live) == rows else torch.zeros
    grad = alloc((rows, v), dtype=draft.dtype, device=draft.device)
    acc = torch.float64 if draft.dtype == torch.float64 else torch.float32
    if not live:
        return torch.zeros((), dtype=acc, device=draft.device), grad
    tasks = _row_tasks(live, max(1, chunk_elems // max(v, 1)))
    threads = torch.get_num_threads()
    workers = min(threads if num_workers is None else num_workers, len(tasks))
    if draft.device.type != "cpu":
        workers = 1  # (the CPU path on another device: plain chunk loop)
    if workers <= 1:
        return _run_tasks(tasks, draft, target, scale, grad, acc), grad
    # Row-parallel over Python threads, each running cache-sized single-threaded ops: with many
    # small chunks, letting every op open its own OpenMP team costs a barrier per op, which on a
    # loaded machine (threads descheduled) made this path 10x slower than the reference.
    # torch.set_num_threads(1) in a worker only sets that thread's OpenMP ICV plus a global default
    # that the main thread restores afterwards. Contiguous blocks of tasks per worker and a
    # fixed-order sum keep the loss deterministic.
    groups = [tasks[k * len(tasks) // workers:(k + 1) * len(tasks) // workers] for k in range(workers)]

    def work(group):
        torch.set_num_threads(1)
        with torch.no_grad():  # grad mode is thread-local: a new thread starts with it enabled
            return _run_tasks(group, draft, target, scale, grad, acc)

    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            parts = list(pool.map(work, groups))
    finally:
        torch.set_num_threads(threads)
    loss = parts[0]
    for part in parts[1:]:
        loss = loss + part
    return loss, grad


class ChunkedSoftCrossEntropyFunction(GradientInForward):
    """``sum_k scale_k * CE(softmax(target_k), log_softmax(draft_k))``; gradient wrt draft only."""

    @staticmethod
    def forward(ctx, draft, target, scale, chunk_elems=_CHUNK_ELEMS):
        loss, grad = _forward(draft, target.detach(), scale.detach().float(), int(chunk_elems))
        ctx.save_for_backward(grad)
        return loss


def soft_cross_entropy_chunked(
    draft: torch.Tensor, target: torch.Tensor, scale: torch.Tensor, chunk_elems: int = _CHUNK_ELEMS
) -> torch.Tensor:
    """``draft``, ``target``: ``[R, V]`` (any float dtype, rows contiguous); ``scale``: ``[R]``."""
    return ChunkedSoftCrossEntropyFunction.apply(draft, target, scale, chunk_elems)
