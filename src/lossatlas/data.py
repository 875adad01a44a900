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

The data is a snapshot, and data that changes is never used silently:

* cached batches are private copies: changing the user's tensors afterwards changes nothing;
* batches with no sample (leading size 0) are skipped: they hold no term of the sample mean
  Σ n_b ℓ_b / N (the mean of an empty batch, 0/0, would otherwise poison it with NaN);
* streamed data is re-read at every evaluation and must yield, at every pass, batches of the sizes
  counted at construction (empty ones included), as many of them: otherwise :class:`DataError`
  (a pass that yields fewer, more or other-sized batches, e.g. a ``DataLoader`` with
  ``drop_last=False`` over a dataset that grew, would weight the samples wrongly or drop some);
* a variant in another dtype (:meth:`BatchSource.recast`) is rebuilt from the cached batches when
  they hold the source exactly, else re-read from the source, which must then yield the very same
  data (checked exactly: by value, or by SHA-256 of the batches the cache rounded) or
  :class:`DataError` is raised (a shuffled ``DataLoader`` is not the same data twice).
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset

from .errors import DataError, bad_type, bad_value

DEFAULT_BATCH = 8192
DEFAULT_CACHE_BYTES = 4 * 2**30

_EXACT_CASTS = {torch.float16: (torch.float32, torch.float64), torch.bfloat16: (torch.float32, torch.float64),
                torch.float32: (torch.float64,)}


def exact_cast(src: torch.dtype, dst: torch.dtype) -> bool:
    """Whether every value of floating dtype ``src`` is exactly representable in ``dst``."""
    return src == dst or dst in _EXACT_CASTS.get(src, ())


_PRIVATE = "private"  # token of a batch read from lossatlas' own cache


