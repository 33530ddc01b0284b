"""``certun.unlearn``: run a backend, then issue and write the certificate, in one call.

The user's path is three steps: :func:`certun.plan`, :func:`unlearn`, :func:`certun.verify`. The backend
only runs (it returns a :class:`~certun.backends.RunResult` holding the
:class:`~certun.certificates.RunRecord`); the certificate is issued here, by
:func:`certun.certificates.issue`, from the schedule and that record, and written atomically.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from certun.accountant import Schedule
from certun.backends import After, Backend, Clipping, Noise, RunResult, Unlearned, get_backend
from certun.backends.distributed import agreed, issue_on_rank_zero, private_to_rank_zero

# RunRecord: pdoc resolves the field annotations UnlearnResult inherits in this module
from certun.certificates import RunRecord, issue, provenance, write_certificate  # noqa: F401
from certun.errors import InvalidParameterError

__all__ = ["UnlearnResult", "unlearn"]


@dataclass(frozen=True, kw_only=True)
class UnlearnResult(RunResult):
    """A backend's :class:`~certun.backends.RunResult` plus the certificate issued from it.

    Attributes:
        certificate: the issued certificate (a dict), or ``None`` when none may be issued (audit
            controls: ``noise_mode="reuse_first_draw_UNSAFE"`` or injected noise).
        certificate_path: where the certificate was written, if it was.
    """

    certificate: dict[str, Any] | None = None
    certificate_path: Path | None = None


def unlearn(model: Any, retain_data: Any, schedule: Schedule, *, backend: str | Backend = "torch",
            certificate_path: str | os.PathLike | None = None,
            previous: Mapping[str, Any] | bytes | str | os.PathLike | None = None,
            signing_key: Any = None, **options: Any) -> UnlearnResult:
    """Unlearn ``model`` as ``schedule`` says on ``retain_data``, then issue (and write) the certificate.

    Args:
        model, retain_data, schedule: what the backend runs (see its ``unlearn`` docstring).
        backend: a registered backend name (``"torch"``, ``"numpy"``) or a :class:`~certun.backends.Backend`.
        certificate_path: write the certificate there too, atomically (nothing is written on failure).
        previous: the previous certificate of this model's ledger (dict, bytes or path); the new one is
            chained onto it. A previous certificate whose content digest does not match is refused.
        signing_key: an Ed25519 key for an ``eddsa-jcs-2022`` proof (see :mod:`certun.certificates`).
        **options: the backend's options (``seed``, ``clip``, ``center``, ``loss_fn``, ...), or typed groups of
            them: ``unlearned=Unlearned(...)``, ``clipping=Clipping(...)``, ``after=After(...)``,
            ``noise=Noise(...)`` (:mod:`certun.backends`).

    Returns:
        An :class:`UnlearnResult`; its ``certificate`` is ``None`` for audit controls (reused or injected
        noise), which are never certified.

    Raises:
        InvalidParameterError: a bad option, schedule or path, or a path given for an audit control.
        UnsupportedModelError, UnlearningRunError: from the backend; nothing is written.
    """
    def checked() -> tuple[dict[str, Any], Any, Path | None, Any]:
        opts = expand_groups(options)
        runner = get_backend(backend) if isinstance(backend, str) else backend
        if not callable(getattr(runner, "unlearn", None)):
            raise InvalidParameterError("backend", type(backend).__name__, "a backend name or a certun Backend")
        return opts, runner, _certificate_path(certificate_path, opts), provenance.load_previous(previous)

    if options.get("distributed") is None:
        options, runner, path, prev = checked()
    else:  # a rank refusing its certificate path or previous certificate stops every rank at once
        options, runner, path, prev = agreed(checked, "checking the certificate options")
    run = runner.unlearn(model, retain_data, schedule, previous=prev, **options)
    certificate = written = None

    def issue_it() -> dict[str, Any]:
        return issue(schedule, run.record, previous=prev, signing_key=signing_key)

    def write(cert: dict[str, Any]) -> Path | None:
        return None if path is None else Path(write_certificate(cert, path))

    if run.record.extra.get("noise_mode", "fresh") == "fresh":
        if run.record.distributed is None:
            certificate = issue_it()
            written = write(certificate)
        else:  # rank 0 issues once every rank has finished; every rank learns whether it could (docs/distributed.md)
            certificate, written = issue_on_rank_zero(issue_it, write)
    values = {f.name: getattr(run, f.name) for f in fields(RunResult)}
    if run.record.distributed is not None:
        values.update(private_to_rank_zero(values))
    return UnlearnResult(**values, certificate=certificate, certificate_path=written)


#: the typed option groups certun.unlearn accepts, by keyword
_GROUPS: dict[str, type] = {"unlearned": Unlearned, "clipping": Clipping, "after": After, "noise": Noise}


def expand_groups(options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` with the typed groups (``unlearned=``, ``clipping=``, ``after=``, ``noise=``) expanded into the
    backends' keywords. A group together with one of its own keywords is refused (which would hold is ambiguous)."""
    out = {k: v for k, v in options.items() if k not in _GROUPS}
    for name, kind in _GROUPS.items():
        group = options.get(name)
        if group is None:
            continue
        if not isinstance(group, kind):
            raise InvalidParameterError(name, type(group).__name__, f"a certun.backends.{kind.__name__} or None")
        owned = {kind._KEYWORDS.get(f.name, f.name) for f in dataclasses.fields(group)}
        for keyword in sorted(owned & out.keys()):
            raise InvalidParameterError(keyword, out[keyword], f"not given together with {name}=",
                                        hint=f"set it in {kind.__name__}(...) or pass it alone")
        out.update(group.keywords())
    return out


def _certificate_path(certificate_path: Any, options: Mapping[str, Any]) -> Path | None:
    """``certificate_path`` checked before the run: a file path, and none for an audit control."""
    if certificate_path is None:
        return None
    try:
        path = Path(certificate_path)
    except TypeError:
        raise InvalidParameterError("certificate_path", certificate_path, "a file path or None") from None
    if path.is_dir():
        raise InvalidParameterError("certificate_path", str(path), "a file path, not a directory")
    if options.get("noise_mode", "fresh") != "fresh" or options.get("noise_source") is not None:
        raise InvalidParameterError("certificate_path", str(path),
                                    "None for audit controls (reused or injected noise get no certificate)")
    if isinstance(options.get("seed"), Mapping):
        raise InvalidParameterError("certificate_path", str(path), "None for a replay of a previous run's opening "
                                    "(a replay repeats that run's noise and is never certified)")
    return path
