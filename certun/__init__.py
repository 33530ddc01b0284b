"""certun: certified machine unlearning for neural networks.

``plan`` derives the noise σ and the number of noisy steps T for an (ε, δ) target, ``guarantee``
recomputes (ε, δ) from any schedule, ``unlearn`` runs a backend and issues the certificate, and ``verify``
(the function, or ``certun verify`` on the command line) checks the certificate. How the parts fit:
docs/architecture.md. Source of every formula: docs/theory.md (docs/accountant.md).
"""

from certun._unlearn import UnlearnResult, unlearn
from certun.accountant import Guarantee, Method, Mode, Schedule, Variant, guarantee, plan
from certun.certificates import verify
from certun.errors import (
    CertificateFormatError,
    CertunError,
    DatasetFormatError,
    InfeasibleError,
    InvalidParameterError,
    NumericalError,
    SolverError,
    UnlearningRunError,
    UnsupportedModelError,
)

__version__ = "0.1.0"


def get_backend(name: str):
    """The registered backend called ``name`` (``"torch"``, ``"numpy"``); see :mod:`certun.backends`."""
    from certun.backends import get_backend as _get_backend

    return _get_backend(name)


__all__ = [
    "__version__",
    "plan",
    "guarantee",
    "get_backend",
    "unlearn",
    "UnlearnResult",
    "verify",
    "Schedule",
    "Guarantee",
    "Variant",
    "Mode",
    "Method",
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
