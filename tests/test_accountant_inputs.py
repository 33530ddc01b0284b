"""Inputs users really pass to the accountant: numpy scalars, 0-d tensors, ints; stale schedules; T's cost."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

import certun
from certun import InvalidParameterError, Schedule, guarantee, plan
from certun.accountant import Guarantee

torch = pytest.importorskip("torch")

BASE = dict(eps=1.0, delta=1e-5, C0=10.0, C1=1.0, lam=0.0)


def _scalars(x: float) -> list:
    """The forms of the real number ``x`` that users hand over from numpy and torch code."""
    forms = [np.float32(x), np.float64(x), np.array(x), np.array([x]), torch.tensor(x), torch.tensor([x]),
             torch.tensor(x, dtype=torch.float64)]
    if float(x).is_integer():
        forms += [int(x), np.int64(int(x)), torch.tensor(int(x))]
    return forms


@pytest.mark.parametrize("name", ["eps", "delta", "C0", "C1", "lam", "gamma"])
def test_plan_accepts_numpy_scalars_and_0d_tensors(name):
    """``plan(1, 1e-5, np.float32(10), 1)`` plans exactly what the Python floats plan (not a range error)."""
    values = dict(BASE, gamma=0.125, lam=0.5 if name == "lam" else 0.0, delta=0.25 if name == "delta" else 1e-5)
    expected = plan(**values)
    for form in _scalars(values[name]):
        got = plan(**dict(values, **{name: form}))
        assert (got.T, got.sigma, got.C0, got.C1, got.lam, got.gamma) == (
            expected.T, expected.sigma, expected.C0, expected.C1, expected.lam, expected.gamma), repr(form)
        assert all(type(v) is float for v in (got.C0, got.C1, got.lam, got.sigma, got.gamma))


def test_the_reviewed_call_plans():
    """The outside review's exact call, which failed with 'must be a real number in [1e-30, 1e+30]'."""
    s = plan(1, 1e-5, np.float32(10), 1, gamma=0.1)
    assert s.C0 == 10.0 and s.T == 100


def test_integer_T_and_sigma_accept_numpy_and_torch_scalars():
    """T and max_T take numpy and torch integers; sigma takes a numpy float."""
    ref = plan(**BASE, gamma=0.1, T=50)
    for T in (np.int64(50), np.int32(50), torch.tensor(50)):
        assert plan(**BASE, gamma=0.1, T=T).sigma == ref.sigma
    ref_t = plan(**BASE, gamma=0.1, sigma=20.0, max_T=500)
    assert plan(**BASE, gamma=0.1, sigma=np.float32(20.0), max_T=np.int64(500)).T == ref_t.T


@pytest.mark.parametrize("bad", [True, np.bool_(True), torch.tensor(True), "1", None, 1j, math.nan, math.inf,
                                 np.float64("nan"), torch.tensor(math.inf), np.array([1.0, 2.0]),
                                 torch.tensor([1.0, 2.0]), [1.0]])
def test_non_real_numbers_are_refused_by_name(bad):
    """Bools, strings, non-finite values and many-element arrays get one clear message naming C0."""
    with pytest.raises(InvalidParameterError) as info:
        plan(**dict(BASE, C0=bad))
    assert info.value.name == "C0"
    assert "real number" in str(info.value) and "[1e-30, 1e+30]" in str(info.value)


@pytest.mark.parametrize("bad", [np.float64(5.0), 5.0, torch.tensor(5.0), np.bool_(True), torch.tensor(True)])
def test_T_must_be_an_integer(bad):
    """A float-valued T (even 5.0) or a bool is refused: T counts steps."""
    with pytest.raises(InvalidParameterError) as info:
        plan(**BASE, T=bad)
    assert info.value.name == "T" and "integer" in str(info.value)


def test_schedule_accepts_numpy_scalars():
    """Schedule's own validation takes numpy/torch scalars and stores Python floats and ints."""
    s = Schedule(variant="gradient_clipping", T=np.int64(3), C0=np.float32(2.0), C1=torch.tensor(1.0),
                 lam=np.float64(0.0), gammas=(np.float32(0.5),) * 3, sigmas=(torch.tensor(4.0),) * 3,
                 target=Guarantee(1.0, 1e-5))
    assert type(s.T) is int and s.T == 3
    assert all(type(v) is float for v in (s.C0, s.C1, s.lam, *s.gammas, *s.sigmas))
    with pytest.raises(InvalidParameterError, match="C0"):
        dataclasses.replace(s, C0=np.bool_(True))


