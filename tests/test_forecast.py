"""The utility forecast: noise left on the released iterate against the ball radius, from public inputs."""

from __future__ import annotations

import math

import pytest

import certun
from certun.accountant import forecast
from certun.errors import InvalidParameterError


def test_output_perturbation_noise_norm_is_sigma0_sqrt_d() -> None:
    s = certun.plan(1.0, 1e-5, 1.0, None, 0.0, variant="output_perturbation")
    f = forecast(s, 10_000)
    assert f.noise_norm == pytest.approx(s.sigma0 * 100.0)
    assert f.radius == 1.0 and f.erases
    assert "erase" in f.text and "docs/theory.md#utility-limit" in f.text


def test_gradient_clipping_accumulates_contracted_noise() -> None:
    s = certun.plan(1.0, 1e-5, 1.0, 10.0, 50.0, T=47)
    rho = 1.0 - s.gamma * s.lam
    expected = s.sigma * math.sqrt(sum(rho ** (2 * k) for k in range(s.T)))
    assert forecast(s, 1).sigma_eff == pytest.approx(expected, rel=1e-12)


def test_small_d_and_large_radius_do_not_erase() -> None:
    s = certun.plan(10.0, 1e-5, 1.0, 10.0, 50.0, T=47)
    f = forecast(s, 1)
    assert f.ratio < 1 and not f.erases


def test_model_clipping_uses_C2_and_retrain_has_none() -> None:
    s = certun.plan(1.0, 1e-5, 1.0, 1.0, 0.0, variant="model_clipping", C2=1.0, T=6)
    f = forecast(s, 100)
    assert f.radius_name == "C2" and f.sigma_eff == s.sigmas[-1]
    assert forecast(certun.plan(1.0, 1e-5, None, None, 0.0, variant="retrain"), 100) is None


@pytest.mark.parametrize("d", [0, -1, 1.5, True, "10"])
def test_bad_d_is_refused(d: object) -> None:
    s = certun.plan(1.0, 1e-5, 1.0, None, 0.0, variant="output_perturbation")
    with pytest.raises(InvalidParameterError, match="d"):
        forecast(s, d)  # type: ignore[arg-type]


def test_a_model_counts_its_trainable_parameters() -> None:
    torch = pytest.importorskip("torch")
    model = torch.nn.Linear(10, 3)
    model.bias.requires_grad_(False)
    s = certun.plan(1.0, 1e-5, 1.0, None, 0.0, variant="output_perturbation")
    assert forecast(s, model).d == 30


def test_plan_cli_prints_the_forecast(capsys) -> None:
    from certun.cli import main

    assert main(["plan", "--eps", "1", "--delta", "1e-5", "--C0", "1", "--variant", "output_perturbation",
                 "--d", "100000"]) == 0
    out = capsys.readouterr().out
    assert "forecast" in out and "erase" in out
    assert main(["plan", "--eps", "1", "--delta", "1e-5", "--C0", "1", "--variant", "output_perturbation",
                 "--d", "0"]) == 2
