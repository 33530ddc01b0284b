"""certun.accountant's public surface is small and deliberate: adding a name means changing this test."""

from __future__ import annotations

import importlib
import inspect
import re
import warnings
from pathlib import Path

import pytest

import certun.accountant as accountant

ROOT = Path(__file__).resolve().parent.parent

PUBLIC = {
    # plan → Schedule → guarantee
    "plan", "guarantee", "Schedule", "Guarantee", "Variant", "Mode", "Method", "DEFAULT_GAMMA", "SCHEDULE_VERSION",
    # the domain of the accounting inputs
    "MIN_SCALE", "MAX_SCALE", "MAX_EPS", "MIN_DELTA", "MAX_DELTA", "MAX_STEPS",
    # one mechanism per variant, one table
    "Mechanism", "NoiseLeft", "mechanism", "register_mechanism", "unregister_mechanism",
    # what a schedule does to a model of d parameters
    "forecast", "Forecast",
    # lower-level maths for verifiers and auditors
    "theta", "log_theta", "eps_from_renyi", "log_delta_from_renyi", "max_renyi_for",
}


def test_all_is_pinned():
    assert set(accountant.__all__) == PUBLIC
    assert len(accountant.__all__) == len(PUBLIC)


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_public_names_exist_and_say_what_they_are(name):
    obj = getattr(accountant, name)
    if inspect.isfunction(obj) or inspect.isclass(obj):
        assert inspect.getdoc(obj), f"{name} has no docstring"


def test_implementation_modules_are_private():
    modules = {p.stem for p in (ROOT / "accountant").glob("*.py")} - {"__init__"}
    public = sorted(m for m in modules if not m.startswith("_"))
    assert public == ["planner", "schedule"]  # 0.1 paths kept for 0.2 as deprecated forwarders only


@pytest.mark.parametrize(("old", "name"), [("schedule", "Schedule"), ("schedule", "MAX_EPS"),
                                           ("planner", "plan"), ("planner", "DEFAULT_GAMMA")])
def test_old_paths_forward_with_a_deprecation_warning(old, name):
    module = importlib.import_module(f"certun.accountant.{old}")
    with pytest.warns(DeprecationWarning, match="import it from certun.accountant"):
        value = getattr(module, name)
    assert value is getattr(accountant, name)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(AttributeError):
            module.solve_monotone  # noqa: B018  (only the 0.1 public names are forwarded)


def test_no_other_part_reaches_into_the_accountant_private_modules():
    pattern = re.compile(r"certun\.accountant\._|from certun\.accountant import _")
    offenders = [str(path.relative_to(ROOT)) for folder in ("backends", "certificates", "certun")
                 for path in (ROOT / folder).rglob("*.py") if pattern.search(path.read_text(encoding="utf-8"))]
    assert offenders == []
