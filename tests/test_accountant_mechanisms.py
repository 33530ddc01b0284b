"""The mechanism registry: every variant dispatches through one table, and a new mechanism is one class
plus one registration. The toy below is the worked example of docs/accountant.md "Adding a mechanism"."""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

import certun
from certun.accountant import (
    Guarantee,
    Method,
    NoiseLeft,
    Schedule,
    Variant,
    forecast,
    guarantee,
    mechanism,
    plan,
    register_mechanism,
    unregister_mechanism,
)
from certun.errors import InvalidParameterError


class ToyVariant(str, enum.Enum):
    """A variant the library does not have (a library mechanism adds its member to Variant instead)."""

    LAPLACE = "laplace_release"


class LaplaceRelease:
    """Toy: one Laplace draw of scale b = sigma0 on the model projected onto the C0 ball.

    Two projected models differ by at most 2·C0 in ℓ1 (one coordinate, for the toy), so the release is
    (2·C0/b, 0)-indistinguishable: ε = 2·C0/b, δ = 0.
    """

    inputs = frozenset({"C0"})
    conversion = "laplace-mechanism"
    exact = False

    def validate(self, schedule: Schedule) -> Mapping[str, Any]:
        if schedule.C0 is None or schedule.sigma0 is None:
            raise InvalidParameterError("sigma0", schedule.sigma0, "> 0 with C0 for laplace_release")
        if schedule.T != 0:
            raise InvalidParameterError("T", schedule.T, "0 for laplace_release (one draw)")
        return {}

    def guarantee(self, schedule: Schedule, *, exact: bool) -> Guarantee:
        return Guarantee(2.0 * schedule.C0 / schedule.sigma0, 0.0)

    def noise_left(self, schedule: Schedule) -> NoiseLeft:
        return NoiseLeft(math.sqrt(2.0) * schedule.sigma0, schedule.C0, "C0", "on the released model")

    def plan(self, target: Guarantee, method: Method, **inputs: Any) -> Schedule:
        C0 = float(inputs["C0"])
        b = 2.0 * C0 / target.eps * (1.0 + 1e-12)  # the smallest scale, nudged to the safe side
        return Schedule(variant=ToyVariant.LAPLACE, T=0, C0=C0, sigma0=b, target=target, method=method,
                        notes=("b = 2*C0/eps",))


@pytest.fixture
def toy() -> Iterator[LaplaceRelease]:
    mech = LaplaceRelease()
    register_mechanism(ToyVariant.LAPLACE, mech)
    try:
        yield mech
    finally:
        unregister_mechanism(ToyVariant.LAPLACE)


def test_a_registered_toy_plans_and_recomputes_through_the_public_api(toy):
    s = certun.plan(0.5, 1e-6, 2.0, variant="laplace_release")
    assert s.variant is ToyVariant.LAPLACE and mechanism("laplace_release") is toy
    assert s.achieved.eps <= 0.5 and s.achieved.delta == 0.0
    assert certun.guarantee(s) == s.achieved == Guarantee(2.0 * 2.0 / s.sigma0, 0.0)
    # the JSON round trip finds the variant in the registry; a stale field cannot carry the old guarantee
    assert Schedule.from_dict(s.to_dict()) == s
    assert dataclasses.replace(s, sigma0=s.sigma0 / 2).achieved.eps == pytest.approx(2 * s.achieved.eps)
    # its own rules apply to schedules built by hand, and options it does not take are refused by name
    with pytest.raises(InvalidParameterError) as info:
        Schedule(variant="laplace_release", T=0, C0=1.0, target=Guarantee(1.0, 0.0))
    assert info.value.name == "sigma0"
    with pytest.raises(InvalidParameterError) as info:
        certun.plan(0.5, 1e-6, 2.0, variant="laplace_release", T=5)
    assert info.value.name == "T" and "laplace_release takes C0" in str(info.value)


def test_an_unregistered_variant_is_refused_with_the_registered_ones_listed(toy):
    unregister_mechanism(ToyVariant.LAPLACE)
    try:
        with pytest.raises(InvalidParameterError) as info:
            plan(0.5, 1e-6, 2.0, variant="laplace_release")
        assert info.value.name == "variant" and "'gradient_clipping'" in str(info.value)
        assert "laplace_release" not in str(info.value).split("must be")[1]
    finally:
        register_mechanism(ToyVariant.LAPLACE, toy)  # the fixture unregisters it