# ------------------------------------------------------------------------------- stale guarantees
def test_replace_sigmas_recomputes_the_guarantee():
    """``dataclasses.replace(schedule, sigmas=...)`` must not keep the old guarantee (measured: 1.0 for 2.14)."""
    s = plan(**BASE, gamma=0.1)
    weaker = dataclasses.replace(s, sigmas=tuple(v * 0.5 for v in s.sigmas))
    assert weaker.achieved == guarantee(weaker)
    assert weaker.achieved.eps > 2.0 > s.achieved.eps
    assert weaker.to_dict()["achieved_eps"] == weaker.achieved.eps


def test_a_passed_achieved_is_never_stored():
    """``achieved=`` is accepted for compatibility but the schedule reports what its fields guarantee."""
    s = plan(**BASE, gamma=0.1)
    claimed = Guarantee(0.01, 1e-12)
    forged = dataclasses.replace(s, achieved=claimed)
    assert forged.achieved == guarantee(s) != claimed
    built = Schedule(variant=s.variant, T=s.T, C0=s.C0, C1=s.C1, gammas=s.gammas, sigmas=s.sigmas,
                     target=s.target, achieved=claimed)
    assert built.achieved == guarantee(s)


def test_round_trip_of_an_unchanged_schedule_is_unchanged():
    """to_dict/from_dict of a planned schedule give the same dict (stored certificates keep verifying)."""
    for s in (plan(**BASE, gamma=0.1), plan(1.0, 1e-5, 1.0, variant="output_perturbation"),
              plan(1.0, 1e-5, 1.0, None, 0.0, C2=1.0, T=8, variant="model_clipping"),
              plan(1.0, 1e-5, variant="retrain")):
        d = s.to_dict()
        again = Schedule.from_dict(d)
        assert again == s and again.to_dict() == d


def test_repr_is_short_and_shows_the_derived_guarantee():
    """The repr of a 10,000-step schedule is one short line with σ, γ and the recomputed guarantee."""
    s = plan(**BASE)
    text = repr(s)
    assert len(text) < 1500 and "\n" not in text
    assert f"sigma={s.sigma!r}" in text and f"achieved=({s.achieved.eps!r}" in text
    assert certun.Schedule is Schedule


# ------------------------------------------------------------------------------ T's rule and cost
def test_default_gamma_states_the_rule_and_the_cost_of_10000_steps():
    """``plan(1, 1e-5, C0=10, C1=1)`` gives T = 10,000 (γ defaults to 1e-3): the notes say why and what it costs."""
    s = plan(1, 1e-5, C0=10, C1=1)
    assert s.T == 10_000
    assert s.notes[0].startswith("T rule: T = C0/(gamma*C1)")
    cost = [n for n in s.notes if n.startswith("T = 10000 noisy steps")]
    assert cost and "default step size gamma=0.001" in cost[0] and "set gamma or T explicitly" in cost[0]
    assert "T = 10000 noisy steps" in repr(s)


@pytest.mark.parametrize(("kwargs", "rule"), [
    (dict(T=50), "T rule: T=50 given"),
    (dict(sigma=20.0), "T rule: smallest number of steps"),
    (dict(), "T rule: T = C0/(gamma*C1)"),
])
def test_every_gradient_clipping_plan_names_its_T_rule(kwargs, rule):
    """Which rule chose T is always the first note, and a small T carries no cost warning."""
    s = plan(**BASE, gamma=0.1, **kwargs)
    assert s.notes[0].startswith(rule), s.notes
    assert not any("noisy steps: each is" in n for n in s.notes)


