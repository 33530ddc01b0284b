"""The JSON Schemas that ship with certun, one per certificate ``format_version``, and their validator.

Every format version certun ever wrote stays here, so old certificates stay verifiable after the
format changes (a change of format bumps format_version and keeps old versions
verifiable). The validator is JSON Schema draft 2020-12 with three deliberate tightenings:
``integer`` means a JSON integer token, so ``100.0`` is refused where ``T`` or ``d`` must be an
integer (plain JSON Schema would accept it, and RFC 8785 would hash it exactly like ``100``); a
pattern's final ``$`` matches only at the very end (Python's ``$`` also matches before a trailing
newline, so ``"sha256:<hex>\\n"`` passed); and ``format: date-time`` is asserted, so 30 February or
hour 25 is refused.
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
import re
from collections.abc import Mapping
from importlib import resources
from typing import Any

import jsonschema
from jsonschema import Draft202012Validator

from certun.errors import CertificateFormatError

__all__ = ["CERTIFICATE_FORMAT", "FORMAT_VERSION", "SUPPORTED_FORMAT_VERSIONS", "load_schema", "schema_errors"]

#: The ``format`` value of every certun certificate.
CERTIFICATE_FORMAT = "certun.certificate"
#: The version :func:`certun.certificates.issue` writes.
FORMAT_VERSION = 1
#: Version -> schema file (package data). Never remove an entry.
_SCHEMA_FILES = {1: "certificate.v1.schema.json"}
SUPPORTED_FORMAT_VERSIONS = tuple(sorted(_SCHEMA_FILES))


def _is_strict_integer(checker: Any, instance: Any) -> bool:
    return isinstance(instance, int) and not isinstance(instance, bool)


@functools.cache
def _anchored(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern[:-1] + r"\Z" if pattern.endswith("$") and not pattern.endswith("\\$") else pattern)


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Any:
    if isinstance(instance, str) and not _anchored(pattern).search(instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


_FORMATS = jsonschema.FormatChecker(formats=())


@_FORMATS.checks("date-time", raises=ValueError)
def _is_datetime(instance: Any) -> bool:
    """An RFC 3339 date-time that exists (the pattern checks the shape, this the calendar)."""
    if not isinstance(instance, str):
        return True
    _dt.datetime.fromisoformat(instance.replace("Z", "+00:00").replace("z", "+00:00"))
    return True


_StrictValidator = jsonschema.validators.extend(
    Draft202012Validator,
    validators={"pattern": _pattern},
    type_checker=Draft202012Validator.TYPE_CHECKER.redefine("integer", _is_strict_integer),
)


@functools.cache
def load_schema(version: int) -> dict[str, Any]:
    """The JSON Schema of certificate format ``version`` (a fresh copy is not made: do not mutate)."""
    if version not in _SCHEMA_FILES:
        raise CertificateFormatError(
            f"unknown format_version {version!r}; this certun reads format_version "
            f"{', '.join(map(str, SUPPORTED_FORMAT_VERSIONS))}")
    text = resources.files("certun.certificates").joinpath(_SCHEMA_FILES[version]).read_text("utf-8")
    schema = json.loads(text)
    Draft202012Validator.check_schema(schema)
    return schema


@functools.cache
def _validator(version: int) -> Any:
    return _StrictValidator(load_schema(version), format_checker=_FORMATS)


def _path(error: jsonschema.ValidationError) -> str:
    parts = [str(p) if isinstance(p, int) else p for p in error.absolute_path]
    return ".".join(parts) or "<certificate>"


def schema_errors(document: Mapping[str, Any], version: int) -> list[str]:
    """Every schema violation of ``document`` under format ``version``, one line each, in document
    order (empty when valid)."""
    errors = sorted(_validator(version).iter_errors(document), key=lambda e: list(map(str, e.absolute_path)))
    return [f"{_path(e)}: {e.message}" for e in errors]
