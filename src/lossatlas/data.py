"""Turning what the user calls "data" into batches that are materialised once.

Accepted forms (see :class:`lossatlas.Problem`):

* a ``Tensor`` (samples, no targets: needs a closure);
* a tuple/list of tensors with a common leading dimension, e.g. ``(inputs, targets)``;
* a dict of tensors with a common leading dimension (needs a closure);
* a ``torch.utils.data.Dataset`` with ``__len__``;
* a ``DataLoader`` or any other re-iterable of batches (a one-shot iterator is cached if it fits).

Batches are moved to the problem's device (floating tensors cast to its dtype) once and kept while
their total size fits ``max_cache_bytes``; otherwise they are streamed from the source at each
evaluation. Either way batches are never re-collated per evaluation when cached.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from .errors import DataError, bad_type, bad_value

DEFAULT_BATCH = 8192
DEFAULT_CACHE_BYTES = 4 * 2**30


def map_tensors(obj: Any, fn) -> Any:
    """Apply ``fn`` to every tensor inside nested tuples/lists/dicts (namedtuples kept)."""
    if isinstance(obj, Tensor):
        return fn(obj)
    if isinstance(obj, Mapping):
        items = {k: map_tensors(v, fn) for k, v in obj.items()}
        if type(obj) is dict:
            return items
        try:
            return type(obj)(items)
        except Exception:  # a Mapping type that cannot be rebuilt from a dict
            return items
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(map_tensors(v, fn) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(map_tensors(v, fn) for v in obj)
    return obj


def tensors_in(obj: Any) -> list[Tensor]:
    """All tensors inside a nested batch, in a fixed traversal order."""
    out: list[Tensor] = []
    map_tensors(obj, lambda t: out.append(t) or t)
    return out


def nbytes(obj: Any) -> int:
    return sum(t.numel() * t.element_size() for t in tensors_in(obj))


def leading_size(batch: Any) -> int:
    """Number of samples in a batch: the leading dimension of its first tensor (1 for a 0-d one)."""
    ts = tensors_in(batch)
    if not ts:
        raise DataError("Problem(): a batch holds no tensor, so its number of samples is unknown; "
                        f"received a batch of type {type(batch).__name__}")
    t = ts[0]
    return int(t.shape[0]) if t.ndim > 0 else 1


@dataclass
class Materialised:
    """Batches (cached on device) or a streaming source, with the number of samples of each."""

    batches: list[Any] | None
    sizes: list[int]
    stream: Iterable | None

    @property
    def n_samples(self) -> int:
        return sum(self.sizes)

    @property
    def cached(self) -> bool:
        return self.batches is not None


class BatchSource:
    """Materialises the data once and yields ``(batch, n_samples)`` pairs on the problem's device."""

    def __init__(self, data: Any, *, device: torch.device, dtype: torch.dtype, batch_size: int | None,
                 max_cache_bytes: int | None):
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                       or batch_size < 1):
            raise bad_value("Problem", "batch_size", "a positive integer or None", batch_size)
        if max_cache_bytes is not None and (not isinstance(max_cache_bytes, int) or max_cache_bytes < 0):
            raise bad_value("Problem", "max_cache_bytes", "a non-negative integer or None", max_cache_bytes)
        self.device = device
        self.dtype = dtype
        self.budget = DEFAULT_CACHE_BYTES if max_cache_bytes is None else max_cache_bytes
        self.kind, self._source = self._classify(data, batch_size)
        self._mat = self._materialise()
        if self._mat.n_samples == 0:
            raise DataError("Problem(): argument 'data' must hold at least one sample; received empty data")
        self._fingerprint: str | None = None

    # -- classification -------------------------------------------------------------------------
    def _classify(self, data: Any, batch_size: int | None):
        if isinstance(data, (str, bytes)) or data is None or isinstance(data, (int, float)):
            raise bad_type("Problem", "data", "tensors (inputs, targets), a Dataset, a DataLoader or an "
                           "iterable of batches", data)
        if isinstance(data, Tensor):
            return "tensors", _TensorSlices((data,), batch_size, single=True)
        if isinstance(data, (tuple, list)) and data and all(isinstance(t, Tensor) for t in data):
            return "tensors", _TensorSlices(tuple(data), batch_size, single=False)
        if isinstance(data, Mapping) and data and all(isinstance(t, Tensor) for t in data.values()):
            return "tensors", _TensorDictSlices(dict(data), batch_size)
        if isinstance(data, DataLoader):
            if batch_size is not None:
                raise bad_value("Problem", "batch_size", "None when data is a DataLoader (it brings its own "
                                "batch size)", batch_size)
            return "loader", data
        if isinstance(data, Dataset) and hasattr(data, "__len__"):
            n = len(data)
            if n == 0:
                raise DataError("Problem(): argument 'data' must hold at least one sample; received an empty Dataset")
            return "loader", DataLoader(data, batch_size=batch_size or min(n, DEFAULT_BATCH), shuffle=False)
        if isinstance(data, Iterable):
            if batch_size is not None:
                raise bad_value("Problem", "batch_size", "None when data is an iterable of batches", batch_size)
            return "iterable", data
        raise bad_type("Problem", "data", "tensors (inputs, targets), a Dataset, a DataLoader or an iterable "
                       "of batches", data)

    # -- materialisation ------------------------------------------------------------------------
    def _move(self, batch: Any) -> Any:
        def mv(t: Tensor) -> Tensor:
            if t.is_floating_point():
                return t.to(device=self.device, dtype=self.dtype)
            return t.to(device=self.device)
        return map_tensors(batch, mv)

    def _materialise(self) -> Materialised:
        src = self._source
        one_shot = iter(src) is src if self.kind == "iterable" else False
        batches: list[Any] = []
        sizes: list[int] = []
        used = 0
        for raw in src:
            n = leading_size(raw)
            used += nbytes(raw)
            if used > self.budget:
                if one_shot:
                    raise DataError(
                        f"Problem(): argument 'data' is a one-shot iterator larger than the cache budget "
                        f"({self.budget} bytes); pass a re-iterable (a list, Dataset or DataLoader) or raise "
                        f"max_cache_bytes")
                # too big to cache: stream it at every evaluation (sizes counted once)
                sizes = [leading_size(b) for b in src]
                return Materialised(None, sizes, src)
            batches.append(self._move(raw))
            sizes.append(n)
        return Materialised(batches, sizes, None)

    # -- public ----------------------------------------------------------------------------------
    @property
    def n_samples(self) -> int:
        return self._mat.n_samples

    @property
    def n_batches(self) -> int:
        return len(self._mat.sizes)

    @property
    def cached(self) -> bool:
        return self._mat.cached

    @property
    def sizes(self) -> list[int]:
        return list(self._mat.sizes)

    def __iter__(self) -> Iterator[tuple[Any, int]]:
        if self._mat.batches is not None:
            yield from zip(self._mat.batches, self._mat.sizes)
        else:
            for raw, n in zip(self._mat.stream, self._mat.sizes):
                yield self._move(raw), n

    def recast(self, dtype: torch.dtype) -> BatchSource:
        """The same data in another floating dtype, rebuilt from the original source when it can be
        iterated again (so no precision is lost), else from the cached batches."""
        new = copy.copy(self)
        new.dtype = dtype
        new._fingerprint = None
        reusable = self.kind != "iterable" or iter(self._source) is not self._source
        source = self._source if reusable else self._mat.batches
        new._source = source
        new._mat = new._materialise()
        return new

    def first(self) -> tuple[Any, int]:
        return next(iter(self))

    def fingerprint(self) -> str:
        """SHA-256 over every batch's tensors (exact bytes, shapes, dtypes) and batch sizes."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            for batch, n in self:
                h.update(f"batch:{n}|".encode())
                for t in tensors_in(batch):
                    c = t.detach().contiguous().cpu()
                    h.update(f"{tuple(c.shape)}|{c.dtype}|".encode())
                    h.update(c.reshape(-1).view(torch.uint8).numpy().tobytes())
            self._fingerprint = h.hexdigest()
        return self._fingerprint


class _TensorSlices:
    """Re-iterable of tuple batches sliced from tensors with a common leading dimension."""

    def __init__(self, tensors: Sequence[Tensor], batch_size: int | None, single: bool):
        sizes = {int(t.shape[0]) if t.ndim else -1 for t in tensors}
        if -1 in sizes:
            raise DataError("Problem(): argument 'data' must hold tensors with a leading sample dimension; "
                            "received a 0-d tensor")
        if len(sizes) != 1:
            raise DataError("Problem(): argument 'data' must hold tensors with the same number of samples "
                            f"(leading dimension); received sizes {[int(t.shape[0]) for t in tensors]}")
        self.tensors = tuple(tensors)
        self.n = sizes.pop()
        self.batch_size = batch_size or min(max(self.n, 1), DEFAULT_BATCH)
        self.single = single

    def __iter__(self):
        for i in range(0, self.n, self.batch_size):
            parts = tuple(t[i:i + self.batch_size] for t in self.tensors)
            yield parts[0] if self.single else parts


class _TensorDictSlices:
    def __init__(self, tensors: dict[str, Tensor], batch_size: int | None):
        sizes = {k: int(t.shape[0]) if t.ndim else -1 for k, t in tensors.items()}
        if len(set(sizes.values())) != 1 or -1 in sizes.values():
            raise DataError("Problem(): argument 'data' must hold tensors with the same number of samples "
                            f"(leading dimension); received sizes {sizes}")
        self.tensors = tensors
        self.n = next(iter(sizes.values()))
        self.batch_size = batch_size or min(max(self.n, 1), DEFAULT_BATCH)

    def __iter__(self):
        for i in range(0, self.n, self.batch_size):
            yield {k: t[i:i + self.batch_size] for k, t in self.tensors.items()}
