"""Permutation alignment (weight matching): the aligned model computes the same function, the
barrier between two independently trained MLPs drops, unsupported structures are refused."""
import copy
import sys

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.func import functional_call

import lossatlas
from lossatlas import examples
from lossatlas._permspec import permutation_spec
from lossatlas.align import permute


def random_perms(spec, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {name: torch.randperm(n, generator=g) for name, n in spec.groups.items()}


def outputs(model, state, x):
    net = copy.deepcopy(model).eval()
    with torch.no_grad():
        return functional_call(net, dict(state), (x,))


def perturbed(model, seed, scale=0.3):
    """A second network of the same architecture, with non-trivial BN buffers."""
    g = torch.Generator().manual_seed(seed)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for k, v in state.items():
        if v.is_floating_point():
            noise = torch.randn(v.shape, generator=g, dtype=v.dtype)
            state[k] = v.abs() + scale * noise.abs() if "running_var" in k else v + scale * noise
    return state


def test_mlp_permutation_preserves_function_and_is_undone():
    torch.manual_seed(0)
    model = examples.mlp([8, 16, 12, 3]).double()
    x = torch.randn(50, 8, dtype=torch.float64)
    a = {k: v.detach() for k, v in model.state_dict().items()}
    spec = permutation_spec(model)
    assert spec.groups == {"0": 16, "2": 12}
    b = permute(a, spec, random_perms(spec))
    assert (outputs(model, a, x) - outputs(model, b, x)).abs().max() < 1e-12
    result = lossatlas.align(a, b, model)
    assert result.distance_before > 1.0 and result.distance_after == 0.0
    assert result.converged and result.objective_after >= result.objective_before
    for k in a:
        assert torch.equal(result.params[k], a[k]), k


def test_cnn_with_batchnorm_params_and_buffers_permuted_consistently():
    x, _ = examples.digits(images=True)
    x = x[:300].double()
    torch.manual_seed(0)
    model = examples.SmallCNN().double()
    a = perturbed(model, 1)
    b = perturbed(model, 2)
    result = lossatlas.align(a, b, model, example=x)
    aligned = result.params
    # the aligned network computes exactly b's function on the data (BN in eval mode uses the buffers)
    diff = (outputs(model, b, x) - outputs(model, aligned, x)).abs().max()
    assert diff < 1e-6, diff
    assert result.max_output_difference is not None and result.max_output_difference < 1e-6
    # BN parameters and buffers follow the channels of the conv before them
    p = result.permutations["features.3"]
    for name in ("weight", "bias", "running_mean", "running_var"):
        assert torch.equal(aligned[f"features.4.{name}"], b[f"features.4.{name}"][p]), name
    assert torch.equal(aligned["features.4.num_batches_tracked"], b["features.4.num_batches_tracked"])
    # the classifier's input features come in blocks of 16 (4×4 positions) per channel
    blocks = aligned["classifier.weight"].reshape(10, 16, 16)
    assert torch.equal(blocks, b["classifier.weight"].reshape(10, 16, 16)[:, p])
    # a random relabelling of a is undone exactly
    shuffled = permute(a, result.spec, random_perms(result.spec, seed=3))
    back = lossatlas.align(a, shuffled, model, example=x)
    assert back.distance_after == 0.0


def test_float32_outputs_within_1e6_on_the_data(cnn_data):
    model, _, x, _ = cnn_data
    a = perturbed(model, 1, scale=0.1)
    b = perturbed(model, 2, scale=0.1)
    result = lossatlas.align(a, b, model, example=x)
    assert (outputs(model, b, x) - outputs(model, result.params, x)).abs().max() < 1e-6


def test_residual_network_groups_merge_through_additions():
    torch.manual_seed(0)
    model = examples.SmallResNet(width=4).double()
    spec = permutation_spec(model)
    # the stem and the two identity-shortcut blocks of stage 1 share one residual stream
    assert spec.axes["blocks.0.conv2.weight"][0].group == spec.axes["stem.0.weight"][0].group
    assert spec.axes["blocks.2.shortcut.0.weight"][0].group == spec.axes["blocks.2.conv2.weight"][0].group
    x = torch.randn(6, 1, 12, 12, dtype=torch.float64)
    state = perturbed(model, 4)
    shuffled = permute(state, spec, random_perms(spec))
    assert (outputs(model, state, x) - outputs(model, shuffled, x)).abs().max() < 1e-10
    assert lossatlas.align(state, shuffled, model, example=x).distance_after == 0.0


def test_barrier_between_two_digit_mlps_drops_after_alignment():
    ea, eb = examples.mlp_digits_pair()
    problem = ea.problem
    before = lossatlas.interpolate(problem, ea.center, eb.center, steps=21, progress=False)
    result = lossatlas.align(ea.center, eb.center, problem)
    after = lossatlas.interpolate(problem, ea.center, result.params, steps=21, progress=False)
    print(f"\nbarrier before alignment {before.attrs['barrier']:.4f}, after {after.attrs['barrier']:.4f}; "
          f"‖b − a‖ {result.distance_before:.2f} → {result.distance_after:.2f} ({result.iterations} sweeps)")
    # the aligned b is the same function as b: same loss at t = 1
    assert abs(after.attrs["loss_b"] - before.attrs["loss_b"]) < 1e-6
    assert result.max_output_difference is not None and result.max_output_difference < 1e-4
    assert before.attrs["barrier"] > 0.2
    assert after.attrs["barrier"] < 0.25 * before.attrs["barrier"]
    assert result.distance_after < result.distance_before


def test_same_seed_same_permutations():
    ea, eb = examples.mlp_digits_pair()
    r1 = lossatlas.align(ea.center, eb.center, ea.model, seed=5, check=False)
    r2 = lossatlas.align(ea.center, eb.center, ea.model, seed=5, check=False)
    for g in r1.permutations:
        assert torch.equal(r1.permutations[g], r2.permutations[g])


class Concat(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.out = torch.nn.Linear(4, 5), torch.nn.Linear(4, 5), torch.nn.Linear(10, 2)

    def forward(self, x):
        return self.out(torch.cat([self.a(x), self.b(x)], dim=1))


class Branchy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 2)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: not traceable
            return self.fc(x)
        return -self.fc(x)


class Sliced(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.out = torch.nn.Linear(4, 6), torch.nn.Linear(3, 2)

    def forward(self, x):
        return self.out(self.fc(x)[:, :3])


@pytest.mark.parametrize("model, words", [
    (Concat(), ["'model'", "cat"]),
    (Branchy(), ["'model'", "traceable"]),
    (Sliced(), ["'model'", "indexing"]),
    (torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3, groups=2), torch.nn.Flatten(), torch.nn.LazyLinear(2)),
     ["grouped convolution"]),
    (torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 2)), ["Embedding"]),
])
def test_unsupported_structures_are_refused_clearly(model, words):
    state = {k: v.detach() for k, v in model.state_dict().items()
             if not isinstance(v, torch.nn.parameter.UninitializedParameter)}
    with pytest.raises(lossatlas.InvalidArgumentError) as info:
        lossatlas.align(state, state, model, check=False)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("align():")
    for w in words:
        assert w in msg, msg


