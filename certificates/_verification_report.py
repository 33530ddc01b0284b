"""The outcome of a verification: a :class:`Report` of ordered :class:`CheckResult` values.

``Report.ok`` requires that no check FAILed **and** that the ``recompute`` check actually PASSed, so
a report made only of SKIPs never passes (sigstore's "no vacuous success").
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

__all__ = ["CheckResult", "Report", "Status", "printable"]


def printable(text: str) -> str:
    """``text`` with every non-printable character escaped (``\\x1b``, ``\\u202e``, ``\\n``), so strings
    taken from a certificate or a file name can neither move the terminal's cursor, recolour or hide
    output, nor break one report line into two."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape", "backslashreplace").decode("ascii")
                   for c in text)


class Status(str, enum.Enum):
    """Outcome of one check."""

    PASS = "PASS"
    FAIL = "FAIL"
    SKIP = "SKIP"
    WARN = "WARN"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class CheckResult:
    """One check's outcome: its ``name``, a :class:`Status`, and a ``detail`` that says what was
    expected and what was found."""

    name: str
    status: Status
    detail: str

    def to_dict(self) -> dict[str, str]:
        """``{"name", "status", "detail"}``."""
        return {"name": self.name, "status": self.status.value, "detail": self.detail}


@dataclass(frozen=True)
class Report:
    """All check results of one verification, in order."""

    checks: tuple[CheckResult, ...]

    def __getitem__(self, name: str) -> CheckResult:
        for check in self.checks:
            if check.name == name:
                return check
        raise KeyError(name)

    @property
    def ok(self) -> bool:
        """No check FAILed and the guarantee was recomputed and supports the claim."""
        return (all(c.status is not Status.FAIL for c in self.checks)
                and any(c.name == "recompute" and c.status is Status.PASS for c in self.checks))

    @property
    def failures(self) -> tuple[CheckResult, ...]:
        """The FAILed checks."""
        return tuple(c for c in self.checks if c.status is Status.FAIL)

    def to_dict(self) -> dict[str, Any]:
        """``{"ok": bool, "checks": [...]}`` (what ``certun verify --json`` prints)."""
        return {"ok": self.ok, "checks": [c.to_dict() for c in self.checks]}

    def __str__(self) -> str:
        lines = [f"{c.status.value:<5} {c.name:<17} {printable(c.detail)}" for c in self.checks]
        return "\n".join([*lines, "OK" if self.ok else "FAILED"])
