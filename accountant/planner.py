"""Deprecated in 0.2: import these names from :mod:`certun.accountant`. Removed in 0.3."""

from certun.accountant._deprecated import forwarder

__getattr__ = forwarder(__name__, {name: "certun.accountant._planner"
                                   for name in ("DEFAULT_GAMMA", "plan", "guarantee")})
