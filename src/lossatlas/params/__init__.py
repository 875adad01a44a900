"""Parameters as ``dict[str, Tensor]`` and the vector arithmetic on them.

A parameter point θ is a plain dict from parameter name (as in ``model.named_parameters()``) to a
tensor. Every function here treats such a dict as one long vector; operations use the fused
``torch._foreach_*`` kernels where they exist. Nothing here touches an ``nn.Module`` except
:func:`params_of`, which takes detached copies.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

from ..errors import ParameterMismatchError, bad_type, bad_value, current_function
from ._layout import filter_layout

__all__ = [
    "Params",
    "params_of",
    "check_like",
    "check_shapes",
    "zeros_like",
    "clone",
    "add",
    "sub",
    "scale",
    "axpy",
    "lincomb",
    "dot",
    "norm",
    "cosine",
    "orthogonalise",
    "flatten",
    "unflatten",
    "fingerprint",
    "to",
    "filter_layout",
]

Params = dict[str, Tensor]


def params_of(
    model: nn.Module,
    *,
    trainable_only: bool = True,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Params:
    """Detached copies of a model's parameters, keyed by ``named_parameters`` names.

    >>> import torch
    >>> p = params_of(torch.nn.Linear(3, 2))
    >>> sorted(p), tuple(p["weight"].shape), p["weight"].requires_grad
    (['bias', 'weight'], (2, 3), False)
    """
    if not isinstance(model, nn.Module):
        raise bad_type("params_of", "model", "a torch.nn.Module", model)
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise bad_value("params_of", "dtype", "a floating torch.dtype or None", dtype)
    copies = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad or not trainable_only}
    return to(copies, dtype=dtype, device=device)


def check_like(reference: Mapping[str, Tensor], other: Mapping[str, Tensor], *, func: str | None = None, arg: str,
               ref_arg: str = "center", check_dtype: bool = True) -> None:
    """Raise :class:`ParameterMismatchError` unless ``other`` has the same names, shapes, dtypes
    and devices as ``reference`` (messages name ``func``, default: the public function running)."""
    func = func or current_function("lossatlas", innermost=True)
    if not isinstance(other, Mapping):
        raise bad_type(func, arg, "a dict of parameter tensors", other)
    missing = [k for k in reference if k not in other]
    extra = [k for k in other if k not in reference]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {_names(missing)}")
        if extra:
            parts.append(f"unexpected {_names(extra)}")
        raise ParameterMismatchError(
            f"{func}(): argument '{arg}' must have the same parameter names as '{ref_arg}'; "
            f"received {', '.join(parts)} (are they from another model?)"
        )
    for k, r in reference.items():
        o = other[k]
        if not isinstance(o, Tensor):
            raise bad_type(func, f"{arg}[{k!r}]", "a tensor", o)
        if o.shape != r.shape:
            raise ParameterMismatchError(
                f"{func}(): argument '{arg}[{k!r}]' must have shape {tuple(r.shape)} like '{ref_arg}'; "
                f"received shape {tuple(o.shape)} (are they from another model?)"
            )
        if check_dtype and o.dtype != r.dtype:
            raise ParameterMismatchError(
                f"{func}(): argument '{arg}[{k!r}]' must have dtype {r.dtype} like '{ref_arg}'; "
                f"received {o.dtype} (convert with lossatlas.params.to(p, dtype=...))"
            )
        if o.device != r.device:
            raise ParameterMismatchError(
                f"{func}(): argument '{arg}[{k!r}]' must be on device {r.device} like '{ref_arg}'; "
                f"received {o.device} (move with lossatlas.params.to(p, device=...))"
            )


def check_shapes(reference: Mapping[str, Tensor], other: Mapping[str, Tensor], *, func: str, arg: str,
                 like: str) -> None:
    """Raise :class:`ParameterMismatchError` naming the first entry of ``other`` whose shape is not
    that of the same entry of ``reference`` (``like`` says what ``reference`` is, e.g. "the model's");
    entries of ``reference`` that ``other`` lacks are not checked here."""
    for k, v in other.items():
        if k in reference and tuple(v.shape) != tuple(reference[k].shape):
            raise ParameterMismatchError(f"{func}(): argument '{arg}[{k!r}]' must have shape "
                                         f"{tuple(reference[k].shape)} like {like}; received {tuple(v.shape)}")


def _names(names: Sequence[str], limit: int = 4) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _values(p: Mapping[str, Tensor]) -> list[Tensor]:
    return list(p.values())


def zeros_like(p: Mapping[str, Tensor]) -> Params:
    """A dict of zeros with the layout of ``p``."""
    return {k: torch.zeros_like(v) for k, v in p.items()}


def clone(p: Mapping[str, Tensor]) -> Params:
    """Deep copy of ``p`` (detached)."""
    return {k: v.detach().clone() for k, v in p.items()}


def to(p: Mapping[str, Tensor], *, dtype: torch.dtype | None = None,
       device: torch.device | str | None = None) -> Params:
    """``p`` with every floating tensor converted to ``dtype`` and every tensor moved to ``device``."""
    out = {}
    for k, v in p.items():
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        if device is not None:
            v = v.to(device)
        out[k] = v
    return out


def add(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> Params:
    """a + b."""
    return dict(zip(a.keys(), torch._foreach_add(_values(a), [b[k] for k in a])))


def sub(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> Params:
    """a − b."""
    return dict(zip(a.keys(), torch._foreach_sub(_values(a), [b[k] for k in a])))


def scale(a: Mapping[str, Tensor], alpha: float) -> Params:
    """alpha · a."""
    return dict(zip(a.keys(), torch._foreach_mul(_values(a), alpha)))


def axpy(alpha: float, x: Mapping[str, Tensor], y: Mapping[str, Tensor]) -> Params:
    """y + alpha · x (a new dict; the inputs are not modified)."""
    return dict(zip(y.keys(), torch._foreach_add(_values(y), [x[k] for k in y], alpha=alpha)))


def lincomb(center: Mapping[str, Tensor], directions: Sequence[Mapping[str, Tensor]],
            coefficients: Sequence[float]) -> Params:
    """θ + Σᵢ aᵢ dᵢ computed afresh (never by accumulating steps), in the dtype of ``center``.

    Evaluated as ((θ + a₁·d₁) + a₂·d₂) + … with separately rounded products and sums (no fused
    multiply-add), so the result does not depend on how many threads split the tensors, and equals
    the same expression evaluated elementwise under ``torch.vmap``.

    >>> import torch
    >>> c = {"w": torch.tensor([1.0, 2.0])}
    >>> lincomb(c, [{"w": torch.tensor([1.0, 0.0])}, {"w": torch.tensor([0.0, 1.0])}], [0.5, -2.0])["w"]
    tensor([1.5000, 0.0000])
    """
    keys = list(center.keys())
    out: list[Tensor] | None = None
    for d, a in zip(directions, coefficients):
        a = float(a)
        if a == 0.0:
            continue
        step = torch._foreach_mul([d[k] for k in keys], a)
        if out is None:
            out = list(torch._foreach_add(list(center.values()), step))
        else:
            torch._foreach_add_(out, step)
    if out is None:
        out = [t.clone() for t in center.values()]
    return dict(zip(keys, out))


def dot(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> float:
    """⟨a, b⟩ over all parameters, accumulated in float64."""
    if not a:
        return 0.0
    total = None
    for k, v in a.items():  # summed left to right on the device, then one device-to-host transfer
        part = torch.sum(v.double() * b[k].double())
        total = part if total is None else total + part
    return float(total)


def norm(a: Mapping[str, Tensor]) -> float:
    """‖a‖₂ over all parameters, accumulated in float64."""
    if not a:
        return 0.0
    norms = torch._foreach_norm([v.double() for v in a.values()])
    return float(torch.linalg.vector_norm(torch.stack(norms)))


def cosine(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> float:
    """cos∠(a, b); 0 when either is the zero vector."""
    na, nb = norm(a), norm(b)
    if na == 0.0 or nb == 0.0:
        return 0.0
    return dot(a, b) / (na * nb)


def orthogonalise(vectors: Sequence[Mapping[str, Tensor]]) -> list[Params]:
    """Gram–Schmidt (modified, twice for stability) in float64: each vector minus its projections
    on the previous ones. Norms are kept as produced (the result is orthogonal, not orthonormal)."""
    done: list[Params] = []
    for v in vectors:
        w = {k: t.double().clone() for k, t in v.items()}
        for _ in range(2):
            for u in done:
                uu = dot(u, u)
                if uu > 0:
                    c = dot(w, u) / uu
                    torch._foreach_add_(list(w.values()), [u[k] for k in w], alpha=-c)
        done.append(w)
    return [{k: t.to(vectors[i][k].dtype) for k, t in d.items()} for i, d in enumerate(done)]


def flatten(p: Mapping[str, Tensor]) -> Tensor:
    """All parameters concatenated into one 1-D tensor (in dict order)."""
    if not p:
        return torch.zeros(0)
    return torch.cat([v.reshape(-1) for v in p.values()])


def unflatten(vector: Tensor, like: Mapping[str, Tensor]) -> Params:
    """Inverse of :func:`flatten`: split ``vector`` into tensors shaped like ``like``."""
    total = sum(v.numel() for v in like.values())
    if not isinstance(vector, Tensor) or vector.ndim != 1 or vector.numel() != total:
        raise bad_value("unflatten", "vector", f"a 1-D tensor of {total} elements", vector)
    out, i = {}, 0
    for k, v in like.items():
        n = v.numel()
        out[k] = vector[i:i + n].view(v.shape)
        i += n
    return out


def fingerprint(p: Mapping[str, Tensor] | Iterable[tuple[str, Tensor]]) -> str:
    """A SHA-256 over names, shapes, dtypes and exact bytes: equal iff the values are bit-equal."""
    items = p.items() if isinstance(p, Mapping) else p
    h = hashlib.sha256()
    for k, v in items:
        t = v.detach()
        h.update(f"{k}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
