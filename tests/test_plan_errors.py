"""Bad input to plan/guarantee gets a typed error that names the value and what would be valid."""

from __future__ import annotations

import math

import pytest

from certun import InfeasibleError, InvalidParameterError, Schedule, guarantee, plan
from certun.errors import CertificateFormatError


@pytest.mark.parametrize(
    ("kwargs", "name", "fragment"),
    [
        (dict(eps=0.0), "eps", "(0, 100]"),
        (dict(eps=-1.0), "eps", "(0, 100]"),
        (dict(eps=math.inf), "eps", "finite"),
        (dict(eps=math.nan), "eps", "finite"),
        (dict(eps=800.0), "eps", "(0, 100]"),
        (dict(delta=0.0), "delta", "[1e-300, 0.5]"),
        (dict(delta=1.0), "delta", "[1e-300, 0.5]"),
        (dict(delta=1.5), "delta", "[1e-300, 0.5]"),
        (dict(delta=1e-310), "delta", "[1e-300, 0.5]"),
        (dict(C0=0.0), "C0", "[1e-30, 1e+30]"),
        (dict(C0=-1.0), "C0", "[1e-30, 1e+30]"),
        (dict(C0=1e-159), "C0", "[1e-30, 1e+30]"),
        (dict(C1=0.0), "C1", "[1e-30, 1e+30]"),
        (dict(C1=None), "C1", "required"),
        (dict(lam=-1.0), "lam", "[0, 1e+30]"),
        (dict(lam=2000.0), "gamma*lam", "< 1"),
        (dict(T=0), "T", "integer >= 1"),
        (dict(T=2.5), "T", "integer"),
        (dict(T=True), "T", "integer"),
        (dict(T=10**15), "T", "<= 10000000"),
        (dict(sigma=0.0), "sigma", "[1e-30, 1e+30]"),
        (dict(sigma=-2.0), "sigma", "[1e-30, 1e+30]"),
        (dict(sigma=1e-200), "sigma", "[1e-30, 1e+30]"),
        (dict(variant="magic"), "variant", "'gradient_clipping'"),
        (dict(method="guess"), "method", "'exact'"),
        (dict(T=10, sigma=1.0), "sigma", "None when T is given"),
        (dict(gamma=0.0), "gamma", "[1e-30, 1e+30]"),
        (dict(eps="1"), "eps", "real number"),
    ],
)
def test_plan_rejects_bad_input(kwargs, name, fragment):
    """Each invalid parameter raises InvalidParameterError naming it and its valid range."""
    args = dict(eps=1.0, delta=1e-5, C0=1.0, C1=10.0, lam=0.0)
    args.update(kwargs)
    with pytest.raises(InvalidParameterError) as info:
        plan(**args)
    assert info.value.name == name
    assert fragment in str(info.value)
    assert isinstance(info.value, ValueError)


def test_model_clipping_needs_C2_and_T_or_sigma():
    """Model clipping without C2, or with neither T nor σ, is refused with the reason."""
    with pytest.raises(InvalidParameterError, match="C2"):
        plan(1.0, 1e-5, 1.0, variant="model_clipping", T=5)
    with pytest.raises(InvalidParameterError, match="give sigma"):
        plan(1.0, 1e-5, 1.0, C2=1.0, variant="model_clipping")
    with pytest.raises(InvalidParameterError, match="C1"):
        plan(1.0, 1e-5, 1.0, C2=1.0, T=5, variant="model_clipping", mode="clip_noise_before_projection")
    with pytest.raises(InvalidParameterError, match="mode"):
        plan(1.0, 1e-5, 1.0, C2=1.0, T=5, variant="model_clipping", mode="sideways")
    with pytest.raises(InvalidParameterError, match=r"closed_form|exact"):
        plan(1.0, 1e-5, 1.0, C2=1.0, T=5, variant="model_clipping", method="closed_form")


def test_initial_noise_that_already_suffices_is_refused():
    """If σ0 alone gives δ ≤ target, plan says to use output perturbation instead of inventing σ."""
    with pytest.raises(InvalidParameterError, match="output_perturbation"):
        plan(1.0, 1e-5, 1.0, C2=1.0, T=5, variant="model_clipping", sigma0=100.0)


def test_closed_form_validity_range():
    """The λ = 0 closed form is refused above ε = L/4, and the classic OP formula for ε ≥ 1."""
    with pytest.raises(InvalidParameterError, match="closed form"):
        plan(5.0, 1e-5, 1.0, 10.0, 0.0, T=10, method="closed_form")
    with pytest.raises(InvalidParameterError, match="< 1"):
        plan(1.0, 1e-5, 1.0, variant="output_perturbation", method="closed_form")


def test_infeasible_gradient_clipping_reports_best():
    """With too little noise no T reaches the target; the error carries the best reachable ε and T."""
    with pytest.raises(InfeasibleError) as info:
        plan(1.0, 1e-5, 1.0, 10.0, 0.0, gamma=1e-3, sigma=0.1)
    assert info.value.best.eps > 1.0
    assert info.value.best_T == 100  # T* = C0/(γC1)
    assert "increase sigma" in str(info.value)


