"""Deprecated in 0.2: import these names from :mod:`certun.accountant` (``integer`` and ``real_number``
from ``certun._validation``). Removed in 0.3."""

from certun.accountant._deprecated import forwarder

_NAMES = {name: "certun.accountant._schedule" for name in (
    "MAX_DELTA", "MAX_EPS", "MAX_SCALE", "MAX_STEPS", "MIN_DELTA", "MIN_SCALE", "SCHEDULE_VERSION",
    "Variant", "Mode", "Method", "Guarantee", "Schedule")}
_NAMES.update(integer="certun._validation", real_number="certun._validation")
__getattr__ = forwarder(__name__, _NAMES)
