"""Running lossatlas under ``torch.distributed`` (a ``torchrun`` launch): who is who, agreeing on
settings, and data-parallel evaluation of one point.

Nothing to call for the common case: launched by ``torchrun``, :func:`lossatlas.surface` (and
everything built on :func:`lossatlas.grid_job.run_grid`) finds ``RANK``/``WORLD_SIZE``/
``MASTER_ADDR`` in the environment, initialises the default process group (gloo on CPU; gloo for
CPU tensors and NCCL for CUDA tensors on GPU machines) and shares the work::

    torchrun --nproc-per-node 2 -m lossatlas surface mlp-digits --store plane.zarr
    torchrun --nproc-per-node 2 my_script.py          # a script calling lossatlas.surface(...)

A process group the user initialised already is used as is. ``LOSSATLAS_DISTRIBUTED=0`` turns
the detection off (every rank then works alone, e.g. on different stores).
``LOSSATLAS_DIST_TIMEOUT=SECONDS`` bounds the rendezvous and every collective of the group we
initialise (torch's default: 30 minutes for gloo); a rank that cannot rendezvous in time fails with
a :class:`~lossatlas.errors.DistributedError` naming its master.

A job restarted by ``torchrun --max-restarts`` resumes by itself. On one node, each attempt meets
under its own keys in torchrun's shared TCPStore (torch 2.5+ keeps that store across
restarts, and without this the new ranks may dial the dead ranks of the previous attempt); on
several nodes, launch torchrun with ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1`` for the same effect.

Two ways to share work between ranks:

* **grid** (default): chunks of grid points are handed out one at a time from a counter in the
  job's key-value store (the c10d TCPStore), so a rank that finishes early takes more chunks;
  ranks write their own chunks to the store (per-chunk files cannot collide). No collective runs
  per point or per chunk.
* **data** (:class:`DataParallelEvaluator`): for a small grid and big data, every rank evaluates
  every point on its share of the batches; the per-batch terms ``n_b·ℓ_b/N`` are gathered and
  summed in the original batch order, so the value is the same float64 sum as in one process.

Bit-identical results on any number of ranks: every setting that changes rounding (strategy,
vmap batch, chunk shape, intra-op threads on CPU) is decided once on rank 0 and broadcast (a store
pins them in its provenance), and every rank checks that it built the same problem as rank 0.
"""

from __future__ import annotations

import atexit
import json
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed import distributed_c10d as c10d
from torch.distributed.constants import default_pg_timeout

from . import errors as E
from .errors import DistributedError, bad_value
from .evaluator import PointEvaluator, sum_batches

__all__ = ["Context", "context", "launched", "device_for_rank", "DataParallelEvaluator", "SWITCH"]

SWITCH = "LOSSATLAS_DISTRIBUTED"
TIMEOUT = "LOSSATLAS_DIST_TIMEOUT"


