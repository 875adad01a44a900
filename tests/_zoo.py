"""A zoo of model families for differential testing, and a naive reference independent of lossatlas.

``FAMILIES`` maps a name to a factory returning a :class:`Case`: a model (with whatever state it
carries: BatchNorm statistics, frozen parameters, tied weights), a loss or a closure, ``N`` samples
of data and the options of the Problem. Tests iterate the registry (contract tests driven by a
registry, as captum does): every family × every evaluation path × every batching must give the
values of :func:`reference`, a plain float64 loop.

The reference knows nothing of lossatlas: a fresh float64 deep copy of the model in eval mode,
``torch.func.functional_call`` per batch at θ + Σ aᵢdᵢ formed from scratch, the dataset loss
Σ_b n_b ℓ_b / N (Σ_b ℓ_b / N for ``reduction="sum"``), and for ``bn="recalibrate"`` BatchNorm
statistics recomputed at every point by a plain loop: each BatchNorm layer's input is captured on
every batch (BatchNorm layers in train mode, as during training), and the running statistics are
the sample-weighted means Σ_b n_b·mean_b / N and Σ_b n_b·var_b / N of the per-batch mean and
unbiased variance.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call

N = 24  # samples of every family: batchings below give 1, 3 equal, 3 ragged and 5 loader batches

#: batching name -> (how the Problem gets the data, batch sizes the reference splits into)
BATCHINGS = {
    "one": None,          # a single batch
    "equal": 8,           # 8, 8, 8
    "ragged": 10,         # 10, 10, 4
    "loader": 5,          # a DataLoader: 5, 5, 5, 5, 4
}


@dataclass
class Case:
    """One model family: what a user would pass to ``lossatlas.Problem``."""

    name: str
    model: nn.Module
    data: Any  # (inputs, targets) / (x1, x2, y) tensors, a dict of tensors, or one tensor; N samples
    loss: Callable[..., Tensor] | None = None
    closure: Callable[..., Any] | None = None
    bn: str = "eval"
    reduction: str = "mean"  # how ``loss``/``closure`` reduces a batch: "mean" (or "none") or "sum"
    vmap: bool = True  # the model runs under torch.vmap (lossatlas refuses or fails cleanly otherwise)
    notes: str = ""
    problem_kw: dict[str, Any] = field(default_factory=dict)

    def problem(self, batching: str, dtype: torch.dtype):
        import lossatlas

        return lossatlas.Problem(self.model, self.loss, self.problem_data(batching), closure=self.closure,
                                 batch_size=None if batching in ("one", "loader") else BATCHINGS[batching],
                                 dtype=dtype, bn=self.bn, metrics=None, **self.problem_kw)

    def problem_data(self, batching: str, batch_size: int | None = None):
        """The data as the Problem gets it (a DataLoader of ``batch_size`` for ``"loader"``)."""
        if batching != "loader":
            return self.data
        batch_size = batch_size or BATCHINGS["loader"]
        from torch.utils.data import DataLoader, Dataset, TensorDataset

        if isinstance(self.data, Mapping):
            data = self.data

            class DictDataset(Dataset):
                def __len__(self):
                    return N

                def __getitem__(self, i):
                    return {k: v[i] for k, v in data.items()}
            return DataLoader(DictDataset(), batch_size=batch_size, shuffle=False)
        tensors = (self.data,) if isinstance(self.data, Tensor) else tuple(self.data)
        return DataLoader(TensorDataset(*tensors), batch_size=batch_size, shuffle=False)

    def sizes(self, batching: str) -> list[int]:
        b = BATCHINGS[batching] or N
        return [min(b, N - s) for s in range(0, N, b)]


FAMILIES: dict[str, Callable[[], Case]] = {}


def family(name: str):
    def register(fn):
        FAMILIES[name] = lambda: fn()
        FAMILIES[name].__doc__ = fn.__doc__
        return fn
    return register


def _gen(seed: int) -> torch.Generator:
    torch.manual_seed(seed)  # module initialisation
    return torch.Generator().manual_seed(1000 + seed)


def _classes(g, k=3):
    return torch.randint(0, k, (N,), generator=g)


def _warm_bn(model: nn.Module, *inputs) -> nn.Module:
    """Running statistics that differ from the initial (0, 1): a few train-mode passes."""
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(*inputs)
    model.eval()
    return model


# -- the families ---------------------------------------------------------------------------------
@family("mlp-tanh")
def _mlp_tanh():
    g = _gen(1)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))
    return Case("mlp-tanh", model, (torch.randn(N, 5, generator=g), _classes(g)), nn.CrossEntropyLoss())


@family("mlp-relu-mse")
def _mlp_mse():
    g = _gen(2)
    x = torch.randn(N, 4, generator=g)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 2))
    return Case("mlp-relu-mse", model, (x, torch.stack([x.sum(1), x[:, 0] * x[:, 1]], 1)), nn.MSELoss())


@family("mlp-inplace-relu")
def _mlp_inplace():
    g = _gen(3)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(inplace=True), nn.Linear(8, 3))
    return Case("mlp-inplace-relu", model, (torch.randn(N, 5, generator=g), _classes(g)), nn.CrossEntropyLoss())


class _HalvesInput(nn.Module):
    """Writes into the batch it is given (an in-place rescaling of its input, outside autograd)."""

    def forward(self, t):
        with torch.no_grad():
            t.mul_(0.5)
        return t


@family("mlp-writes-its-input")
def _mlp_writes_input():
    g = _gen(33)
    model = nn.Sequential(_HalvesInput(), nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
    return Case("mlp-writes-its-input", model, (torch.randn(N, 5, generator=g), _classes(g)), nn.CrossEntropyLoss(),
                notes="the Problem finds the write at construction and hands the model copies of its batches")


@family("mlp-bce-logits")
def _mlp_bce():
    g = _gen(4)
    x = torch.randn(N, 5, generator=g)
    model = nn.Sequential(nn.Linear(5, 6), nn.GELU(), nn.Linear(6, 1))
    return Case("mlp-bce-logits", model, (x, (x[:, :1] > 0).float()), nn.BCEWithLogitsLoss())


@family("mse-sum-reduction")
def _mse_sum():
    g = _gen(5)
    x = torch.randn(N, 3, generator=g)
    model = nn.Sequential(nn.Linear(3, 5), nn.Sigmoid(), nn.Linear(5, 1))
    return Case("mse-sum-reduction", model, (x, x.sum(1, keepdim=True)), nn.MSELoss(reduction="sum"),
                reduction="sum")


@family("label-smoothing-dropout")
def _smooth():
    g = _gen(6)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 4))
    model.train()  # left in train mode: evaluation must switch dropout off (on a copy)
    return Case("label-smoothing-dropout", model, (torch.randn(N, 6, generator=g), _classes(g, 4)),
                nn.CrossEntropyLoss(label_smoothing=0.1))


@family("nll-logsoftmax")
def _nll():
    g = _gen(7)
    model = nn.Sequential(nn.Linear(5, 6), nn.Softplus(), nn.Linear(6, 3), nn.LogSoftmax(dim=1))
    return Case("nll-logsoftmax", model, (torch.randn(N, 5, generator=g), _classes(g)), nn.NLLLoss())


class _CNNBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 2 * 2, 3)

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x)))
        h = torch.relu(self.bn2(self.conv2(h)))
        return self.fc(nn.functional.adaptive_avg_pool2d(h, 2).flatten(1))


def _cnn_bn(name, bn):
    g = _gen(8)
    x = 2.0 * torch.randn(N, 2, 6, 6, generator=g) + 0.5
    model = _warm_bn(_CNNBN(), x)
    return Case(name, model, (x, _classes(g)), nn.CrossEntropyLoss(), bn=bn, vmap=bn == "eval")


@family("cnn-bn-eval")
def _cnn_bn_eval():
    return _cnn_bn("cnn-bn-eval", "eval")


@family("cnn-bn-recalibrate")
def _cnn_bn_recal():
    return _cnn_bn("cnn-bn-recalibrate", "recalibrate")


@family("mlp-bn1d-recalibrate")
def _bn1d_recal():
    g = _gen(9)
    x = torch.randn(N, 5, generator=g) * 3 + 1
    model = _warm_bn(nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 6),
                                   nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 3)), x)
    return Case("mlp-bn1d-recalibrate", model, (x, _classes(g)), nn.CrossEntropyLoss(), bn="recalibrate", vmap=False)


@family("conv-transpose")
def _convt():
    g = _gen(10)
    model = nn.Sequential(nn.ConvTranspose2d(2, 3, 3, stride=2), nn.Tanh(), nn.Flatten(), nn.Linear(3 * 7 * 7, 2))
    x = torch.randn(N, 2, 3, 3, generator=g)
    return Case("conv-transpose", model, (x, torch.randn(N, 2, generator=g)), nn.MSELoss())


@family("grouped-conv")
def _grouped():
    g = _gen(11)
    model = nn.Sequential(nn.Conv2d(4, 8, 3, groups=2), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=8),  # grouped, depthwise
                          nn.Flatten(), nn.Linear(8, 3))
    return Case("grouped-conv", model, (torch.randn(N, 4, 5, 5, generator=g), _classes(g)), nn.CrossEntropyLoss())


@family("conv1d-sequence")
def _conv1d():
    g = _gen(12)
    model = nn.Sequential(nn.Conv1d(3, 5, 3, padding=1), nn.SiLU(), nn.AvgPool1d(2), nn.Flatten(), nn.Linear(5 * 4, 3))
    return Case("conv1d-sequence", model, (torch.randn(N, 3, 8, generator=g), _classes(g)), nn.CrossEntropyLoss())


class _EmbedMean(nn.Module):
    def __init__(self, frozen: bool):
        super().__init__()
        self.emb = nn.Embedding(11, 6)
        self.emb.weight.requires_grad_(not frozen)
        self.fc = nn.Linear(6, 3)

    def forward(self, tokens):
        return self.fc(self.emb(tokens).mean(1))


@family("embedding")
def _embedding():
    g = _gen(13)
    return Case("embedding", _EmbedMean(False), (torch.randint(0, 11, (N, 4), generator=g), _classes(g)),
                nn.CrossEntropyLoss())


@family("frozen-embedding-linear")
def _frozen_embedding():
    g = _gen(14)
    return Case("frozen-embedding-linear", _EmbedMean(True), (torch.randint(0, 11, (N, 4), generator=g), _classes(g)),
                nn.CrossEntropyLoss(), notes="defect 1: a fresh frozen-embedding output feeds the folded Linear")


@family("embedding-bag")
def _embedding_bag():
    g = _gen(15)
    model = nn.Sequential(nn.EmbeddingBag(13, 5, mode="mean"), nn.Tanh(), nn.Linear(5, 3))
    return Case("embedding-bag", model, (torch.randint(0, 13, (N, 3), generator=g), _classes(g)), nn.CrossEntropyLoss())


class _FrozenFeatures(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten())
        self.features.requires_grad_(False)
        self.head = nn.Sequential(nn.Linear(3 * 3 * 3, 5), nn.Tanh(), nn.Linear(5, 3))

    def forward(self, x):
        return self.head(self.features(x))


@family("frozen-features")
def _frozen_features():
    g = _gen(16)
    return Case("frozen-features", _FrozenFeatures(), (torch.randn(N, 1, 5, 5, generator=g), _classes(g)),
                nn.CrossEntropyLoss(), notes="a frozen feature extractor's fresh output feeds the folded Linear")


class _Preprocess(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(64, 3)

    def forward(self, x):
        h = torch.cat([x, x * x], dim=1)  # preprocessing inside forward: a fresh tensor at every call
        return self.lin(h)


@family("preprocessing-in-forward")
def _preprocess():
    g = _gen(17)
    return Case("preprocessing-in-forward", _Preprocess(), (torch.randn(N, 32, generator=g), _classes(g)),
                nn.CrossEntropyLoss(), notes="defect 1: the folded Linear's input is computed inside forward")


class _PreprocessBuffer(nn.Module):
    """Preprocessing written into a reused buffer: the folded Linear sees the same tensor (same
    address, shape and strides) for every batch of a size, holding that batch's values."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 3)
        self._buf: dict[int, Tensor] = {}

    def forward(self, x):
        buf = self._buf.get(len(x))
        if buf is None or buf.dtype != x.dtype:
            buf = self._buf[len(x)] = torch.empty(len(x), 8, dtype=x.dtype)
        torch.cat([x, x * x], dim=1, out=buf)
        return self.lin(buf)


