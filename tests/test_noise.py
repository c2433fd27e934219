"""Closed-form checks of the NoisyNN noise kinds on small tensors."""
import pytest
import torch

from pipeline_src.spec.method_spec import resolve_method, resolve_noise
from pipeline_src.methods.noise import apply_noise, mixing_matrix
from references import optimal_q_quadratic_reference

SHIFT = {"kind": "circular_shift", "strength": 0.3}
OPTIMAL = {"kind": "optimal_q"}


@pytest.mark.parametrize("batch", [1, 2, 5, 8])
@pytest.mark.parametrize("a", [0.0, 0.1, 0.3, 0.4, 0.499])
def test_circular_shift_matrix_rows_sum_to_one_invertible_diagonally_dominant(batch, a):
    m = mixing_matrix({"kind": "circular_shift", "strength": a}, batch)
    assert torch.allclose(m.sum(1), torch.ones(batch, dtype=m.dtype))
    assert abs(torch.linalg.det(m).item()) > 1e-9
    off_diagonal = m.abs().sum(1) - m.diagonal().abs()
    assert bool((m.diagonal().abs() > off_diagonal).all())


def test_circular_shift_matrix_is_exact():
    m = mixing_matrix({"kind": "circular_shift", "strength": 0.25}, 3)
    expected = torch.tensor([[0.75, 0.25, 0.0], [0.0, 0.75, 0.25], [0.25, 0.0, 0.75]], dtype=torch.float64)
    assert torch.equal(m, expected)


def test_half_strength_is_singular_for_even_batch_and_rejected():
    s = torch.eye(4, dtype=torch.float64).roll(1, dims=1)
    assert abs(torch.linalg.det(0.5 * torch.eye(4, dtype=torch.float64) + 0.5 * s).item()) < 1e-12
    with pytest.raises(ValueError, match=r"^strength: 0.5 is greater than or equal to the maximum of 0.5 "
                                         r"\(0 <= a < 0.5: I \+ Q must stay invertible"):
        resolve_noise({"kind": "circular_shift", "strength": 0.5})


@pytest.mark.parametrize("batch", [2, 3, 7])
def test_optimal_q_matrix(batch):
    m = mixing_matrix(OPTIMAL, batch)
    assert torch.allclose(m.sum(1), torch.ones(batch, dtype=m.dtype))
    assert m[0, 0].item() == pytest.approx(2 / (batch + 1)) and m[0, 1].item() == pytest.approx(1 / (batch + 1))
    assert abs(torch.linalg.det(m).item()) > 1e-9


@pytest.mark.parametrize("spec", [SHIFT, OPTIMAL], ids=["circular_shift", "optimal_q"])
def test_linear_kinds_apply_their_matrix(spec):
    x = torch.randn(6, 3, 4, 4, dtype=torch.float64)
    expected = (mixing_matrix(spec, 6) @ x.reshape(6, -1)).reshape_as(x)
    assert torch.allclose(apply_noise(x, spec), expected, rtol=0, atol=1e-12)


def test_circular_shift_sample_receives_next_sample():
    x = torch.tensor([[1.0], [10.0], [100.0]])
    out = apply_noise(x, {"kind": "circular_shift", "strength": 0.25})
    assert out.flatten().tolist() == [0.75 + 2.5, 7.5 + 25.0, 75.0 + 0.25]


def test_class_token_untouched():
    x = torch.randn(4, 5, 3)
    for spec in (SHIFT, OPTIMAL, resolve_noise({"kind": "gaussian"}), {"kind": "impulse", "p": 1.0}):
        out = apply_noise(x, spec, prefix_tokens=1)
        assert torch.equal(out[:, 0], x[:, 0])
        assert not torch.equal(out[:, 1:], x[:, 1:])


def test_prefix_tokens_need_token_tensor():
    with pytest.raises(ValueError, match="needs a \\(B, N, D\\) token tensor"):
        apply_noise(torch.zeros(2, 3), SHIFT, prefix_tokens=1)


def test_circular_shift_noise_term_is_detached_as_in_the_authors_code():
    x = torch.randn(3, 2, requires_grad=True)
    out = apply_noise(x, {"kind": "circular_shift", "strength": 0.4})
    # forward: row 0 = 0.6 x0 + 0.4 x1; backward: x0 + 0.4 (x1 - x0).detach(), so d/dx0 = 1, d/dx1 = 0
    assert torch.allclose(out[0], 0.6 * x[0] + 0.4 * x[1])
    out[0].sum().backward()
    assert torch.equal(x.grad, torch.tensor([[1.0, 1.0], [0.0, 0.0], [0.0, 0.0]]))


