"""Per-layer curvature (issue 16): trace ± stderr and λmax of each block's restricted Hessian H_bb,
checked against the diagonal blocks of the dense float64 Hessian (lossatlas.testing.exact_hessian)."""
import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

import lossatlas  # noqa: E402
from lossatlas import curvature as C  # noqa: E402
from lossatlas.cli import app  # noqa: E402
from lossatlas.errors import InvalidArgumentError, InvalidTypeError  # noqa: E402
from lossatlas.testing import (EIGEN_RTOL, EIGEN_TOL, assert_close, assert_model_unchanged, exact_hessian,  # noqa: E402
                               model_state)

F64 = torch.float64


def mlp():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 3, generator=g), torch.randint(0, 3, (40,), generator=g)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 6), torch.nn.Tanh(), torch.nn.Linear(6, 5), torch.nn.Tanh(),
                              torch.nn.Linear(5, 3))
    return net, torch.nn.CrossEntropyLoss(), x, y


def cnn():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(12, 1, 6, 6, generator=g), torch.randn(12, 1, generator=g)
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3), torch.nn.Softplus(), torch.nn.Flatten(),
                              torch.nn.LayerNorm(48), torch.nn.Linear(48, 1))
    return net, torch.nn.MSELoss(), x, y


def encoder():
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(8, 3, 4, generator=g), torch.randn(8, 1, generator=g)
    torch.manual_seed(2)

    class Enc(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = torch.nn.TransformerEncoder(torch.nn.TransformerEncoderLayer(4, 2, 8, batch_first=True), 1)
            self.head = torch.nn.Linear(4, 1)

        def forward(self, x):
            return self.head(self.enc(x).mean(1))

    return Enc().eval(), torch.nn.MSELoss(), x, y


def dense_blocks(net, loss, x, y):
    """Layer (module) → (λmax, trace) of its diagonal block of the exact float64 Hessian."""
    theta = {k: v.detach() for k, v in net.named_parameters()}
    with sdpa_kernel(SDPBackend.MATH):
        H = exact_hessian(net, loss, [(x, y)], theta)
    out, start = {}, 0
    groups: dict[str, list[tuple[int, int]]] = {}
    for name, v in theta.items():
        groups.setdefault(name.rpartition(".")[0] or name, []).append((start, start + v.numel()))
        start += v.numel()
    for layer, slices in groups.items():
        idx = torch.cat([torch.arange(s, e) for s, e in slices])
        block = H[idx][:, idx]
        out[layer] = (float(torch.linalg.eigvalsh(block)[-1]), float(block.trace()))
    return out, H


@pytest.mark.parametrize("make", [mlp, cnn, encoder], ids=["mlp", "cnn", "transformer-encoder"])
def test_per_block_lambda_max_and_trace_equal_the_dense_diagonal_blocks(make):
    net, loss, x, y = make()
    before = model_state(net)
    truth, _ = dense_blocks(net, loss, x, y)
    problem = lossatlas.Problem(net, loss, (x, y), dtype=F64)
    # probes ≥ the largest block: every trace is exact (Σᵢ eᵢᵀ H_bb eᵢ), stderr 0
    probes = max(v.numel() for v in net.parameters()) * 2
    result = C.per_layer(problem, probes=probes, tol=EIGEN_TOL, progress=False)
    assert result.names == list(truth)
    scale = max(abs(v[0]) for v in truth.values())
    for block in result:
        lmax, tr = truth[block.name]
        assert block.converged, block
        assert abs(block.lambda_max - lmax) <= EIGEN_RTOL * scale, block.name
        assert abs(block.lambda_max - lmax) <= block.lambda_max_error + 1e-12 * scale
        assert block.trace.method == "exact" and block.trace.stderr == 0.0
        assert_close(block.trace.value, tr, F64, what=f"trace of {block.name}", factor=100 * max(1.0, scale))
    assert_model_unchanged(net, before)


def test_hutchinson_traces_are_within_their_standard_errors():
    net, loss, x, y = cnn()
    truth, _ = dense_blocks(net, loss, x, y)
    problem = lossatlas.Problem(net, loss, (x, y), dtype=F64)
    result = C.per_layer(problem, probes=20, seed=3, progress=False)
    sampled = [b for b in result if b.trace.method == "hutchinson"]
    assert sampled, "some block must be larger than the probes"
    for block in sampled:
        assert block.trace.samples == 20 and block.trace.stderr > 0
        assert abs(block.trace.value - truth[block.name][1]) <= 4 * block.trace.stderr, block.name
    again = C.per_layer(problem, probes=20, seed=3, progress=False)
    assert [b.trace.value for b in again] == [b.trace.value for b in result]  # same seed, same bytes
    hpp = C.per_layer(problem, probes=60, trace_method="hutch++", progress=False)  # blocks of ≤ 20: exact
    for block in hpp:
        assert abs(block.trace.value - truth[block.name][1]) <= 1e-9 * max(1.0, abs(truth[block.name][1]))


def test_named_blocks_of_parameter_selections():
    net, loss, x, y = mlp()
    _, H = dense_blocks(net, loss, x, y)
    problem = lossatlas.Problem(net, loss, (x, y), dtype=F64)
    result = C.per_layer(problem, blocks={"weights": "*.weight", "first": ["0"]}, probes=100, tol=EIGEN_TOL,
                         progress=False)
    assert result.names == ["weights", "first"]
    names = [n for n, _ in net.named_parameters()]
    sizes = [p.numel() for _, p in net.named_parameters()]
    starts = np.cumsum([0] + sizes)
    for block, members in zip(result, (["0.weight", "2.weight", "4.weight"], ["0.weight", "0.bias"])):
        assert block.params == tuple(members)
        idx = torch.cat([torch.arange(starts[names.index(m)], starts[names.index(m) + 1]) for m in members])
        sub = H[idx][:, idx]
        assert abs(block.lambda_max - float(torch.linalg.eigvalsh(sub)[-1])) <= EIGEN_RTOL * float(H.abs().max())
    assert result["first"].size == 3 * 6 + 6
    rows = result.summary()
    assert rows[0]["block"] == "weights" and set(rows[0]) >= {"trace", "trace_stderr", "lambda_max", "converged"}
    ds = result.to_dataset()
    assert list(ds.block.values) == ["weights", "first"] and ds.attrs["product_method"] == "double-backward"


def test_bad_arguments_are_the_library_errors():
    net, loss, x, y = mlp()
    problem = lossatlas.Problem(net, loss, (x, y))
    with pytest.raises(InvalidArgumentError, match="trace_method"):
        C.per_layer(problem, trace_method="exact", progress=False)
    with pytest.raises(InvalidArgumentError, match="probes"):
        C.per_layer(problem, probes=1, progress=False)
    with pytest.raises(InvalidTypeError, match="blocks"):
        C.per_layer(problem, blocks=["0"], progress=False)
    with pytest.raises(InvalidArgumentError, match="params"):
        C.per_layer(problem, blocks={"x": "nope"}, progress=False)
    with pytest.raises(InvalidTypeError, match="problem"):
        C.per_layer(net, progress=False)
    with pytest.raises(KeyError, match="nope"):
        C.per_layer(problem, params="0", progress=False)["nope"]


def test_figure_has_one_bar_per_block_with_error_bars(tmp_path):
    from lossatlas.plot import per_layer as plot_per_layer

    net, loss, x, y = cnn()
    result = C.per_layer(lossatlas.Problem(net, loss, (x, y)), probes=8, progress=False)
    fig = plot_per_layer(result, title="cnn")
    top, bottom = fig.axes
    assert len(top.patches) == len(bottom.patches) == len(result)
    assert [t.get_text() for t in bottom.get_xticklabels()] == result.names
    from matplotlib.container import ErrorbarContainer

    for ax in (top, bottom):
        (bars,) = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
        assert len(bars.lines[2][0].get_segments()) == len(result)  # one error bar per block
    fig.savefig(tmp_path / "layers.png")
    with pytest.raises(InvalidTypeError):
        plot_per_layer(object())


TARGET = '''
import torch, lossatlas


class Enc(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder_with_a_long_name = torch.nn.TransformerEncoder(
            torch.nn.TransformerEncoderLayer(4, 2, 8, batch_first=True), 1)
        self.head = torch.nn.Linear(4, 1)

    def forward(self, x):
        return self.head(self.encoder_with_a_long_name(x).mean(1))


def make():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 3, 4, generator=g), torch.randn(8, 1, generator=g)
    torch.manual_seed(0)
    return lossatlas.Problem(Enc().eval(), torch.nn.MSELoss(), (x, y))
'''


def test_cli_per_layer_table_is_complete_in_a_pipe_of_80_columns(tmp_path):
    path = tmp_path / "enc.py"
    path.write_text(TARGET)
    fig = tmp_path / "layers.png"
    result = CliRunner().invoke(app, ["hessian", f"{path}:make", "--k", "1", "--no-progress", "--trace-probes", "6",
                                      "--density-iters", "4", "--density-probes", "2", "--per-layer",
                                      "--per-layer-probes", "8", "--per-layer-plot", str(fig)],
                                env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    out = result.output
    assert "…" not in out.split("one per layer")[1].split("per layer:")[0]  # no cell cut short
    for name in ("encoder_with_a_long_name.layers.0.self_attn.out_proj", "encoder_with_a_long_name.layers.0.norm2",
                 "head"):
        assert any(line.strip("│ ").startswith(name + " ") for line in out.splitlines()), name
    for header in ("trace", "± stderr", "λmax", "± error", "status"):
        assert header in out
    flat = " ".join(out.split())
    assert "products: double-backward-math-sdpa (exact)" in flat and f"wrote {fig}" in flat
    assert fig.stat().st_size > 10_000