def _digest(batch: Any) -> str:
    h = hashlib.sha256()
    for t in tensors_in(batch):
        c = t.detach().contiguous().cpu()
        h.update(f"{tuple(c.shape)}|{c.dtype}|".encode())
        h.update(c.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _same_tensors(a: Any, b: Any) -> bool:
    ta, tb = tensors_in(a), tensors_in(b)
    if len(ta) != len(tb):
        return False
    for x, y in zip(ta, tb):
        if x.shape != y.shape or x.dtype != y.dtype:
            return False
        if x.is_floating_point():
            it = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[x.element_size()]
            x, y = x.view(it), y.view(it)
        if not torch.equal(x, y.to(x.device)):
            return False
    return True


def check_tensor(t: Tensor) -> None:
    """Refuse what lossatlas cannot evaluate exactly: sparse layouts and tensors without values."""
    if t.layout != torch.strided:
        raise DataError(f"Problem(): argument 'data' must hold dense (strided) tensors; received a "
                        f"{t.layout} tensor of shape {tuple(t.shape)} (call .to_dense() first)")
    if t.device.type == "meta":
        raise DataError(f"Problem(): argument 'data' must hold tensors with values; received a tensor "
                        f"of shape {tuple(t.shape)} on the 'meta' device (it has no data)")


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
    sizes: list[int]  # samples of each non-empty batch (the batches evaluated)
    stream: Iterable | None
    tokens: list[str | None] | None = None  # per cached batch: SHA-256 of the source batch if rounded

    @property
    def n_samples(self) -> int:
        return sum(self.sizes)

    @property
    def cached(self) -> bool:
        return self.batches is not None


class BatchSource:
    """Materialises the data once and yields ``(batch, n_samples)`` pairs on the problem's device."""

    def __init__(self, data: Any, *, device: torch.device, dtype: torch.dtype, batch_size: int | None,
                 max_cache_bytes: int | None, summarise: Any = None):
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                       or batch_size < 1):
            raise bad_value("Problem", "batch_size", "a positive integer or None", batch_size)
        if max_cache_bytes is not None and (isinstance(max_cache_bytes, bool) or not isinstance(max_cache_bytes, int)
                                            or max_cache_bytes < 0):
            raise bad_value("Problem", "max_cache_bytes", "a non-negative integer or None", max_cache_bytes)
        self.device = device
        self.dtype = dtype
        self.budget = DEFAULT_CACHE_BYTES if max_cache_bytes is None else max_cache_bytes
        self.kind, self._source = self._classify(data, batch_size)
        #: ``summarise(raw_batch)``: what the pass that counts a streamed source's batches records of
        #: each non-empty batch in ``summaries`` (the problem's class-label summary); None if unset
        self.summarise = summarise
        self.summaries: list[Any] | None = None
        self._mat = self._materialise()
        if self._mat.n_samples == 0:
            raise DataError("Problem(): argument 'data' must hold at least one sample; received empty data")
        self._fingerprint: str | None = None
        #: ``check_batch(raw_batch, index)``, called on each streamed batch before it is moved (every
        #: pass); the problem sets it (class labels), cached batches are checked once instead
        self.check_batch: Any = None

    # -- classification -------------------------------------------------------------------------
    def _classify(self, data: Any, batch_size: int | None):
        if isinstance(data, (str, bytes)) or data is None or isinstance(data, (int, float)):
            raise bad_type("Problem", "data", "tensors (inputs, targets), a Dataset, a DataLoader or an "
                           "iterable of batches", data)
        for t in tensors_in(data) if isinstance(data, (Tensor, tuple, list, Mapping)) else ():
            check_tensor(t)
        if isinstance(data, Tensor):
            return "tensors", _TensorSlices((data,), batch_size, single=True)
        if isinstance(data, (tuple, list)) and data and all(isinstance(t, Tensor) for t in data):
            return "tensors", _TensorSlices(tuple(data), batch_size, single=False)
        if isinstance(data, Mapping) and data and all(isinstance(t, Tensor) for t in data.values()):
            return "tensors", _TensorDictSlices(dict(data), batch_size)
        unsized = data.dataset if isinstance(data, DataLoader) else data
        if isinstance(unsized, IterableDataset) and not hasattr(unsized, "__len__"):
            # an IterableDataset need not end: the data are read in full at construction (exact dataset
            # means), so an unbounded one would never return
            raise DataError(
                f"Problem(): argument 'data' must be finite and sized; received an IterableDataset "
                f"({type(unsized).__name__}) without __len__, which may never end; give it a __len__, or "
                f"pass the batches to use, e.g. list(itertools.islice(iter(data), N))")
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
        return self._move_checked(batch)[0]

    def _move_checked(self, batch: Any, *, private: bool = False) -> tuple[Any, bool]:
        """The batch on the device in the problem's dtype, and whether a floating tensor was rounded.
        A tensor that would still be the source's memory is copied unless ``private``."""
        narrowed = [False]

        def mv(t: Tensor) -> Tensor:
            check_tensor(t)
            if t.is_floating_point():
                out = t.to(device=self.device, dtype=self.dtype)
                narrowed[0] |= not exact_cast(t.dtype, self.dtype)
            else:
                out = t.to(device=self.device)
            if out is t and not private:  # still the source's memory: a private copy
                out = out.clone()
            return out
        return map_tensors(batch, mv), narrowed[0]

    def _changed(self, what: str) -> DataError:
        return DataError(f"Problem: argument 'data' changed between iterations: {what}; it must yield the same "
                         "batches at every pass (no shuffling, no batches added or dropped)")

    def _materialise(self, *, private: bool = False) -> Materialised:
        src = self._source
        one_shot = iter(src) is src if self.kind == "iterable" else False
        batches: list[Any] = []
        sizes: list[int] = []
        raw_sizes: list[int] = []  # this pass so far, empty batches included
        tokens: list[str | None] = []
        used = 0
        for raw in src:
            n = leading_size(raw)
            raw_sizes.append(n)
            used += nbytes(raw)
            if used > self.budget:
                if one_shot:
                    raise DataError(
                        f"Problem(): argument 'data' is a one-shot iterator larger than the cache budget "
                        f"({self.budget} bytes); pass a re-iterable (a list, Dataset or DataLoader) or raise "
                        f"max_cache_bytes")
                # too big to cache: stream it at every evaluation; sizes counted on a full pass, and
                # checked against the batches of this pass read so far
                counted, summaries = [], []
                for b in src:
                    k = leading_size(b)
                    if k:
                        counted.append(k)
                        if self.summarise is not None:
                            summaries.append(self.summarise(b))
                self.summaries = summaries if self.summarise is not None else None
                seen = [k for k in raw_sizes if k]
                if counted[:len(seen)] != seen:
                    raise self._changed(f"batch sizes {counted[:len(seen)]} at the second pass, {seen} at the first")
                return Materialised(None, counted, src)
            if n == 0:
                continue  # no sample: no term of the mean
            moved, narrowed = self._move_checked(raw, private=private)
            batches.append(moved)
            sizes.append(n)
            # rounded: how to recognise the source batch when it is read again (our own cache as the
            # source cannot change)
            tokens.append((_PRIVATE if private else _digest(raw)) if narrowed and not one_shot else None)
        return Materialised(batches, sizes, None, tokens)

    def _stream(self) -> Iterator[tuple[Any, int]]:
        """(raw batch, n) of a streamed source, empty batches skipped, checked against the sizes
        counted at construction (batch ``k`` is the ``k``-th non-empty one)."""
        expected = self._mat.sizes
        k = 0
        for raw in self._mat.stream:
            n = leading_size(raw)
            if n == 0:
                continue
            if k >= len(expected):
                raise self._changed(f"it yielded more than the {len(expected)} batches counted at construction")
            if n != expected[k]:
                raise self._changed(f"batch {k} has {n} samples, {expected[k]} when counted at construction")
            yield raw, n
            k += 1
        if k != len(expected):
            raise self._changed(f"it yielded {k} batches, {len(expected)} when counted at construction")

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

    #: set by the Problem when its model writes into the batches it is given (found at construction,
    #: :class:`~lossatlas.errors.DataWriteWarning`): cached batches are then yielded as private copies,
    #: so every evaluation sees the data as it was given
    copy_batches = False

    def cached_batch(self, i: int) -> Any:
        """Cached batch ``i`` as a model is to be given it: the cache's own tensors, or private copies
        where :attr:`copy_batches` is set (every reader of the cache goes through here)."""
        batch = self._mat.batches[i]
        return map_tensors(batch, torch.clone) if self.copy_batches else batch

    def __iter__(self) -> Iterator[tuple[Any, int]]:
        if self._mat.batches is not None:
            for i, n in enumerate(self._mat.sizes):
                yield self.cached_batch(i), n
        else:
            check = self.check_batch
            for k, (raw, n) in enumerate(self._stream()):
                if check is not None:
                    check(raw, k)
                yield self._move(raw), n

    def recast(self, dtype: torch.dtype) -> BatchSource:
        """The same data in another floating dtype, with no precision lost where it can be helped:
        from the cached batches when they hold the source exactly (a snapshot: later changes to the
        source do not matter), else re-read from the source, which must yield the same data as at
        construction (:class:`DataError` otherwise). A one-shot iterator that was rounded when cached
        cannot be read again: the variant holds its cached (rounded) batches. Streamed data is
        re-read at every evaluation, as for this source."""
        new = copy.copy(self)
        new.dtype = dtype
        new._fingerprint = None
        mat = self._mat
        if mat.cached and not any(mat.tokens or ()):
            new._source = mat.batches
            new.kind = "iterable"
            new._mat = new._materialise(private=True)
        elif mat.cached:
            new._mat = new._reread(self)
        else:
            new._mat = new._materialise()
            if new._mat.sizes != mat.sizes:
                raise self._changed(f"batch sizes {new._mat.sizes} when read again for dtype {dtype}, "
                                    f"{mat.sizes} at construction")
        return new

    def _reread(self, old: BatchSource) -> Materialised:
        """Cached batches re-read from the source in this dtype, each checked to be the batch ``old``
        cached: equal after the same conversion, or (where the conversion rounded) the same SHA-256."""
        mat = old._mat
        expected = mat.sizes
        batches: list[Any] | None = []
        used, i = 0, 0
        for raw in self._source:
            n = leading_size(raw)
            if n == 0:
                continue
            if i >= len(expected) or n != expected[i]:
                raise old._changed(f"batch {i} has {n} samples when read again for dtype {self.dtype}, "
                                   f"{expected[i] if i < len(expected) else 'none'} at construction")
            token = mat.tokens[i]
            if token is None:
                same = _same_tensors(old._move_checked(raw, private=True)[0], mat.batches[i])
            else:
                same = token == _PRIVATE or _digest(raw) == token
            if not same:
                raise old._changed(f"batch {i} read again for dtype {self.dtype} holds other values than at "
                                   "construction")
            used += nbytes(raw)
            if batches is not None and used <= self.budget:
                batches.append(self._move(raw))
            else:
                batches = None  # too big in this dtype: stream it (checked at every pass)
            i += 1
        if i != len(expected):
            raise old._changed(f"{i} batches when read again for dtype {self.dtype}, {len(expected)} at "
                               "construction")
        if batches is None:
            return Materialised(None, list(expected), self._source)
        return Materialised(batches, list(expected), None, [None] * len(batches))

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