@family("preprocessing-into-buffer")
def _preprocess_buffer():
    g = _gen(33)
    return Case("preprocessing-into-buffer", _PreprocessBuffer(), (torch.randn(N, 4, generator=g), _classes(g)),
                nn.CrossEntropyLoss(), notes="defect 1: one address, another batch's values")


@family("layernorm-mlp")
def _layernorm():
    g = _gen(18)
    model = nn.Sequential(nn.Linear(5, 8), nn.LayerNorm(8), nn.GELU(), nn.Linear(8, 3))
    return Case("layernorm-mlp", model, (torch.randn(N, 5, generator=g), _classes(g)), nn.CrossEntropyLoss())


@family("groupnorm-cnn")
def _groupnorm():
    g = _gen(19)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.GroupNorm(2, 4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 3 * 3, 3))
    return Case("groupnorm-cnn", model, (torch.randn(N, 2, 5, 5, generator=g), _classes(g)), nn.CrossEntropyLoss())


class _Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(3, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)  # packed in_proj_weight
        self.norm = nn.LayerNorm(8)
        self.out = nn.Linear(8, 3)

    def forward(self, x):
        h = self.embed(x)
        a, _ = self.attn(h, h, h, need_weights=False)
        return self.out(self.norm(h + a).mean(1))


@family("attention")
def _attention():
    g = _gen(20)
    return Case("attention", _Attention(), (torch.randn(N, 5, 3, generator=g), _classes(g)), nn.CrossEntropyLoss())