def test_registry_refuses_surprises(toy):
    with pytest.raises(InvalidParameterError, match="not registered yet"):
        register_mechanism(ToyVariant.LAPLACE, toy)  # no silent replacement
    with pytest.raises(InvalidParameterError, match="not built in"):
        unregister_mechanism(Variant.RETRAIN)
    with pytest.raises(InvalidParameterError, match="str enum"):
        register_mechanism("plain_string", toy)  # type: ignore[arg-type]

    class Other(str, enum.Enum):
        CLASH = "retrain"

    with pytest.raises(InvalidParameterError, match="not registered yet"):
        register_mechanism(Other.CLASH, toy)

    class Incomplete(str, enum.Enum):
        X = "incomplete"

    class NoPlan:  # everything but plan
        inputs, conversion, exact = frozenset(), "none", False
        validate = guarantee = LaplaceRelease.validate

    with pytest.raises(InvalidParameterError, match="'plan'"):
        register_mechanism(Incomplete.X, NoPlan())  # type: ignore[arg-type]
    with pytest.raises(InvalidParameterError, match="'inputs'"):
        register_mechanism(Incomplete.X, object())  # type: ignore[arg-type]
    assert all(v != "incomplete" for v in certun.accountant._registry.MECHANISMS)


@pytest.mark.parametrize("variant", list(Variant))
def test_every_variant_has_one_mechanism_that_dispatches(variant):
    mech = mechanism(variant)
    assert mechanism(variant.value) is mech
    assert isinstance(mech.conversion, str) and mech.conversion
    assert mech.exact is (variant is Variant.RETRAIN)
    assert mech.inputs <= {"C0", "C1", "lam", "gamma", "T", "sigma", "C2", "mode", "sigma0", "max_T"}


def test_plan_and_guarantee_go_through_the_table(monkeypatch):
    """Swapping a mechanism's guarantee changes what plan's schedules and guarantee() report: no other path."""
    s = plan(1.0, 1e-5, 1.0, variant="output_perturbation")
    mech = mechanism(Variant.OUTPUT_PERTURBATION)
    monkeypatch.setattr(type(mech), "guarantee", lambda self, schedule, *, exact: Guarantee(0.25, 1e-9))
    fresh = dataclasses.replace(s)
    assert guarantee(fresh) == fresh.achieved == Guarantee(0.25, 1e-9)


def test_schedule_cannot_carry_a_guarantee_other_than_its_fields():
    s = plan(1.0, 1e-5, 1.0, 10.0, T=20)
    forged = Schedule(**{f.name: getattr(s, f.name) for f in dataclasses.fields(s)},
                      achieved=Guarantee(1e-9, 1e-300))
    assert forged.achieved == s.achieved
    louder = dataclasses.replace(s, sigmas=tuple(x / 2 for x in s.sigmas))
    assert louder.achieved.eps > 1.0 and math.isfinite(louder.achieved.eps)


@pytest.mark.parametrize("name", ["variant", "method", "mode"])
def test_an_array_where_an_option_goes_is_a_named_error(name):
    """An array compared with an option name is ambiguous in numpy; it must still be a typed, named refusal."""
    np = pytest.importorskip("numpy")
    bad = np.array(["exact", "exact"])
    kwargs = {"variant": "model_clipping", "C2": 1.0, "T": 5, name: bad}
    with pytest.raises(InvalidParameterError) as info:
        plan(1.0, 1e-5, 1.0, **kwargs)
    assert info.value.name == name and "one of" in str(info.value) and info.value.value is bad
    fields = {"variant": "retrain", "T": 0, "target": Guarantee(1.0, 1e-5), name: bad}
    with pytest.raises(InvalidParameterError) as info:
        Schedule(**fields)
    assert info.value.name == name


def test_plan_never_hands_out_a_schedule_that_misses_its_target(toy, monkeypatch):
    """A mechanism whose plan under-noises (a plug-in bug, or an attack) is caught by the dispatcher."""
    honest = LaplaceRelease.plan

    def cheat(self, target, method, **inputs):
        return dataclasses.replace(honest(self, target, method, **inputs), sigma0=1e-3)

    monkeypatch.setattr(LaplaceRelease, "plan", cheat)
    with pytest.raises(certun.NumericalError, match="misses its target"):
        plan(0.5, 1e-6, 2.0, variant="laplace_release")
    monkeypatch.setattr(LaplaceRelease, "plan", lambda self, target, method, **inputs: plan(0.5, 1e-6, 2.0, 1.0))
    with pytest.raises(certun.NumericalError, match="gradient_clipping"):
        plan(0.5, 1e-6, 2.0, variant="laplace_release")  # a schedule of another variant


def test_forecast_asks_the_mechanism_what_noise_it_leaves(toy):
    """The utility forecast of a registered mechanism uses its own noise (Laplace: std b·√2), not a guess."""
    s = plan(0.5, 1e-6, 2.0, variant="laplace_release")
    f = forecast(s, 100)
    assert f.sigma_eff == math.sqrt(2.0) * s.sigma0 and f.radius == 2.0 and "on the released model" in f.text
