"""Which axes of a network's parameters and buffers share a hidden-unit permutation.

Hidden units (neurons of a Linear layer, channels of a convolution) can be reordered without
changing the function a network computes, provided every tensor indexed by those units is reordered
the same way: the layer's weight rows and bias, the next layer's weight columns, BatchNorm's
weight, bias, ``running_mean`` and ``running_var``. The *permutation spec* lists, for every entry of
the ``state_dict``, which permutation group (if any) acts on each axis (the notion of Ainsworth et
al., "Git Re-Basin", ICLR 2023).

The spec is inferred from the model's computation graph (``torch.fx`` symbolic tracing): every
Linear/Conv layer opens a new group for its outputs; element-wise activations, dropout, pooling
and normalisation layers carry a group through; a residual addition merges the groups of its two
inputs; ``flatten`` turns a channel group into a block of consecutive features; groups reaching
the model's output stay fixed. Anything else (concatenation, indexing, attention, recurrent
layers, grouped convolutions …) is refused with a clear error rather than guessed.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import InvalidArgumentError

__all__ = ["Axis", "PermutationSpec", "permutation_spec"]

FUNC = "align"
SUPPORTED = ("Linear, Conv/ConvTranspose (groups=1), BatchNorm/LayerNorm/GroupNorm, element-wise activations, "
             "dropout, pooling, flatten, residual additions")


@dataclass(frozen=True)
class Axis:
    """Axis of a tensor permuted by ``group``. ``layout``: ``"plain"`` (one index per unit),
    ``"inner"`` (units in blocks of ``repeat`` consecutive indices: a flattened (C, H, W) channel
    axis) or ``"outer"`` (``repeat`` copies of all units one after another)."""

    group: str
    layout: str = "plain"
    repeat: int = 1

    def index(self, perm: Tensor) -> Tensor:
        """The index along the axis that applies ``perm`` (new unit i = old unit perm[i])."""
        r = torch.arange(self.repeat, device=perm.device)
        if self.layout == "outer":
            return (r[:, None] * len(perm) + perm[None, :]).reshape(-1)
        return (perm[:, None] * self.repeat + r[None, :]).reshape(-1)

    def units_first(self, t: Tensor, axis: int) -> Tensor:
        """``t`` reshaped to (units, everything else) for this axis."""
        t = t.movedim(axis, 0)
        n = t.shape[0] // self.repeat
        if self.layout == "outer":
            return t.reshape(self.repeat, n, -1).transpose(0, 1).reshape(n, -1)
        return t.reshape(n, -1)


@dataclass
class PermutationSpec:
    """``groups``: number of units of each permutation group (named after the layer creating it);
    ``axes``: for each ``state_dict`` entry, one :class:`Axis` or ``None`` per tensor dimension."""

    groups: dict[str, int]
    axes: dict[str, tuple[Axis | None, ...]]

    def members(self, group: str) -> list[tuple[str, int, Axis]]:
        """Every (entry, axis index, Axis) permuted by ``group``."""
        return [(name, i, ax) for name, axes in self.axes.items() for i, ax in enumerate(axes)
                if ax is not None and ax.group == group]


# -- what the tracer knows --------------------------------------------------------------------------
@dataclass(frozen=True)
class _Space:
    """A tensor whose unit axis is permuted by group ``gid``. ``kind``: ``"channel"`` (dim 1 of
    N, C, …) or ``"feature"`` (last dim); ``ndim`` when known; ``flat``: a flattened group."""

    gid: int
    kind: str
    ndim: int | None
    flat: str | None = None


_NT = object()  # a non-tensor value (a size, a shape)

_ELEMENTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Tanh, nn.Sigmoid,
    nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus, nn.Softsign, nn.Tanhshrink, nn.Identity, nn.Softmax,
    nn.LogSoftmax, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.LogSigmoid,
)
_POOL_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
                 nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
                 nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.LPPool1d, nn.LPPool2d)
_ELEMENTWISE_FUNCS = {
    torch.relu, torch.relu_, F.relu, F.relu6, F.elu, F.selu, F.celu, F.gelu, F.silu, F.mish, F.leaky_relu,
    F.hardtanh, F.hardswish, F.hardsigmoid, F.softplus, F.softsign, F.tanhshrink, F.logsigmoid, torch.tanh,
    torch.sigmoid, F.tanh, F.sigmoid, torch.exp, torch.abs, torch.square, torch.neg, operator.neg, torch.clamp,
    F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.softmax, F.log_softmax, torch.softmax,
    torch.log_softmax,
}
_POOL_FUNCS = {F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
               F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.adaptive_max_pool1d,
               F.adaptive_max_pool2d, F.adaptive_max_pool3d}
_COMBINE_FUNCS = {operator.add, operator.sub, operator.mul, operator.truediv, operator.iadd, operator.isub,
                  operator.imul, torch.add, torch.sub, torch.mul, torch.div}
_REDUCE_FUNCS = {torch.mean, torch.sum, torch.amax, torch.amin}
_ELEMENTWISE_METHODS = {"relu", "relu_", "tanh", "sigmoid", "exp", "abs", "square", "neg", "clamp", "softmax",
                        "log_softmax", "contiguous", "clone", "float", "double", "to", "detach"}
_COMBINE_METHODS = {"add", "sub", "mul", "div", "add_", "sub_", "mul_", "div_"}
_REDUCE_METHODS = {"mean", "sum", "amax", "amin"}


def _unsupported(what: str) -> InvalidArgumentError:
    return InvalidArgumentError(f"{FUNC}(): argument 'model' must be built from layers that weight matching "
                                f"supports ({SUPPORTED}); received a model with {what}")


class _Tracer:
    FIXED = 0

    def __init__(self, model: nn.Module):
        self.model = model
        self.parent: dict[int, int] = {self.FIXED: self.FIXED}
        self.size: dict[int, int] = {self.FIXED: 0}
        self.label: dict[int, str] = {self.FIXED: "<fixed>"}
        self.assigned: dict[str, dict[int, tuple[int, str]]] = {}
        self.module_out: dict[str, int] = {}

    # -- union-find over groups ----------------------------------------------------------------
    def find(self, g: int) -> int:
        while self.parent[g] != g:
            self.parent[g] = self.parent[self.parent[g]]
            g = self.parent[g]
        return g

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if ra != self.FIXED and rb != self.FIXED and self.size[ra] != self.size[rb]:
            raise _unsupported(f"an element-wise operation between {self.size[ra]} and {self.size[rb]} units "
                               f"({self.label[ra]!r}, {self.label[rb]!r})")
        lo, hi = min(ra, rb), max(ra, rb)
        self.parent[hi] = lo

    def new_group(self, size: int, label: str) -> int:
        if label in self.module_out:
            return self.module_out[label]
        g = len(self.parent)
        self.parent[g], self.size[g], self.label[g] = g, size, label
        self.module_out[label] = g
        return g

    def assign(self, name: str, axis: int, space: _Space | None, layout: str | None = None) -> None:
        if space is None:
            return
        layout = layout or space.flat or "plain"
        entry = self.assigned.setdefault(name, {})
        if axis in entry:
            old_gid, old_layout = entry[axis]
            if old_layout != layout:
                raise _unsupported(f"the tensor {name!r} used with two different layouts")
            self.union(old_gid, space.gid)
        else:
            entry[axis] = (space.gid, layout)

    def fix(self, value: Any) -> None:
        if isinstance(value, _Space):
            self.union(value.gid, self.FIXED)
        elif isinstance(value, (list, tuple)):
            for v in value:
                self.fix(v)
        elif isinstance(value, dict):
            for v in value.values():
                self.fix(v)

    # -- propagation ---------------------------------------------------------------------------
    def run(self) -> None:
        try:
            graph = torch.fx.symbolic_trace(self.model).graph
        except Exception as exc:
            raise InvalidArgumentError(f"{FUNC}(): argument 'model' must be traceable by torch.fx to find which "
                                       f"units can be permuted; tracing failed with {type(exc).__name__}: "
                                       f"{str(exc).splitlines()[0] if str(exc) else ''}") from exc
        env: dict[Any, Any] = {}

        def value(arg: Any) -> Any:
            if isinstance(arg, torch.fx.Node):
                return env[arg]
            if isinstance(arg, (list, tuple)):
                return type(arg)(value(a) for a in arg)
            return _NT

        for node in graph.nodes:
            args = [value(a) for a in node.args]
            kwargs = {k: value(v) for k, v in node.kwargs.items()}
            if node.op == "placeholder":
                env[node] = None
            elif node.op == "get_attr":
                raise _unsupported(f"a parameter or buffer used directly in forward ({node.target!r})")
            elif node.op == "call_module":
                env[node] = self.call_module(str(node.target), args)
            elif node.op == "call_function":
                env[node] = self.call_function(node, args, kwargs)
            elif node.op == "call_method":
                env[node] = self.call_method(node, args, kwargs)
            elif node.op == "output":
                self.fix(args)

    @staticmethod
    def _first(args: list[Any], what: str) -> _Space | None:
        if not args or args[0] is _NT:
            raise _unsupported(f"{what} applied to a non-tensor")
        x = args[0]
        if isinstance(x, (list, tuple)):
            raise _unsupported(f"{what} applied to a list of tensors")
        return x

    def call_module(self, target: str, args: list[Any]) -> Any:
        m = self.model.get_submodule(target)
        x = self._first(args, f"the layer {target!r}")
        p = f"{target}." if target else ""
        if isinstance(m, nn.Linear):
            if x is not None and x.kind == "channel" and x.flat is None and x.ndim not in (2, None):
                raise _unsupported(f"the Linear layer {target!r} applied to a {x.ndim}-D feature map (flatten first)")
            self.assign(p + "weight", 1, x)
            out = _Space(self.new_group(m.out_features, target), "feature",
                         2 if x is not None and x.flat else (x.ndim if x is not None else None))
            self.assign(p + "weight", 0, out)
            self.assign(p + "bias", 0, out)
            return out
        if isinstance(m, nn.modules.conv._ConvNd):
            if m.groups != 1:
                raise _unsupported(f"the grouped convolution {target!r} (groups={m.groups})")
            if x is not None and (x.kind != "channel" or x.flat is not None):
                raise _unsupported(f"the convolution {target!r} applied to a flattened or feature tensor")
            out = _Space(self.new_group(m.out_channels, target), "channel", len(m.kernel_size) + 2)
            w_in, w_out = (0, 1) if m.transposed else (1, 0)
            self.assign(p + "weight", w_in, x)
            self.assign(p + "weight", w_out, out)
            self.assign(p + "bias", 0, out)
            return out
        if isinstance(m, (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)):
            return self.norm_layer(m, p, target, x)
        if isinstance(m, nn.PReLU):
            if m.weight.numel() > 1:
                self.assign(p + "weight", 0, x)
            return x
        if isinstance(m, _ELEMENTWISE_MODULES):
            return x
        if isinstance(m, _POOL_MODULES):
            return self.pooled(x, target)
        if isinstance(m, nn.Flatten):
            if m.start_dim != 1 or m.end_dim != -1:
                raise _unsupported(f"the Flatten layer {target!r} with start_dim={m.start_dim}, end_dim={m.end_dim}")
            return self.flatten(x)
        raise _unsupported(f"the layer {target!r} ({type(m).__name__})")

    def norm_layer(self, m: nn.Module, p: str, target: str, x: _Space | None) -> _Space | None:
        if isinstance(m, nn.LayerNorm) and len(m.normalized_shape) != 1:
            raise _unsupported(f"the LayerNorm {target!r} over {len(m.normalized_shape)} dimensions")
        if isinstance(m, nn.GroupNorm) and m.num_groups not in (1, m.num_channels):
            raise _unsupported(f"the GroupNorm {target!r} with {m.num_groups} groups of channels")
        if isinstance(m, nn.LayerNorm) and x is not None and x.kind == "channel" and x.ndim not in (2, None):
            raise _unsupported(f"the LayerNorm {target!r} applied across a feature map's last dimension")
        for name in ("weight", "bias", "running_mean", "running_var"):
            if getattr(m, name, None) is not None:
                self.assign(p + name, 0, x)
        return x

    def pooled(self, x: _Space | None, what: str) -> _Space | None:
        if x is not None and (x.kind != "channel" or x.flat is not None):
            raise _unsupported(f"pooling ({what}) over a feature tensor")
        return x

    def flatten(self, x: _Space | None) -> _Space | None:
        if x is None or x.flat is not None:
            return x
        if x.ndim == 2:
            return _Space(x.gid, "feature", 2)
        return _Space(x.gid, "feature", 2, flat="inner" if x.kind == "channel" else "outer")

    def combine(self, spaces: list[Any], what: str) -> Any:
        tensors = [s for s in spaces if s is not _NT]
        if len(tensors) <= 1:
            return tensors[0] if tensors else _NT
        if any(isinstance(s, (list, tuple)) for s in tensors):
            raise _unsupported(f"{what} of lists of tensors")
        first = tensors[0]
        for other in tensors[1:]:
            if first is None or other is None:
                for s in (first, other):
                    if s is not None:
                        self.union(s.gid, self.FIXED)
                first = None
                continue
            if (first.kind, first.flat) != (other.kind, other.flat):
                raise _unsupported(f"{what} of tensors with different layouts")
            self.union(first.gid, other.gid)
        return first

    def reduce(self, x: Any, dim: Any, keepdim: bool, what: str) -> Any:
        if x is None or x is _NT:
            return x
        if dim is None:
            return None  # a total reduction is invariant to any permutation
        dims = [dim] if isinstance(dim, int) else list(dim)
        if not all(isinstance(d, int) for d in dims):
            raise _unsupported(f"{what} over dimensions computed at run time")
        unit = 1 if x.kind == "channel" else -1
        if x.ndim is None:
            if all(d == -1 for d in dims) and x.kind == "feature":
                return None
            raise _unsupported(f"{what} over dimensions {dims} of a tensor of unknown rank")
        norm = {d % x.ndim for d in dims}
        if unit % x.ndim in norm:
            return None  # reducing over the units: invariant
        if 0 in norm:
            raise _unsupported(f"{what} over the batch dimension")
        ndim = x.ndim if keepdim else x.ndim - len(norm)
        return _Space(x.gid, x.kind if x.kind == "feature" or ndim > 2 else "channel", ndim, x.flat)

    def call_function(self, node: torch.fx.Node, args: list[Any], kwargs: dict[str, Any]) -> Any:
        f = node.target
        name = getattr(f, "__name__", str(f))
        if f is getattr or f is operator.getitem:
            if args and args[0] is not _NT and not isinstance(args[0], (list, tuple)):
                if f is getattr:
                    return _NT
                raise _unsupported("indexing of a hidden tensor")
            return _NT
        if f in _ELEMENTWISE_FUNCS:
            return self._first(args, name)
        if f in _POOL_FUNCS:
            return self.pooled(self._first(args, name), name)
        if f is torch.flatten:
            start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
            end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
            if start != 1 or end != -1:
                raise _unsupported(f"torch.flatten(start_dim={start}, end_dim={end})")
            return self.flatten(self._first(args, name))
        if f in _COMBINE_FUNCS:
            return self.combine(args + list(kwargs.values()), name)
        if f in _REDUCE_FUNCS:
            dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
            return self.reduce(self._first(args, name), dim, bool(node.kwargs.get("keepdim", False)), name)
        raise _unsupported(f"the function {name}")

    def call_method(self, node: torch.fx.Node, args: list[Any], kwargs: dict[str, Any]) -> Any:
        meth = str(node.target)
        x = self._first(args, f".{meth}()")
        if meth in ("size", "dim", "numel"):
            return _NT
        if meth in _ELEMENTWISE_METHODS:
            return x
        if meth in _COMBINE_METHODS:
            return self.combine(args + list(kwargs.values()), f".{meth}()")
        if meth == "flatten":
            start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
            end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
            if start != 1 or end != -1:
                raise _unsupported(f".flatten(start_dim={start}, end_dim={end})")
            return self.flatten(x)
        if meth in ("view", "reshape"):
            shape = node.args[1:]
            if len(shape) == 1 and isinstance(shape[0], (list, tuple)):
                shape = tuple(shape[0])
            if len(shape) == 2 and shape[1] == -1 and shape[0] != -1:
                return self.flatten(x)
            raise _unsupported(f".{meth}{tuple(a if isinstance(a, int) else '…' for a in shape)} (only "
                               "x.view(x.size(0), -1) flattening is understood)")
        if meth in _REDUCE_METHODS:
            dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
            return self.reduce(x, dim, bool(node.kwargs.get("keepdim", False)), f".{meth}()")
        raise _unsupported(f"the tensor method .{meth}()")


def permutation_spec(model: nn.Module) -> PermutationSpec:
    """The permutation spec of ``model`` (see the module docstring).

    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> spec = permutation_spec(net)
    >>> spec.groups, spec.axes["2.weight"]
    ({'0': 8}, (None, Axis(group='0', layout='plain', repeat=1)))
    """
    tracer = _Tracer(model)
    tracer.run()
    state = model.state_dict(keep_vars=True)
    groups: dict[str, int] = {}
    axes: dict[str, tuple[Axis | None, ...]] = {}
    for name, t in state.items():
        per_axis: list[Axis | None] = [None] * t.ndim
        for axis, (gid, layout) in tracer.assigned.get(name, {}).items():
            root = tracer.find(gid)
            if root == tracer.FIXED:
                continue
            n = tracer.size[root]
            if t.shape[axis] % n:
                raise _unsupported(f"the tensor {name!r} whose dimension {axis} ({t.shape[axis]}) is not a "
                                   f"multiple of the {n} units that permute it")
            repeat = t.shape[axis] // n
            if repeat > 1 and layout == "plain":
                raise _unsupported(f"the tensor {name!r} whose dimension {axis} ({t.shape[axis]}) does not match "
                                   f"the {n} units feeding it")
            label = tracer.label[root]
            groups[label] = n
            per_axis[axis] = Axis(label, "plain" if repeat == 1 else layout, repeat)
        axes[name] = tuple(per_axis)
    return PermutationSpec(groups, axes)