@family("transformer-encoder")
def _transformer():
    g = _gen(21)

    class Enc(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=12, dropout=0.0, batch_first=True)
            self.head = nn.Linear(8, 2)

        def forward(self, x):
            return self.head(self.layer(x).mean(1))
    return Case("transformer-encoder", Enc(), (torch.randn(N, 4, 8, generator=g), torch.randn(N, 2, generator=g)),
                nn.MSELoss())


class _Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Linear(5, 6)
        self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 6)) for _ in range(2)])
        self.out = nn.Linear(6, 3)

    def forward(self, x):
        h = self.stem(x)
        for b in self.blocks:
            h = h + b(h)
        return self.out(torch.relu(h))


@family("residual")
def _residual():
    g = _gen(22)
    return Case("residual", _Residual(), (torch.randn(N, 5, generator=g), _classes(g)), nn.CrossEntropyLoss())


class _ResBN(nn.Module):
    """A small ResNet block with BatchNorm (the issue's ResNet)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(4)
        self.c1 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        h = torch.relu(self.bn0(self.stem(x)))
        h = torch.relu(h + self.bn1(self.c1(h)))
        return self.fc(h.mean((2, 3)))


@family("resnet-bn-eval")
def _resnet_bn():
    g = _gen(23)
    x = torch.randn(N, 1, 5, 5, generator=g) * 2 - 1
    return Case("resnet-bn-eval", _warm_bn(_ResBN(), x), (x, _classes(g)), nn.CrossEntropyLoss())


class _Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(9, 6)
        self.mix = nn.Linear(6, 6)
        self.out = nn.Linear(6, 9, bias=False)
        self.out.weight = self.emb.weight  # tied input/output embeddings

    def forward(self, tokens):
        return self.out(torch.tanh(self.mix(self.emb(tokens).mean(1))))


@family("tied-weights")
def _tied():
    g = _gen(24)
    data = (torch.randint(0, 9, (N, 3), generator=g), torch.randint(0, 9, (N,), generator=g))
    return Case("tied-weights", _Tied(), data,
                nn.CrossEntropyLoss())


class _Shared(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(4, 5)
        self.shared = nn.Linear(5, 5)  # applied twice: its second input depends on θ
        self.out = nn.Linear(5, 2)

    def forward(self, x):
        h = torch.tanh(self.shared(torch.tanh(self.inp(x))))
        return self.out(torch.tanh(self.shared(h)))


@family("shared-layer-twice")
def _shared():
    g = _gen(25)
    return Case("shared-layer-twice", _Shared(), (torch.randn(N, 4, generator=g), torch.randn(N, 2, generator=g)),
                nn.MSELoss())


def _dict_closure(model_call, batch):
    logits = model_call(batch["x"], mask=batch["mask"])
    return nn.functional.cross_entropy(logits, batch["y"])


class _Masked(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 6)
        self.out = nn.Linear(6, 3)

    def forward(self, x, mask):
        h = torch.tanh(self.lin(x)) * mask.unsqueeze(-1)
        return self.out(h.sum(1) / mask.sum(1, keepdim=True).clamp(min=1))


@family("dict-batch-closure")
def _dict_batch():
    g = _gen(26)
    mask = (torch.rand(N, 5, generator=g) > 0.3).float()
    data = {"x": torch.randn(N, 5, 4, generator=g), "mask": mask, "y": _classes(g)}
    return Case("dict-batch-closure", _Masked(), data, closure=_dict_closure)


def _physics_closure(model_call, batch):
    """A residual loss with no targets: u'(x) ≈ cos(x) by central differences (u(x+h) − u(x−h))/2h,
    plus the boundary condition u(0) = 0. The points x ± h are formed inside the closure."""
    x = batch[0] if isinstance(batch, (list, tuple)) else batch
    h = 0.25
    um, up = model_call(torch.cat([x - h, x + h])).chunk(2)
    residual = (up - um) / (2 * h) - torch.cos(x)
    return (residual ** 2).mean() + model_call(torch.zeros_like(x[:1])).pow(2).mean()


@family("physics-no-targets")
def _physics():
    g = _gen(27)
    model = nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 1))
    return Case("physics-no-targets", model, torch.rand(N, 1, generator=g) * 3, closure=_physics_closure,
                notes="defect 1: the folded first layer's input is formed inside the closure")


def _autoencoder_closure(model_call, batch):
    x = batch[0] if isinstance(batch, (list, tuple)) else batch
    return nn.functional.mse_loss(model_call(x), x)


@family("autoencoder-no-targets")
def _autoencoder():
    g = _gen(32)
    model = nn.Sequential(nn.Linear(6, 3), nn.Tanh(), nn.Linear(3, 6))
    return Case("autoencoder-no-targets", model, torch.randn(N, 6, generator=g), closure=_autoencoder_closure)


class _TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3, 4)
        self.b = nn.Linear(2, 4)
        self.bil = nn.Bilinear(4, 4, 2)

    def forward(self, x1, x2):
        return self.bil(torch.tanh(self.a(x1)), torch.tanh(self.b(x2)))


def _two_input_closure(model_call, batch):
    x1, x2, y = batch
    return nn.functional.mse_loss(model_call(x1, x2), y)


@family("two-inputs-bilinear")
def _two_inputs():
    g = _gen(28)
    data = (torch.randn(N, 3, generator=g), torch.randn(N, 2, generator=g), torch.randn(N, 2, generator=g))
    return Case("two-inputs-bilinear", _TwoInputs(), data, closure=_two_input_closure)


def _metrics_closure(model_call, batch):
    x, y = batch
    out = model_call(x)
    return {"loss": nn.functional.smooth_l1_loss(out, y), "mae": (out - y).abs().mean()}


@family("closure-with-metrics")
def _closure_metrics():
    g = _gen(29)
    x = torch.randn(N, 3, generator=g)
    model = nn.Sequential(nn.Linear(3, 5), nn.ELU(), nn.Linear(5, 1))
    return Case("closure-with-metrics", model, (x, x[:, :1] ** 2), closure=_metrics_closure)


class _GRU(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.GRU(3, 4, batch_first=True)
        self.out = nn.Linear(4, 3)

    def forward(self, x):
        h, _ = self.rnn(x)
        return self.out(h[:, -1])


@family("gru")
def _gru():
    g = _gen(30)
    return Case("gru", _GRU(), (torch.randn(N, 4, 3, generator=g), _classes(g)), nn.CrossEntropyLoss(), vmap=False,
                notes="torch has no vmap batching rule for aten::gru: lossatlas raises EvaluationError")


class _UnusedParam(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.unused = nn.Linear(4, 4)  # never called

    def forward(self, x):
        return self.lin(x)


@family("unused-parameter")
def _unused():
    g = _gen(31)
    return Case("unused-parameter", _UnusedParam(), (torch.randn(N, 4, generator=g), _classes(g)),
                nn.CrossEntropyLoss())


@family("bn-batch-statistics")
def _bn_batch_stats():
    """BatchNorm without running statistics: normalised by each batch's own statistics, also in eval
    mode (so the loss depends on the batching)."""
    g = _gen(34)
    model = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5, track_running_stats=False), nn.Tanh(), nn.Linear(5, 3))
    return Case("bn-batch-statistics", model, (torch.randn(N, 4, generator=g) + 1, _classes(g)), nn.CrossEntropyLoss())


@family("instancenorm-conv")
def _instancenorm():
    g = _gen(35)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.InstanceNorm2d(3, affine=True), nn.ReLU(), nn.Flatten(),
                          nn.Linear(3 * 3 * 3, 2))
    return Case("instancenorm-conv", model, (torch.randn(N, 1, 5, 5, generator=g), _classes(g, 2)),
                nn.CrossEntropyLoss())


class _DictOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(4, 6)
        self.cls = nn.Linear(6, 3)
        self.reg = nn.Linear(6, 1)

    def forward(self, x):
        h = torch.relu(self.body(x))
        return {"logits": self.cls(h), "value": self.reg(h)}


def _dict_out_closure(model_call, batch):
    x, y, v = batch
    out = model_call(x)
    return nn.functional.cross_entropy(out["logits"], y) + 0.5 * nn.functional.mse_loss(out["value"], v)


@family("dict-output-two-heads")
def _dict_out():
    g = _gen(36)
    data = (torch.randn(N, 4, generator=g), _classes(g), torch.randn(N, 1, generator=g))
    return Case("dict-output-two-heads", _DictOut(), data, closure=_dict_out_closure)


@family("partially-frozen-first-layer")
def _partial_frozen():
    g = _gen(37)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3))
    model[0].weight.requires_grad_(False)  # the folded layer's weight is fixed, its bias moves
    return Case("partially-frozen-first-layer", model, (torch.randn(N, 5, generator=g), _classes(g)),
                nn.CrossEntropyLoss())


@family("mse-none-reduction")
def _mse_none():
    g = _gen(38)
    x = torch.randn(N, 3, generator=g)
    model = nn.Sequential(nn.Linear(3, 4, bias=False), nn.Tanh(), nn.Linear(4, 2, bias=False))
    return Case("mse-none-reduction", model, (x, x[:, :2].cos()), nn.MSELoss(reduction="none"))


@family("kldiv-batchmean")
def _kldiv():
    g = _gen(39)
    x = torch.randn(N, 4, generator=g)
    target = torch.softmax(torch.randn(N, 3, generator=g), dim=1)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3), nn.LogSoftmax(dim=1))
    return Case("kldiv-batchmean", model, (x, target), nn.KLDivLoss(reduction="batchmean"))


@family("conv3d-transpose1d")
def _conv3d():
    g = _gen(40)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c3 = nn.Conv3d(1, 2, 2)
            self.t1 = nn.ConvTranspose1d(2, 2, 3, stride=2)
            self.out = nn.Linear(2 * 17, 2)

        def forward(self, x):
            h = torch.tanh(self.c3(x)).flatten(2)  # (N, 2, 8)
            return self.out(torch.tanh(self.t1(h)).flatten(1))
    return Case("conv3d-transpose1d", Net(), (torch.randn(N, 1, 3, 3, 3, generator=g), torch.randn(N, 2, generator=g)),
                nn.MSELoss())


@family("embedding-padding-idx")
def _emb_padding():
    g = _gen(41)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(8, 4, padding_idx=0)
            self.out = nn.Linear(4, 3)

        def forward(self, tokens):
            e = self.emb(tokens)
            return self.out(e.sum(1) / (tokens != 0).sum(1, keepdim=True).clamp(min=1))
    tokens = torch.randint(0, 8, (N, 5), generator=g)
    return Case("embedding-padding-idx", Net(), (tokens, _classes(g)), nn.CrossEntropyLoss())


# -- the naive reference --------------------------------------------------------------------------
def _f64(t):
    return t.to(torch.float64) if isinstance(t, Tensor) and t.is_floating_point() else t


def _map(obj, fn):
    if isinstance(obj, Tensor):
        return fn(obj)
    if isinstance(obj, Mapping):
        return {k: _map(v, fn) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map(v, fn) for v in obj)
    return obj


def split(data, sizes):
    """The batches of ``data`` (contiguous slices of the given sizes), in the data's own layout."""
    out, start = [], 0
    for n in sizes:
        out.append(_map(data, lambda t, s=start, n=n: t[s:s + n]))
        start += n
    return out