@dataclass
class Context:
    """This process's place in a job: ``rank`` of ``world`` (``world == 1``: a single process).

    ``group`` is a gloo process group for coordination (objects on the CPU), ``kv`` the job's
    key-value store (``torch.distributed.Store``); both are ``None`` for a single process.
    """

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    group: Any = None
    kv: Any = None
    job: str = ""
    cuda_collectives: bool = False
    _calls: int = field(default=0, repr=False)

    @property
    def active(self) -> bool:
        """True when several ranks share the work."""
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # -- collectives on Python objects (gloo, CPU) -------------------------------------------------
    def broadcast(self, obj: Any = None) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.active:
            return obj
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj, group=self.group)
        return out

    def barrier(self) -> None:
        if self.active:
            dist.barrier(group=self.group)

    def run_on_main(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on rank 0 only and return its result on every rank; if it raises, every rank
        raises an error of the same lossatlas type with the same message."""
        if not self.active:
            return fn()
        if self.is_main:
            try:
                result = fn()
            except BaseException as exc:
                self.broadcast(("error", _portable(exc)))
                raise
            self.broadcast(("ok", result))
            return result
        status, payload = self.broadcast()
        if status == "error":
            raise _rebuild(payload)
        return payload

    def check_same(self, value: Mapping[str, Any], *, func: str, what: str) -> None:
        """Raise :class:`DistributedError` on every rank unless every rank has the same ``value``
        (a JSON-able dict, e.g. fingerprints of the problem, centre and directions)."""
        if not self.active:
            return
        mine = json.dumps(value, sort_keys=True, default=str)
        every = self.gather(mine)
        if all(s == every[0] for s in every):
            return
        ref = json.loads(every[0])
        for r, s in enumerate(every):
            if s != every[0]:
                other = json.loads(s)
                keys = sorted(k for k in set(ref) | set(other) if ref.get(k) != other.get(k))
                raise DistributedError(
                    f"{func}(): rank {r} has a different {what} than rank 0 (differs in: {', '.join(keys[:6])}); "
                    "every rank must build the same problem, centre and directions (seed the model's "
                    "initialisation, load the same checkpoint and data, pass the same arguments)")

    def namespace(self) -> str:
        """A key prefix for one coordinated call, the same on every rank (rank 0 draws it)."""
        self._calls += 1
        token = self.broadcast(os.urandom(6).hex() if self.is_main else None)
        return f"lossatlas/{token}/{self._calls}/"


_SINGLE = Context()
_current: Context | None = None
_initialised_here = False


def launched() -> bool:
    """True when this process is one rank of a multi-process job (torchrun environment, or an
    initialised process group with more than one rank) and :data:`SWITCH` does not turn it off."""
    if os.environ.get(SWITCH, "").strip().lower() in ("0", "off", "false", "no"):
        return False
    if not dist.is_available():
        return False
    if dist.is_initialized():
        return dist.get_world_size() > 1
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return False
    return world > 1 and "RANK" in os.environ and "MASTER_ADDR" in os.environ and "MASTER_PORT" in os.environ


def context() -> Context:
    """The job this process belongs to, initialising ``torch.distributed`` from a torchrun
    environment on first use (collective: every rank must reach its first call)."""
    global _current, _initialised_here
    if not launched():
        return _SINGLE
    if _current is not None:
        return _current
    if not dist.is_initialized():
        backend = "gloo"
        if torch.cuda.is_available() and dist.is_nccl_available():
            backend = "cpu:gloo,cuda:nccl"
            # NCCL communicators live on the current device: one GPU per local rank, as torchrun intends
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
        _init_from_environment(backend)
        _initialised_here = True
        atexit.register(_shutdown)
    rank, world = dist.get_rank(), dist.get_world_size()
    backend = str(dist.get_backend())
    group = None if backend == "gloo" else dist.new_group(backend="gloo")
    kv = c10d._get_default_store()
    run = os.environ.get("TORCHELASTIC_RUN_ID")
    where = f"{os.environ.get('MASTER_ADDR', socket.gethostname())}:{os.environ.get('MASTER_PORT', '?')}"
    job = f"rank {rank} of a {world}-rank torch.distributed job ({'run ' + run + ', ' if run and run != 'none' else ''}" \
          f"master {where})"
    _current = Context(rank=rank, world=world, local_rank=int(os.environ.get("LOCAL_RANK", rank)), group=group,
                       kv=kv, job=job, cuda_collectives="nccl" in backend)
    return _current


def _timeout_from_environment() -> timedelta | None:
    """:data:`TIMEOUT` as a ``timedelta`` (``None``: torch's default, 30 minutes for gloo)."""
    raw = os.environ.get(TIMEOUT, "").strip()
    if not raw:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0 or seconds == float("inf"):
        raise E.InvalidArgumentError(f"context(): environment variable {TIMEOUT} must be a positive number of "
                                     f"seconds; received {raw!r}")
    return timedelta(seconds=seconds)


def _init_from_environment(backend: str) -> None:
    """``init_process_group`` from a torchrun (or any ``env://``) environment.

    torchrun's agent hosts the job's TCPStore (``TORCHELASTIC_USE_AGENT_STORE=True``) and keeps the
    same server, at the same ``MASTER_PORT``, across ``--max-restarts`` restarts, while
    ``init_process_group`` writes its rendezvous keys (the gloo address of each rank, NCCL ids) under
    names that do not change between attempts. The ranks of a restarted job then find the
    addresses of the *dead* ranks of the previous attempt already in the store and connect to
    them: gloo fails with ``connectFullMesh ... Connection refused`` or waits for its whole timeout
    (pytorch/pytorch#135712 and later reports; about half the restarts on torch 2.13). On one node
    (a single agent, so ``TORCHELASTIC_RESTART_COUNT`` is the same on every rank) the keys of each
    attempt go under their own prefix, as torch itself did before it shared the agent's store.
    """
    timeout = _timeout_from_environment()
    env = os.environ
    rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
    attempt = env.get("TORCHELASTIC_RESTART_COUNT", "")
    where = f"{env.get('MASTER_ADDR')}:{env.get('MASTER_PORT')}"
    one_agent = env.get("GROUP_WORLD_SIZE", "") == "1"
    per_attempt = env.get("TORCHELASTIC_USE_AGENT_STORE") == "True" and one_agent and attempt.isdigit()
    try:
        if per_attempt:
            store = dist.TCPStore(env["MASTER_ADDR"], int(env["MASTER_PORT"]), world_size=world, is_master=False,
                                  timeout=timeout or default_pg_timeout)
            run = env.get("TORCHELASTIC_RUN_ID", "none")
            store = dist.PrefixStore(f"lossatlas/{run}/attempt_{attempt}/world_{world}/", store)
            dist.init_process_group(backend=backend, store=store, rank=rank, world_size=world, timeout=timeout)
        else:
            dist.init_process_group(backend=backend, timeout=timeout)
    except Exception as exc:
        hint = ""
        if attempt not in ("", "0") and not per_attempt:
            hint = (" A restarted torchrun job (attempt " + attempt + ") on several nodes can meet the keys of the "
                    "previous attempt in torchrun's shared TCPStore (pytorch/pytorch#135712): launch torchrun with "
                    "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 in its environment.")
        raise DistributedError(
            f"context(): rank {rank} of {world} could not initialise torch.distributed ({backend}, master {where}"
            f"{', timeout ' + str(timeout.total_seconds()) + ' s from ' + TIMEOUT if timeout else ''}): "
            f"{type(exc).__name__}: {str(exc).strip()}{hint}") from exc


def _shutdown() -> None:
    global _current
    if _initialised_here and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # pragma: no cover - best effort at exit
            pass
    _current = None


def device_for_rank(ctx: Context | None = None) -> torch.device:
    """The device a rank should put its problem on: ``cuda:LOCAL_RANK`` when CUDA is available,
    else the CPU (a convenience for scripts launched with torchrun)."""
    ctx = ctx or context()
    if torch.cuda.is_available():
        return torch.device("cuda", ctx.local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def _portable(exc: BaseException) -> tuple[str, str]:
    return type(exc).__name__, str(exc)


def _rebuild(payload: tuple[str, str]) -> BaseException:
    name, message = payload
    cls = getattr(E, name, None)
    if isinstance(cls, type) and issubclass(cls, E.LossAtlasError):
        return cls(message)
    return DistributedError(f"rank 0 failed with {name}: {message}")


# -- data-parallel evaluation of one point --------------------------------------------------------
class _BatchShard:
    """The batches ``indices`` of a problem's data (a view with the interface the evaluator uses)."""

    def __init__(self, source, indices: Sequence[int]):
        self.source = source
        self.indices = list(indices)
        self.budget = source.budget
        self.cached = source.cached
        self._sizes = source.sizes

    def __iter__(self):
        mine = set(self.indices)
        if self.source.cached:
            for i in self.indices:
                yield self.source.cached_batch(i), self._sizes[i]
        else:
            for i, (raw, n) in enumerate(self.source._stream()):  # checked like the source's own passes
                if i in mine:
                    yield self.source._move(raw), n

    def first(self):
        return next(iter(self))

    @property
    def sizes(self) -> list[int]:
        return [self._sizes[i] for i in self.indices]

    @property
    def n_batches(self) -> int:
        return len(self.indices)


def shard_problem(problem, rank: int, world: int):
    """A view of ``problem`` that iterates only batches ``rank, rank + world, …`` (weights n_b/N
    still use the full N). Returns ``(view or None, indices)``; ``None`` when the rank has no batch."""
    indices = list(range(rank, problem.data.n_batches, world))
    if not indices:
        return None, indices
    return problem.replace(data=_BatchShard(problem.data, indices), n_samples=problem.n_samples), indices


class DataParallelEvaluator:
    """Evaluate points with the data split across ranks: a callable like
    :class:`~lossatlas.evaluator.PointEvaluator`, collective (every rank calls it with the same
    coefficients).

    Each rank computes the per-batch terms tᵦ = n_b·ℓ_b(θ)/N of its batches (round-robin),
    the terms of all ranks are gathered (one ``all_gather`` per chunk of points), and every rank
    sums them in the original batch order: L(θ) = (((t₁ + t₂) + t₃) + …), the very float64
    additions of a single process, so values are bit-identical to a one-process run.
    """

    def __init__(self, problem, center, directions, *, ctx: Context | None = None, strategy: str = "loop",
                 vmap_batch: int | None = None, exact_linear: bool = True, metrics: bool = True):
        self.ctx = ctx or context()
        if problem.bn == "recalibrate" and problem.has_batchnorm:
            raise bad_value("surface", "parallel", "'grid' with bn='recalibrate' (recalibrating BatchNorm needs "
                            "every batch at every point)", "data")
        self.problem = problem
        self.n_batches = problem.data.n_batches
        self.names = list(problem.metric_names) if metrics else ["loss"]
        view, self.indices = shard_problem(problem, self.ctx.rank, self.ctx.world)
        self.local = None
        if view is not None:
            self.local = PointEvaluator(view, center, directions, strategy=strategy, vmap_batch=vmap_batch,
                                        exact_linear=exact_linear, metrics=metrics, per_batch=True)
        self.strategy = self.local.strategy if self.local is not None else strategy
        self.vmap_batch = self.local.vmap_batch if self.local is not None else vmap_batch
        self.seconds_per_point = self.local.seconds_per_point if self.local is not None else None
        self._device = problem.device

    def close(self) -> None:
        if self.local is not None:
            self.local.close()

    def __enter__(self) -> DataParallelEvaluator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def terms(self, coefficients: np.ndarray) -> Tensor:
        """(m, metrics, all batches) float64 terms in batch order, on every rank."""
        coefficients = np.asarray(coefficients, dtype=np.float64).reshape(len(coefficients), -1)
        m, k = len(coefficients), len(self.names)
        if self.local is not None:
            mine = self.local.terms(coefficients)
        else:
            mine = torch.zeros((m, k, 0), dtype=torch.float64, device=self._device)
        if not self.ctx.active:
            return mine
        width = -(-self.n_batches // self.ctx.world)  # most batches any rank has
        padded = torch.zeros((m, k, width), dtype=torch.float64, device=mine.device)
        padded[:, :, :mine.shape[2]] = mine
        on_device = padded.device.type != "cpu" and self.ctx.cuda_collectives
        if not on_device:
            padded = padded.cpu()
        parts = [torch.empty_like(padded) for _ in range(self.ctx.world)]
        dist.all_gather(parts, padded, group=None if on_device else self.ctx.group)
        parts = [p.to(mine.device) for p in parts]
        full = torch.empty((m, k, self.n_batches), dtype=torch.float64, device=mine.device)
        for r, part in enumerate(parts):
            idx = list(range(r, self.n_batches, self.ctx.world))
            full[:, :, idx] = part[:, :, :len(idx)]
        return full

    def __call__(self, coefficients: np.ndarray) -> dict[str, np.ndarray]:
        totals = sum_batches(self.terms(coefficients)).cpu().numpy()
        return {name: totals[:, j] for j, name in enumerate(self.names)}
