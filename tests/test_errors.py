"""The public error hierarchy is pinned: every error is a CertunError, value errors are ValueErrors."""

from __future__ import annotations

import certun
from certun import errors


def test_hierarchy():
    """Each public error has the documented bases."""
    assert issubclass(errors.InvalidParameterError, errors.CertunError)
    assert issubclass(errors.InvalidParameterError, ValueError)
    assert issubclass(errors.InfeasibleError, errors.CertunError)
    assert issubclass(errors.SolverError, errors.CertunError)
    assert issubclass(errors.SolverError, RuntimeError)
    assert issubclass(errors.NumericalError, ArithmeticError)
    assert issubclass(errors.UnsupportedModelError, ValueError)
    assert issubclass(errors.CertificateFormatError, ValueError)
    assert issubclass(errors.UnlearningRunError, errors.CertunError)
    for name in errors.__all__:
        assert getattr(certun, name) is getattr(errors, name)


def test_invalid_parameter_message():
    """The message names the parameter, the value and what is valid."""
    e = errors.InvalidParameterError("delta", 2.0, "in (0, 1)", hint="a probability")
    assert str(e) == "delta=2.0 is invalid: must be in (0, 1) (a probability)"
    assert (e.name, e.value, e.valid) == ("delta", 2.0, "in (0, 1)")


def test_unsupported_model_lists_every_problem():
    """UnsupportedModelError keeps and prints all problems, not just the first."""
    e = errors.UnsupportedModelError([("bn1", "BatchNorm", "use GroupNorm"), ("fc", "frozen", "unfreeze")])
    assert len(e.problems) == 2 and "bn1" in str(e) and "fc" in str(e)


def test_public_api():
    """certun's __all__ exports the documented entry points."""
    for name in ("plan", "guarantee", "get_backend", "Schedule", "Guarantee"):
        assert name in certun.__all__