def test_infeasible_model_clipping_is_fast_and_clear():
    """σ far too small for model clipping is refused up front with a lower bound on the steps needed."""
    with pytest.raises(InfeasibleError, match="needs at least"):
        plan(1.0, 1e-5, 1.0, C2=1.0, sigma=0.05, variant="model_clipping")


def test_budget_is_respected():
    """max_T caps the chosen T and a T-for-σ search that would need more steps is infeasible."""
    s = plan(1.0, 1e-5, 1.0, 10.0, 0.0, gamma=1e-3, max_T=50)
    assert s.T == 50 and any("max_T" in n for n in s.notes)
    with pytest.raises(InfeasibleError):
        plan(1.0, 1e-5, 1.0, C2=1.0, sigma=0.5, variant="model_clipping", max_T=10)
    with pytest.raises(InvalidParameterError, match="max_T"):
        plan(1.0, 1e-5, 1.0, 10.0, 0.0, T=100, max_T=50)


def test_output_perturbation_refuses_steps():
    """Output perturbation has no steps: T or σ are refused rather than ignored."""
    with pytest.raises(InvalidParameterError, match="output_perturbation"):
        plan(1.0, 1e-5, 1.0, variant="output_perturbation", T=5)


def test_guarantee_rejects_non_schedules():
    """guarantee() needs a Schedule, not a dict."""
    with pytest.raises(InvalidParameterError):
        guarantee({"variant": "gradient_clipping"})


def test_schedule_validation():
    """A Schedule whose σ list does not match T, or with NaN, is refused on construction."""
    s = plan(1.0, 1e-5, 1.0, 10.0, 0.0, T=10)
    d = s.to_dict()
    d["sigma"], d["sigmas"] = None, [1.0] * 9
    with pytest.raises(CertificateFormatError, match="T=10"):
        Schedule.from_dict(d)
    d["sigmas"] = [math.nan] * 10
    with pytest.raises(CertificateFormatError, match="finite"):
        Schedule.from_dict(d)
    d = s.to_dict()
    d["schedule_version"] = 99
    with pytest.raises(CertificateFormatError, match="schedule_version"):
        Schedule.from_dict(d)
    d = s.to_dict()
    d["surprise"] = 1
    with pytest.raises(CertificateFormatError, match="surprise"):
        Schedule.from_dict(d)


def test_no_foreign_exceptions_at_the_edges_of_the_domain():
    """Inputs at the edges of the domain give a schedule or a certun error, never a math/overflow error."""
    from certun import CertunError

    calls = [
        lambda: plan(100.0, 1e-5, 1.0, 1.0, T=10),
        lambda: plan(1.0, 0.5, 1.0, 1.0, T=10),
        lambda: plan(1.0, 1e-300, 1.0, 1.0, T=10),
        lambda: plan(1.0, 1e-300, 1.0, variant="output_perturbation"),
        lambda: plan(100.0, 1e-5, 1.0, variant="output_perturbation"),
        lambda: plan(1.0, 1e-5, 1e-30, 1e-30, T=10),
        lambda: plan(1.0, 1e-5, 1e30, 1e30, T=10),
        lambda: plan(1.0, 1e-5, 1.0, 1e-3, gamma=1e-6),  # rule T = 1e6: capped, not out of memory
        lambda: plan(100.0, 1e-5, 1.0, C2=1.0, sigma=1.0, variant="model_clipping"),
        lambda: plan(1.0, 1e-5, 1.0, C2=1.0, sigma=1e30, variant="model_clipping"),
        lambda: plan(1.0, 1e-5, 1.0, C2=1.0, sigma=1e-30, variant="model_clipping"),
        lambda: plan(1.0, 1e-5, 1.0, C2=1.0, T=3, sigma0=1e-30, variant="model_clipping"),
    ]
    for call in calls:
        try:
            s = call()
        except CertunError:
            continue
        g = guarantee(s)
        assert not math.isnan(g.eps) and not math.isnan(g.delta)
        assert g.eps <= s.target.eps and g.delta <= s.target.delta


def test_closed_form_sigma_given_that_misses_is_refused():
    """T-for-σ with the λ > 0 closed form refuses (InvalidParameterError on method) when it would miss."""
    from certun.accountant import _gradient_clipping as gc

    raw = gc.closed_form_sigma(1.0, math.log(1e-3), 3.0, 1.0, 1.0, 1 / 32, 1)
    with pytest.raises(InvalidParameterError) as info:
        plan(1.0, 1e-3, 3.0, 1.0, 1.0, gamma=1 / 32, sigma=raw, method="closed_form")
    assert info.value.name == "method"


def test_mode2_with_initial_noise_needs_two_steps():
    """Clip + noise before projection with σ0: one step cannot contract, so T = 1 is refused."""
    with pytest.raises(InvalidParameterError) as info:
        plan(1.0, 1e-5, 1.0, 1.0, C2=1.0, T=1, variant="model_clipping", mode="clip_noise_before_projection",
             sigma0=1.5)
    assert info.value.name == "T"


def test_mode2_with_initial_noise_T_for_sigma():
    """T-for-σ in clip-before-projection with σ0: the non-contracting first step is not mistaken for a stall."""
    s = plan(1.0, 1e-5, 1.0, 1.0, C2=1.0, sigma=0.5, variant="model_clipping", mode="clip_noise_before_projection",
             sigma0=2.0)
    assert s.T >= 2 and guarantee(s).delta <= 1e-5
