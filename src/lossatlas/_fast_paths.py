"""Equivalent, faster formulations of common operations, applied to lossatlas' private objects.

Each computes the same formula as PyTorch's own operation, only in a memory layout whose kernel is
faster on the CPU, or in place where nothing else can read the overwritten tensor; values agree to
rounding (often bit for bit). They are applied to lossatlas' private copy of the model and to its
loss call, never to the user's objects (measured per-point times: docs/benchmarks.md).

* **Cross-entropy over few classes.** ``nn.CrossEntropyLoss`` with class-index targets is
  ``nll_loss(log_softmax(z, dim=1), y)``. ATen vectorises log-softmax along the class axis, which is
  slow when that axis is short: for 1797×10 logits it took 153 µs, while the same log-softmax taken
  over dim 0 of the transposed view ``zᵀ`` (vectorised across samples), with ``nll_loss`` reading the
  (C, N) result as one N-position "image", took 35 µs (4×; slower from ~100 classes, hence the
  bound ``FEW_CLASSES``; at exactly 16 classes ATen's kernel is the faster one).
* **Linear layers with few outputs.** ``y = x Wᵀ + b`` with ``out_features ≤ FEW_OUTPUTS`` runs as
  ``(W xᵀ + b)ᵀ`` (one GEMM with the long sample axis as the output's fast axis): 134 → 77 µs for
  1797×128 inputs and 10 outputs (the BLAS kernel for a 10-column output is poorly blocked).
* **In-place ReLU after an affine layer in an ``nn.Sequential``.** Without autograd, the output of a
  built-in Linear/Conv/BatchNorm layer is a fresh tensor that only the next layer of the container
  reads, so ``relu_`` may overwrite it: no new 0.9 MB tensor per call (≈ 35 µs of page faults and
  memory traffic per ReLU for a 1797×128 activation). The ReLU module itself is not patched, so a
  ReLU instance also called from other code keeps its out-of-place semantics.
* **In-place Tanh/Sigmoid** on the same condition (same kernels, so the same bits), and, without
  autograd, hooks of any kind, JIT tracing or a compiled call, the container calls each child's
  ``forward`` directly instead of ``child(x)`` (≈ 4 µs of ``Module.__call__`` per child and point).
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

FEW_CLASSES = 15  # classes up to which the transposed log-softmax is used (faster for 2-15; at 16 ATen's own kernel wins)
FEW_OUTPUTS = 12  # output features up to which a Linear layer computes (W xᵀ + b)ᵀ (faster for 1-12)


def _is_cpu_float_matrix(t: Any) -> bool:
    return isinstance(t, Tensor) and t.dim() == 2 and t.device.type == "cpu" and t.is_floating_point()


_NLL_ND = getattr(torch._C._nn, "nll_loss_nd", None)


def _reduction_enum(reduction: str) -> int:
    try:
        return torch.nn._reduction.get_enum(reduction)
    except Exception:  # pragma: no cover - an unknown reduction: the loss itself reports it
        return -1


def fast_cross_entropy(loss: Any) -> Callable[[Tensor, Tensor], Tensor] | None:
    """An equivalent, faster callable for an exact ``nn.CrossEntropyLoss`` (or ``F.cross_entropy``)
    without label smoothing; ``None`` for any other loss. The returned function takes the fast path
    for (N, C ≤ FEW_CLASSES) CPU logits with 1-D integer targets and calls ``loss`` otherwise.

    >>> ce = torch.nn.CrossEntropyLoss()
    >>> z, y = torch.randn(50, 10), torch.randint(0, 10, (50,))
    >>> bool(torch.allclose(fast_cross_entropy(ce)(z, y), ce(z, y)))
    True
    """
    if loss is F.cross_entropy:
        weight, ignore_index, reduction = None, -100, "mean"
    elif type(loss) is nn.CrossEntropyLoss and loss.label_smoothing == 0.0:
        weight, ignore_index, reduction = loss.weight, loss.ignore_index, loss.reduction
    else:
        return None
    reduction_enum = _reduction_enum(reduction)

    def cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
        if (_is_cpu_float_matrix(logits) and logits.shape[1] <= FEW_CLASSES and isinstance(targets, Tensor)
                and targets.dim() == 1 and not targets.is_floating_point()):
            # (C, N) log-probabilities read as one "image" of N positions: nll_loss's K-dimensional
            # form takes them without a copy (same weights, ignore_index and reduction)
            log_p = torch.log_softmax(logits.t(), dim=0).unsqueeze(0)
            if _NLL_ND is not None and reduction_enum >= 0 and type(logits) is Tensor and type(targets) is Tensor:
                # what F.nll_loss calls after its argument handling (≈ 8 µs a call saved)
                out = _NLL_ND(log_p, targets.unsqueeze(0), weight, reduction_enum, ignore_index)
            else:
                out = F.nll_loss(log_p, targets.unsqueeze(0), weight=weight, ignore_index=ignore_index,
                                 reduction=reduction)
            return out.squeeze(0) if reduction == "none" else out
        return loss(logits, targets)

    return cross_entropy


def _few_outputs_forward(self: nn.Linear, x: Tensor) -> Tensor:
    if x.dim() == 2 and x.device.type == "cpu":
        if self.bias is None:
            return torch.mm(self.weight, x.t()).t()
        return torch.addmm(self.bias.unsqueeze(1), self.weight, x.t()).t()
    return F.linear(x, self.weight, self.bias)


_FRESH_OUTPUT = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                 nn.ConvTranspose3d, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm)


def has_forward_hooks(m: nn.Module) -> bool:
    """Whether ``m`` has forward (pre-)hooks that could see or keep its input or output (the check
    LinearFold makes before it patches a layer)."""
    return bool(m._forward_hooks or m._forward_pre_hooks)


_IN_PLACE = {nn.ReLU: torch.relu_, nn.Tanh: torch.tanh_, nn.Sigmoid: torch.sigmoid_}
#: instance attribute of a layer whose output a container may pass through an in-place ReLU: a
#: function ``f(layer, x)`` computing relu(layer(x)) in fewer passes (set by the linear fold)
RELU_FORWARD = "_lossatlas_forward_relu"


def _no_dispatch_observers() -> bool:
    """True when calling a child's ``forward`` directly is indistinguishable from ``child(x)``: no
    global module hooks and no JIT tracing."""
    g = torch.nn.modules.module
    return not (g._global_forward_hooks or g._global_forward_pre_hooks or g._global_backward_hooks
                or g._global_backward_pre_hooks or torch._C._get_tracing_state())


def _direct(m: nn.Module) -> bool:
    """``m`` has no hooks and no compiled call: ``m.forward(x)`` is exactly ``m(x)``."""
    return not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
                or getattr(m, "_compiled_call_impl", None) is not None)


def _sequential_forward(self: nn.Sequential, x: Any) -> Any:
    inplace_ok = not torch.is_grad_enabled()
    direct = inplace_ok and _no_dispatch_observers()
    fresh = False  # x is the fresh output of a built-in affine/normalisation layer
    children = list(self._modules.values())
    skip = False
    for i, m in enumerate(children):
        if skip:  # a ReLU already applied by the layer before it
            skip = False
            continue
        if direct and _direct(m):
            relu_forward = m.__dict__.get(RELU_FORWARD)
            if (relu_forward is not None and type(m) in _FRESH_OUTPUT and i + 1 < len(children)
                    and type(children[i + 1]) is nn.ReLU and _direct(children[i + 1])):
                x = relu_forward(m, x)  # relu(m(x)): what m(x) and the in-place ReLU below compute
                skip = True
                fresh = False
                continue
            if fresh and type(m) in _IN_PLACE:
                x = _IN_PLACE[type(m)](x)
                fresh = False
                continue
            x = m.forward(x)  # the instance's forward (a lossatlas patch or the fold) or the class's
        elif fresh and inplace_ok and type(m) is nn.ReLU and not has_forward_hooks(m):
            x = torch.relu_(x)
            fresh = False
            continue
        else:
            x = m(x)
        fresh = type(m) in _FRESH_OUTPUT and isinstance(x, Tensor) and not has_forward_hooks(m)
    return x


def patch_private_module(module: nn.Module) -> list[str]:
    """Give lossatlas' private ``module`` the faster equivalent forwards (instance attributes; the
    classes are untouched): exact ``nn.Linear`` layers with ``out_features ≤ FEW_OUTPUTS`` use the
    transposed GEMM, exact ``nn.Sequential`` containers apply a ReLU that follows a built-in layer in
    place and call their children without ``Module.__call__`` when autograd is off and nothing could
    observe the difference. Returns the patched modules' names.

    >>> net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3))
    >>> x = torch.randn(20, 8)
    >>> before = net(x)
    >>> patch_private_module(net)
    ['', '2']
    >>> with torch.no_grad():
    ...     bool(torch.allclose(net(x), before))
    True
    """
    patched = []
    for name, m in module.named_modules():
        if "forward" in m.__dict__:
            continue
        if type(m) is nn.Linear and m.out_features <= FEW_OUTPUTS:
            m.forward = types.MethodType(_few_outputs_forward, m)
            patched.append(name)
        elif type(m) is nn.Sequential and any(type(c) in _IN_PLACE for c in m):
            m.forward = types.MethodType(_sequential_forward, m)
            patched.append(name)
    return patched