def test_model_clipping_plans_name_their_T_rule_and_cost():
    """Model clipping given σ: T is found by the recursion; above 1,000 steps the cost is spelled out."""
    s = plan(1.0, 1e-5, 1.0, C2=1.0, sigma=0.265, variant="model_clipping")
    assert s.T > 1000 and s.notes[0].startswith("T rule: first step")
    assert any(n.startswith(f"T = {s.T} noisy steps") for n in s.notes)
    s = plan(1.0, 1e-5, 1.0, C2=1.0, T=10, variant="model_clipping")
    assert any(n.startswith("T rule: T=10 given") for n in s.notes)


def test_the_backends_doc_example_does_not_launch_10000_steps():
    """The plan call at the top of docs/backends.md runs a modest number of steps, as its comment says."""
    from pathlib import Path

    doc = (Path(__file__).parent.parent / "docs" / "backends.md").read_text()
    line = next(ln for ln in doc.splitlines() if ln.startswith("schedule = certun.plan("))
    s = eval(line.split("=", 1)[1].split("#")[0], {"certun": certun})
    assert s.T < 1000 and f"{s.T} steps" in line


# ---------------------------------------------------------------- options that do not apply
@pytest.mark.parametrize("kwargs", [dict(T=5), dict(sigma=2.0), dict(sigma0=1.0), dict(C1=1.0), dict(C2=1.0),
                                    dict(mode="noise_after_projection"), dict(max_T=10), dict(lam=0.5),
                                    dict(gamma=0.1)])
def test_output_perturbation_refuses_options_it_would_ignore(kwargs):
    """Output perturbation is one draw: step options are refused by name, not silently dropped."""
    (name, _value), = kwargs.items()
    with pytest.raises(InvalidParameterError) as info:
        plan(1.0, 1e-5, 1.0, variant="output_perturbation", **kwargs)
    assert info.value.name == name and "output_perturbation" in str(info.value)


def test_output_perturbation_accepts_the_defaults_spelled_out():
    """lam=0 and the default γ passed explicitly mean nothing was asked: accepted (as numpy scalars too)."""
    ref = plan(1.0, 1e-5, 1.0, variant="output_perturbation")
    assert plan(1.0, 1e-5, 1.0, None, np.float64(0.0), gamma=1e-3, variant="output_perturbation") == ref


@pytest.mark.parametrize("kwargs", [dict(C0=1.0), dict(T=5), dict(sigma=1.0), dict(gamma=0.1)])
def test_retrain_refuses_noise_options(kwargs):
    """Retraining needs no noise parameters; passing one is a mistake worth naming."""
    (name, _), = kwargs.items()
    with pytest.raises(InvalidParameterError) as info:
        plan(1.0, 1e-5, variant="retrain", **kwargs)
    assert info.value.name == name


def test_output_perturbation_note_does_not_contradict_the_closed_form_range():
    """At eps >= 1 the classic formula is invalid: the note says so instead of quoting it as an alternative."""
    assert "valid only for eps < 1" in plan(1.0, 1e-5, 1.0, variant="output_perturbation").notes[0]
    assert "valid only" not in plan(0.5, 1e-5, 1.0, variant="output_perturbation").notes[0]


def test_guarantee_of_numpy_scalars_is_json_ready():
    """A target built from numpy/torch scalars holds Python floats, so to_dict() serialises as strict JSON."""
    import json

    g = Guarantee(np.float32(1.0), torch.tensor(1e-5, dtype=torch.float64))
    assert type(g.eps) is float and type(g.delta) is float
    s = Schedule(variant="gradient_clipping", T=2, C0=1.0, C1=1.0, gammas=(0.5, 0.5), sigmas=(4.0, 4.0), target=g)
    json.dumps(s.to_dict(), allow_nan=False)
    with pytest.raises(InvalidParameterError):
        Guarantee(True, 1e-5)


def test_copies_and_pickles_do_not_transport_a_cached_guarantee():
    """A cached ``achieved`` planted on an instance does not survive copy, deepcopy or pickle."""
    import copy
    import pickle

    s = plan(**BASE, gamma=0.1)
    honest = s.achieved
    object.__setattr__(s, "_achieved", Guarantee(0.001, 1e-20))  # tampering with the cache
    for clone in (copy.copy(s), copy.deepcopy(s), pickle.loads(pickle.dumps(s))):
        assert clone == s and clone.achieved == honest
