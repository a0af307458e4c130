"""Large CPU buffers the scans reuse from one call to the next, instead of fresh pages each time.

glibc serves every allocation above its mmap threshold (32 MB at most) with new pages from the
kernel, and the first touch of each 4 KB page is a page fault. The Row LSTM wavefront's buffers
(about 1.7 GB per training step of the CIFAR-10 preset at batch 8) were faulted in again on
every step: 443,000 faults, about a quarter of the step (benchmarks/RESULTS.md). The scans take
their large buffers from this pool:

- `take(shape, dtype, like)`: an uninitialised buffer, a free one of that shape if there is one.
- `give(*buffers)`: back to the pool; the caller guarantees nothing else refers to them (the
  backward's own buffers, at its end).
- `views(buffer, key, build)`: views of a pooled buffer made once and kept with it (the
  wavefront's per-step views: at small sizes, making them was a large part of a step).
- `saved_to_pool()`: around a scan's `Function.apply`, so the buffers it saves for backward go
  back when autograd releases them (after the backward, or when the graph is freed; never while
  `retain_graph` keeps them). A buffer lent and never given back (no graph was recorded, an
  exception) is freed as usual when its last user drops it.

The pool keeps at most twice as many free bytes as were ever lent at once (a step's working
set, with room for buffers of another shape, such as an evaluation batch), dropping the
longest-free buffers first; `clear()` empties it. Only CPU buffers of at least
`MIN_BYTES` are pooled: elsewhere `take` is `torch.empty` (the CUDA caching allocator already
reuses memory) and `give` does nothing.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable
from contextlib import contextmanager
from typing import TypeVar

import torch
from torch import Tensor

MIN_BYTES = 1 << 20
T = TypeVar("T")

_lock = threading.RLock()  # reentrant: a buffer's release can run inside take (garbage collection)
_free: OrderedDict[int, Tensor] = OrderedDict()  # data_ptr -> buffer, longest-free first
# data_ptr -> buffer, weakly: a lent buffer its user drops (an exception, a forward without
# backward) is freed as usual, and its entry goes
_lent: dict[int, weakref.ref] = {}
_stats = {"free_bytes": 0, "peak_lent_bytes": 0, "allocated": 0, "reused": 0}


def _lent_bytes() -> int:
    """Bytes lent and still alive (stale entries are removed)."""
    for pointer in [p for p, ref in _lent.items() if ref() is None]:
        del _lent[pointer]
    return sum(t.nbytes for t in (ref() for ref in _lent.values()) if t is not None)


def take(shape: tuple[int, ...], dtype: torch.dtype, like: Tensor, small: bool = False) -> Tensor:
    """An uninitialised contiguous buffer of `shape` and `dtype` on `like`'s device; `small`:
    pooled under `MIN_BYTES` too (a buffer whose `views` the caller wants kept)."""
    nbytes = torch.Size(shape).numel() * dtype.itemsize
    if like.device.type != "cpu" or (nbytes < MIN_BYTES and not small):
        return torch.empty(shape, dtype=dtype, device=like.device)
    with _lock:
        found = next((p for p, t in _free.items() if t.shape == shape and t.dtype == dtype), None)
        if found is not None:
            buffer = _free.pop(found)
            _stats["free_bytes"] -= nbytes
            _stats["reused"] += 1
        else:
            buffer = torch.empty(shape, dtype=dtype)
            _stats["allocated"] += 1
        _lent[buffer.data_ptr()] = weakref.ref(buffer)
        _stats["peak_lent_bytes"] = max(_stats["peak_lent_bytes"], _lent_bytes())
    return buffer


def give(*buffers: Tensor) -> None:
    """Return buffers from `take` to the pool (others are ignored)."""
    with _lock:
        for buffer in buffers:
            ref = _lent.get(buffer.data_ptr())
            if ref is None or ref() is not buffer:
                continue
            del _lent[buffer.data_ptr()]
            _free[buffer.data_ptr()] = buffer
            _stats["free_bytes"] += buffer.nbytes
        while _stats["free_bytes"] > 2 * _stats["peak_lent_bytes"] and _free:
            _, dropped = _free.popitem(last=False)
            _stats["free_bytes"] -= dropped.nbytes


def views(buffer: Tensor, key: Hashable, build: Callable[[Tensor], T]) -> T:
    """`build(buffer)`, made once per pooled buffer and `key` and kept with the buffer (a scan's
    per-step views: a call that gets the same buffer again skips making them); made anew for a
    buffer that is not pooled.

    `build` gets a tensor on the buffer's memory that is not an autograd view of it, so the
    views kept on the buffer do not refer back to it (it is freed as soon as it is dropped).
    """
    ref = _lent.get(buffer.data_ptr())
    if ref is None or ref() is not buffer:
        return build(buffer)
    kept = buffer.__dict__.get("_pool_views")
    if kept is None:
        alias = buffer.new_empty(0).set_(
            buffer.untyped_storage(), buffer.storage_offset(), buffer.shape, buffer.stride()
        )
        kept = buffer.__dict__["_pool_views"] = {None: alias}
    made = kept.get(key)
    if made is None:
        made = kept[key] = build(kept[None])
    return made


def clear() -> None:
    """Drop every free buffer (lent ones stay with their users)."""
    with _lock:
        _free.clear()
        _stats["free_bytes"] = 0


def stats() -> dict[str, int]:
    """Bytes free and lent, the most lent at once, buffers allocated and reused so far."""
    with _lock:
        return {**_stats, "lent_bytes": _lent_bytes()}


class _Saved:
    """A lent buffer as autograd stores it for backward; back to the pool when released."""

    __slots__ = ("buffer",)

    def __init__(self, buffer: Tensor):
        self.buffer = buffer

    def __del__(self):
        give(self.buffer)


def _pack(tensor: Tensor):
    ref = _lent.get(tensor.data_ptr())
    lent = None if ref is None else ref()
    if lent is not None and lent.shape == tensor.shape and lent.stride() == tensor.stride():
        return _Saved(lent)
    return tensor


def _unpack(packed) -> Tensor:
    return packed.buffer if isinstance(packed, _Saved) else packed


@contextmanager
def saved_to_pool():
    """Tensors saved for backward inside this block that are lent buffers return to the pool
    when autograd releases them."""
    with torch.autograd.graph.saved_tensors_hooks(_pack, _unpack):
        yield
