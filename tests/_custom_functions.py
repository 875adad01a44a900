"""Custom autograd Functions shared by the curvature tests."""

import numpy as np
import torch


class NumpyTanh(torch.autograd.Function):
    """tanh whose backward runs in NumPy, without @once_differentiable: a first derivative but no
    second (no double backward, no jvp) — double backward through it silently drops its second
    derivative."""

    @staticmethod
    def forward(ctx, x):
        y = torch.from_numpy(np.tanh(x.detach().numpy()))
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return torch.from_numpy(g.detach().numpy() * (1.0 - y.detach().numpy() ** 2))
