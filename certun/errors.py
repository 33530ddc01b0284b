"""The error hierarchy of certun.

Every error descends from :class:`CertunError`. Errors about a bad value also descend from
``ValueError`` and carry the offending name, value and what would have been valid, so that a user
(or the CLI) can print one line that says exactly what to change. ``tests/test_errors.py`` pins the
hierarchy.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "CertunError",
    "InvalidParameterError",
    "InfeasibleError",
    "SolverError",
    "NumericalError",
    "UnsupportedModelError",
    "CertificateFormatError",
    "DatasetFormatError",
    "UnlearningRunError",
]


class CertunError(Exception):
    """Base class of every error certun raises on purpose."""


class InvalidParameterError(CertunError, ValueError):
    """A parameter is outside its valid range.

    Args:
        name: the parameter's name as the user wrote it (``"delta"``, ``"C0"``).
        value: the offending value.
        valid: what would be valid, in words (``"in (0, 1)"``).
        hint: optional extra advice.
    """

    def __init__(self, name: str, value: Any, valid: str, hint: str | None = None) -> None:
        self.name = name
        self.value = value
        self.valid = valid
        self.hint = hint
        message = f"{name}={value!r} is invalid: must be {valid}"
        if hint:
            message += f" ({hint})"
        super().__init__(message)


class InfeasibleError(CertunError):
    """No schedule reaches the target within the given budget.

    ``best`` holds the best guarantee reachable within the budget (or ``None`` if none exists), and
    ``best_T`` the number of steps that reaches it, so the caller can relax the target knowingly.
    """

    def __init__(self, message: str, *, best: Any = None, best_T: int | None = None) -> None:
        self.best = best
        self.best_T = best_T
        super().__init__(message)


class SolverError(CertunError, RuntimeError):
    """A root or minimum could not be bracketed or did not converge (a bug or extreme input)."""


class NumericalError(CertunError, ArithmeticError):
    """A NaN or an impossible value appeared in a computation; raised where it appears."""


class UnsupportedModelError(CertunError, ValueError):
    """The model cannot be unlearned soundly as it is.

    ``problems`` lists ``(module_path, reason, remedy)`` triples, all of them, not just the first.
    """

    def __init__(self, problems: list[tuple[str, str, str]]) -> None:
        self.problems = list(problems)
        lines = [f"  - {path or '<model>'}: {reason} -> {remedy}" for path, reason, remedy in self.problems]
        super().__init__(
            f"the model cannot be unlearned soundly ({len(self.problems)} problem(s)):\n" + "\n".join(lines)
        )


class CertificateFormatError(CertunError, ValueError):
    """A certificate file is malformed (not strict JSON, unknown version, schema violation)."""


class DatasetFormatError(CertunError, ValueError):
    """A data file is malformed (bad IDX magic number, truncated, inconsistent sizes)."""


class UnlearningRunError(CertunError, RuntimeError):
    """The unlearning run failed (NaN loss, empty data); no certificate was written."""
