"""Grading references cached by problem: a class's answers to one problem all need the same autograd result.

The reference of a check (loss, every input's gradient, the intermediates and the neuron's chain-rule
factors, in float64 at every point) depends only on the model, the points (a network's completed with its
generated X and parameters), the upstream gradient `dout` and the limits; never on the
submission, the tolerances or which checks are graded (every section is always computed). So it is
computed once per problem and kept in a bounded LRU per worker process. The key is canonical: the model
spec's items in sorted order and the points' exact float64 bytes, however the points were given
(`inputs`, `points`, or `domain` + `seed` + `n_points`, which draw the same points every time).

Bounded by entries and by bytes (REFERENCE_CACHE_ENTRIES, REFERENCE_CACHE_BYTES; 0 entries turns it off).

A second LRU with the same bounds, PROBLEMS, keeps whole problems under the raw JSON of a check's problem
fields (service/views/check_loading.py): a student's request that repeats the class's problem byte for byte then
skips the problem's validation, model, points and cost estimate as well, not only autograd.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .limits import Limits

# A per-tensor cost beyond its data (the Python object, the storage, the dict slot; ~600 bytes measured for a
# detached tensor); counted so that many tiny references cannot exceed the byte budget unnoticed.
TENSOR_OVERHEAD_BYTES = 600
DEFAULT_MAX_ENTRIES = 1024
DEFAULT_MAX_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True)
class Reference:
    """One problem's references, one dict per point (read only: graders never modify them)."""

    refs: tuple[dict, ...]
    nbytes: int


def _canonical(value):
    """A dict's items sorted at every depth, so that equal specs give equal keys whatever their key order."""
    if isinstance(value, dict):
        return sorted((k, _canonical(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return value


def _tensor_bytes(name: str, t: torch.Tensor) -> bytes:
    return f"{name}{t.dtype}{list(t.shape)}".encode() + t.detach().contiguous().numpy().tobytes()


def problem_key(
    model_spec: dict, points: list[dict[str, torch.Tensor]], limits: Limits, dout: torch.Tensor | None = None
) -> tuple:
    """Equal keys <=> equal references: the model's settings (a network's layers, `generate`, `init`), the limits,
    each point's names, dtypes, shapes and bits, and the upstream gradient `dout` of a layer check."""
    blob = bytearray()
    for point in points:
        for name, t in point.items():
            blob += _tensor_bytes(name, t)
        blob += b"|"
    if dout is not None:
        blob += _tensor_bytes("dout", dout)
    # repr keeps -0.0 apart from 0.0 and 1e-08 apart from 1.0000000000000001e-08
    return repr(_canonical(model_spec)), limits, bytes(blob)


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from _tensors(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from _tensors(value)


def reference_nbytes(key: tuple, refs) -> int:
    """What an entry keeps alive: its tensors (data + overhead) and its key."""
    return len(key[2]) + len(key[0]) + tensors_nbytes(refs)


class ReferenceCache:
    """An LRU of References bounded by entry count and total bytes; `listener(event)` sees hit/miss/evict."""

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self._entries: OrderedDict[tuple, Reference] = OrderedDict()
        self._lock = threading.Lock()  # sync workers are single-threaded; gthread workers would not be
        self.nbytes = 0
        self.listener: Callable[[str, ReferenceCache], None] | None = None

    @property
    def enabled(self) -> bool:
        return self.max_entries > 0 and self.max_bytes > 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: tuple) -> Reference | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
        self.notify("hit" if entry is not None else "miss")
        return entry

    def put(self, key: tuple, refs, nbytes: int | None = None) -> None:
        """Keep `refs` (a problem's references; for PROBLEMS, what the caller keeps) of `nbytes` estimated bytes."""
        nbytes = reference_nbytes(key, refs) if nbytes is None else nbytes
        if nbytes > self.max_bytes:
            return  # one huge problem would evict everything else
        evicted = 0
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self.nbytes -= old.nbytes
            self._entries[key] = Reference(tuple(refs), nbytes)
            self.nbytes += nbytes
            while len(self._entries) > self.max_entries or self.nbytes > self.max_bytes:
                _, dropped = self._entries.popitem(last=False)
                self.nbytes -= dropped.nbytes
                evicted += 1
        for _ in range(evicted):
            self.notify("evict")
        self.notify("store")

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.nbytes = 0
        self.notify("clear")

    def notify(self, event: str) -> None:
        if self.listener is not None:
            self.listener(event, self)


CACHE = ReferenceCache()
PROBLEMS = ReferenceCache()  # whole problems by their raw JSON; no listener: a hit here counts as CACHE's hit


def configure(max_entries: int, max_bytes: int) -> ReferenceCache:
    """Set the bounds (the app's config, read from the environment) and start empty; returns the cache."""
    for cache in (CACHE, PROBLEMS):
        cache.clear()
        cache.max_entries, cache.max_bytes = max_entries, max_bytes
    return CACHE


def tensors_nbytes(*objs) -> int:
    """The estimated bytes of every tensor in these dicts and lists (data + overhead each)."""
    return sum(t.numel() * t.element_size() + TENSOR_OVERHEAD_BYTES for t in _tensors(list(objs)))


def cached_problem(key: tuple):
    """What PROBLEMS keeps under `key`, or None; a hit is a reference cache hit (no autograd was run)."""
    if not PROBLEMS.enabled:
        return None
    entry = PROBLEMS.get(key)
    if entry is None:
        return None
    CACHE.notify("hit")
    return entry.refs


def keep_problem(key: tuple, value: tuple, nbytes: int) -> None:
    if PROBLEMS.enabled:
        PROBLEMS.put(key, value, nbytes)


def references(
    model_spec: dict,
    points: list[dict[str, torch.Tensor]],
    limits: Limits,
    compute: Callable[[], list[dict]],
    dout: torch.Tensor | None = None,
) -> list[dict]:
    """A problem's references: from the cache, or from compute() (then kept, if the cache is on).

    The caller has already built the model and passed the cost model's check for this request: a cached
    reference saves the autograd work, never a limit."""
    if not CACHE.enabled:
        return compute()
    key = problem_key(model_spec, points, limits, dout)
    entry = CACHE.get(key)
    if entry is not None:
        return list(entry.refs)
    refs = compute()
    CACHE.put(key, refs)
    return refs