def test_a_misread_structure_is_caught_by_the_function_check(monkeypatch):
    A = sys.modules["lossatlas.align"]  # the module (lossatlas.align is the function)

    torch.manual_seed(0)
    model = examples.mlp([4, 6, 2])
    state = {k: v.detach() for k, v in model.state_dict().items()}
    spec = permutation_spec(model)
    wrong = A.PermutationSpec(spec.groups, {**spec.axes, "2.weight": (None, None)})  # forgets the next layer
    monkeypatch.setattr(A, "permutation_spec", lambda m: wrong)
    shuffled = permute(state, spec, random_perms(spec))
    with pytest.raises(lossatlas.EvaluationError, match="changes its outputs"):
        lossatlas.align(state, shuffled, model)


def test_bad_inputs(classification):
    model, *_ = classification
    a = lossatlas.params_of(model)
    with pytest.raises(lossatlas.InvalidTypeError, match="'b'"):
        lossatlas.align(a, "b.pt", model)
    with pytest.raises(lossatlas.InvalidTypeError, match="'model'"):
        lossatlas.align(a, a, "mlp")
    other = lossatlas.params_of(torch.nn.Linear(3, 2))
    with pytest.raises(lossatlas.ParameterMismatchError):
        lossatlas.align(other, other, model)
    with pytest.raises(lossatlas.ParameterMismatchError):
        lossatlas.align(a, {k: v for k, v in list(a.items())[:-1]}, model)
    with pytest.raises(lossatlas.InvalidArgumentError, match="'max_iter'"):
        lossatlas.align(a, a, model, max_iter=0)
    with pytest.raises(lossatlas.InvalidTypeError, match="'example'"):
        lossatlas.align(a, a, model, example=[1, 2])


def test_alignment_apply_and_modules_as_inputs(classification):
    model, loss_fn, x, y = classification
    twin = copy.deepcopy(model)
    spec = permutation_spec(model)
    shuffled = permute(dict(model.state_dict()), spec, random_perms(spec))
    twin.load_state_dict(shuffled)
    result = lossatlas.align(model, twin, model)
    assert result.distance_after < 1e-6
    again = result.apply(dict(twin.state_dict()))
    for k, v in model.state_dict().items():
        assert torch.allclose(again[k], v)
    assert np.isfinite(result.objective_after)


@given(widths=st.lists(st.integers(1, 9), min_size=1, max_size=3), seed=st.integers(0, 2**16))
def test_random_relabellings_of_random_mlps(widths, seed):
    """Always: the same function, a higher matching objective, a shorter distance (‖b‖ is unchanged, so
    ‖a − Pb‖² = ‖a − b‖² − 2Δobjective). With one hidden layer the single assignment problem is solved
    exactly, so the relabelling is undone; deeper, coordinate ascent may stop at a local optimum."""
    torch.manual_seed(seed)
    model = examples.mlp([5, *widths, 3], activation=torch.nn.Tanh).double()
    state = {k: v.detach() for k, v in model.state_dict().items()}
    spec = permutation_spec(model)
    shuffled = permute(state, spec, random_perms(spec, seed))
    x = torch.randn(20, 5, dtype=torch.float64)
    assert (outputs(model, state, x) - outputs(model, shuffled, x)).abs().max() < 1e-12
    result = lossatlas.align(state, shuffled, model, seed=seed)
    assert result.max_output_difference < 1e-12
    assert result.objective_after >= result.objective_before
    assert result.distance_after <= result.distance_before + 1e-12
    gain = result.objective_after - result.objective_before
    assert result.distance_after ** 2 == pytest.approx(result.distance_before ** 2 - 2 * gain, rel=1e-9, abs=1e-9)
    if len(widths) == 1:
        assert result.distance_after == 0.0