def test_optimal_q_one_sample_is_identity():
    x = torch.randn(1, 7)
    assert torch.equal(apply_noise(x, OPTIMAL), x)
    assert torch.equal(mixing_matrix(OPTIMAL, 1), torch.ones(1, 1, dtype=torch.float64))


def test_linear_optimal_q_matches_quadratic_reference():
    x = torch.randn(32, 17, 24)
    linear, reference = apply_noise(x, OPTIMAL), optimal_q_quadratic_reference(x)
    assert ((linear - reference).abs().max() / reference.abs().max()).item() < 1e-5
    exact = (x.double() + x.double().sum(0)) / 33
    assert torch.allclose(reference.double(), exact, rtol=0, atol=1e-5)


def test_impulse_sets_batch_max_and_min_at_rate_p():
    torch.manual_seed(0)
    x = torch.rand(64, 500) * 2 + 3  # values in (3, 5); max/min reached by single elements only
    out = apply_noise(x, {"kind": "impulse", "p": 0.2})
    high, low = out == x.max(), out == x.min()
    # binomial sd of the rate at n=32000, p=0.1 is 0.0017: 5 sd tolerance
    assert abs(high.float().mean().item() - 0.1) < 0.009
    assert abs(low.float().mean().item() - 0.1) < 0.009
    assert torch.equal(out[~(high | low)], x[~(high | low)])


def test_impulse_extremes():
    x = torch.randn(8, 9)
    assert torch.equal(apply_noise(x, {"kind": "impulse", "p": 0.0}), x)
    out = apply_noise(x, {"kind": "impulse", "p": 1.0})
    assert bool(((out == x.max()) | (out == x.min())).all())


def test_gaussian_closed_form_under_seed():
    x = torch.zeros(2, 3)
    torch.manual_seed(5)
    out = apply_noise(x, {"kind": "gaussian", "strength": 0.5, "mean": 1.0, "sd": 2.0})
    torch.manual_seed(5)
    assert torch.equal(out, 0.5 * (torch.randn(2, 3) * 2.0 + 1.0))


def test_defaults_are_filled():
    assert resolve_noise({"kind": "circular_shift"}) == {"kind": "circular_shift", "strength": 0.3}
    assert resolve_noise({"kind": "gaussian", "sd": 0.5}) == {"kind": "gaussian", "strength": 1.0, "mean": 0.0, "sd": 0.5}


@pytest.mark.parametrize("spec, message", [
    ({"kind": "circular_shift", "strength": -0.1}, "strength: -0.1 is less than the minimum of 0 (0 <= a < 0.5: "
                                                   "I + Q must stay invertible and diagonally dominant)"),
    ({"kind": "impulse", "p": 1.5}, "p: 1.5 is greater than the maximum of 1"),
    ({"kind": "gaussian", "sd": -1}, "sd: -1 is less than the minimum of 0"),
    ({"kind": "gaussian", "strength": -2}, "strength: -2 is less than the minimum of 0"),
    ({"kind": "optimal_q", "strength": 0.3}, "noise: unknown key 'strength'; allowed keys: kind"),
    ({"kind": "uniform"}, "kind: 'uniform' is not allowed; allowed values: circular_shift, optimal_q, gaussian, impulse"),
    ({"kind": "circular_shift", "strength": "0.3"}, "strength: '0.3' is not of type 'number'"),
])
def test_noise_errors_are_one_line(spec, message):
    with pytest.raises(ValueError) as err:
        resolve_noise(spec)
    assert str(err.value) == message


def test_optimal_q_needs_two_samples_only_when_it_trains():
    spec = {"label": "q", "name": "noisynn", "noise": OPTIMAL}
    with pytest.raises(ValueError, match=r"^batch_size=1 is out of range for optimal_q in training: batch_size >= 2"):
        resolve_method(spec, 1, 8)
    resolve_method({**spec, "apply_at": "test"}, 1, 8)
    resolve_method(spec, 2, 8)


def test_mixing_matrix_rejects_nonlinear_kind():
    with pytest.raises(ValueError, match="has no mixing matrix"):
        mixing_matrix({"kind": "gaussian"}, 3)