def _batch_loss(case: Case, model: nn.Module, params, batch) -> Tensor:
    if case.closure is not None:
        value = case.closure(lambda *a, **kw: functional_call(model, params, a, kw), batch)
        value = value["loss"] if isinstance(value, Mapping) else value
    else:
        x, y = batch
        value = case.loss(functional_call(model, params, (x,)), y)
    return value.mean() if value.ndim else value


def _recalibrated(case: Case, model: nn.Module, params, batches, sizes) -> dict[str, Tensor]:
    """BatchNorm statistics at ``params`` by a plain loop: per-batch mean and unbiased variance of
    each BatchNorm input (BatchNorm in train mode), averaged with weights n_b / N."""
    m = copy.deepcopy(model)
    bns = {name: mod for name, mod in m.named_modules() if isinstance(mod, nn.modules.batchnorm._BatchNorm)}
    sums = {name: [0.0, 0.0] for name in bns}
    captured = {}
    hooks = [mod.register_forward_pre_hook(lambda mod, args, name=name: captured.__setitem__(name, args[0]))
             for name, mod in bns.items()]
    total = sum(sizes)
    try:
        for mod in bns.values():
            mod.train()
        for batch, n in zip(batches, sizes):
            captured.clear()
            _batch_loss(case, m, params, batch)
            for name, x in captured.items():
                dims = [0] + list(range(2, x.ndim))
                sums[name][0] = sums[name][0] + x.mean(dims) * (n / total)
                sums[name][1] = sums[name][1] + x.var(dims, unbiased=True) * (n / total)
    finally:
        for h in hooks:
            h.remove()
    out = {}
    for name, (mean, var) in sums.items():
        out[f"{name}.running_mean"] = mean
        out[f"{name}.running_var"] = var
    return out


def reference(case: Case, sizes, center: Mapping[str, Tensor], directions, coefficients) -> np.ndarray:
    """L(θ + Σ aᵢdᵢ) for each row of ``coefficients``, in float64, by a plain loop."""
    model = copy.deepcopy(case.model).to(torch.float64).eval()
    batches = [_map(b, _f64) for b in split(case.data, sizes)]
    center = {k: v.detach().to(torch.float64) for k, v in center.items()}
    directions = [{k: v.detach().to(torch.float64) for k, v in d.items()} for d in directions]
    total = sum(sizes)
    out = []
    with torch.no_grad():
        for c in np.asarray(coefficients, dtype=np.float64).reshape(len(coefficients), -1):
            p = {k: v.clone() for k, v in center.items()}
            for a, d in zip(c, directions):
                p = {k: p[k] + float(a) * d[k] for k in p}
            full = dict(p)
            if case.bn == "recalibrate":
                full.update(_recalibrated(case, model, p, batches, sizes))
            value = 0.0
            for batch, n in zip(batches, sizes):
                # a fresh copy of the batch per point: a model may write into its inputs
                term = float(_batch_loss(case, model, full, _map(batch, torch.clone)))
                value += term / total if case.reduction == "sum" else term * n / total
            out.append(value)
    return np.array(out)


def random_directions(center: Mapping[str, Tensor], n: int = 2, *, seed: int = 0, scale: float = 0.3):
    """Gaussian directions, each tensor scaled to ``scale`` × the norm of its parameter (or ``scale``
    for a zero parameter), in the centre's dtype."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        d = {}
        for k, v in center.items():
            r = torch.randn(v.shape, generator=g, dtype=torch.float64)
            norm = float(v.double().norm()) or 1.0
            d[k] = (r * (scale * norm / max(float(r.norm()), 1e-12))).to(v.dtype)
        out.append(d)
    return out


def grid_coefficients(ds) -> np.ndarray:
    """The (points, dims) coefficients of a surface's grid in C order, from its coordinates."""
    mesh = np.meshgrid(*(ds[d].values for d in ds.loss.dims), indexing="ij")
    return np.stack([m.reshape(-1) for m in mesh], axis=1)
