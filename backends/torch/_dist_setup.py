"""What the ranks of a distributed run must share before the noisy phase: identifiers and the noise key.

* Identifiers: each rank declares the records it reads (``retain_ids``, or its loader's dataset
  indices); the certificate's retain tree is built over the UNION of the ranks' identifiers, and its
  forget tree over the union of theirs, with one salt key that rank 0 draws and broadcasts. A rank
  whose declared identifiers include a forgotten one is refused on every rank (declared: what its
  batches hold is not checked, as in a single process).
* Noise key: rank 0 takes the secret (fresh from the OS, or the test seed) and broadcasts it inside
  the process group; every rank derives the same key from it and its own run context, after all
  ranks have shown that their contexts (starting model, schedule, options, identifier sets) agree.
  Same key, same global batches: the same draws on every rank (docs/distributed.md).
"""

from __future__ import annotations

import operator
import secrets
from collections.abc import Iterable, Mapping
from typing import Any

from certun.backends import noise
from certun.backends.run_key import RunKey, run_key
from certun.backends.torch._dist_comm import Comm, digest
from certun.certificates import provenance
from certun.certificates.provenance import Identifiers, default_ids
from certun.errors import InvalidParameterError, UnlearningRunError

__all__ = ["shared_key", "union_identifiers"]


def _listed(ids: Iterable[Any] | None) -> Any:
    return ids if ids is None or isinstance(ids, (str, bytes)) or not isinstance(ids, Iterable) else list(ids)


def _plain(ids: list[Any]) -> list[int | str]:
    """Identifiers already checked by :func:`provenance.identifiers`, as plain ints and strings to send."""
    return [i if isinstance(i, str) else int(i.item() if hasattr(i, "item") else operator.index(i)) for i in ids]


def union_identifiers(comm: Comm, data: Any, retain_ids: Any, forget_ids: Any) -> Identifiers:
    """The identifier trees over every rank's records; ``retain_size`` stays this rank's own count.

    Each rank's own identifiers are checked first (forms, overlap, dataset indices) and the ranks agree
    on the outcome, so one rank's bad identifiers stop every rank.
    """
    retain_ids, forget_ids = _listed(retain_ids), _listed(forget_ids)
    error = local = None
    try:
        local = provenance.identifiers(data, retain_ids, forget_ids)
        retain = default_ids(data) if retain_ids is None else _plain(retain_ids)
        forget = None if forget_ids is None else _plain(forget_ids)
    except Exception as exc:  # refused on this rank: every rank must stop
        error = exc
    comm.agree(error, "the identifier checks")
    rows = comm.gather((local.id_scheme, retain, forget), "gathering the identifiers")
    schemes = {row[0] for row in rows}
    if len(schemes) > 1:
        raise InvalidParameterError("retain_ids", f"<schemes by rank: {[row[0] for row in rows]}>",
                                    "the same kind of identifiers on every rank (all explicit, or all dataset "
                                    "indices)")
    union_r = _union(row[1] for row in rows)
    union_f = _union(row[2] for row in rows if row[2] is not None)  # a rank may name no forget ids
    if union_f is not None:
        gone = set(union_f)
        for rank, row in enumerate(rows):
            seen = sorted(set(row[1] or ()) & gone, key=str)
            if seen:
                raise InvalidParameterError("retain_ids", f"<rank {rank} reads {len(seen)} forgotten ids, e.g. "
                                            f"{seen[:5]}>", "disjoint from every rank's forget identifiers")
    salt_key = comm.broadcast(secrets.token_bytes(32) if comm.rank == 0 else None, "sharing the salt key")
    whole = provenance.identifiers(None, union_r, union_f, salt_key=salt_key)  # the same trees on every rank
    return Identifiers(retain_tree=whole.retain_tree, forget_tree=whole.forget_tree, id_scheme=local.id_scheme,
                       retain_fingerprint=whole.retain_fingerprint, retain_size=local.retain_size,
                       forget_fingerprint=whole.forget_fingerprint)


def _union(lists: Iterable[list[Any] | None]) -> list[Any] | None:
    lists = list(lists)
    if not lists or all(ids is None for ids in lists):
        return None
    if any(ids is None for ids in lists):
        raise UnlearningRunError("some ranks know their retain identifiers and some do not; give retain_ids on "
                                 "every rank or on none")
    return list(dict.fromkeys(i for ids in lists for i in ids))


def check_count(ids: Identifiers, data: Any) -> bool:
    """Each rank's samples per pass must match its own identifiers (its loader's dataset may hold every
    rank's records, as with a ``DistributedSampler``, so the dataset size is not compared)."""
    return ids.id_scheme == "user" and ids.retain_size is not None


def shared_key(comm: Comm, seed: Any, context: bytes, noise_mode: str) -> RunKey:
    """The run key from rank 0's secret, once every rank's run context, seed and noise mode are shown to be the same.

    ``noise_mode`` is the run's recorded one (``"injected"`` under the ``noise_source`` testing hook): one
    rank adding injected (say zero) noise to its shard while rank 0 certifies would release a model with
    less noise than the certificate says, and the released models would still agree.
    """
    tag = "os" if seed is None else digest(repr(sorted(seed.items()) if isinstance(seed, Mapping) else
                                               provenance.resolve_seed(seed)).encode())
    rows = comm.gather((digest(context), tag, noise_mode), "comparing the run contexts")
    modes = [r for r, row in enumerate(rows) if row[2] != rows[0][2]]
    if modes:
        raise UnlearningRunError(
            f"distributed run: ranks {modes} draw their noise as {[rows[r][2] for r in modes]}, rank 0 as "
            f"{rows[0][2]!r}; give noise_source and noise_mode alike on every rank; no certificate was issued")
    differ = [r for r, row in enumerate(rows) if row[0] != rows[0][0]]
    if differ:
        raise UnlearningRunError(
            f"distributed run: ranks {differ} differ from rank 0 in the starting model, schedule, options or "
            "identifier sets, so they would not run the same update; every rank must start from the same model "
            "with the same schedule and options; no certificate was issued")
    seeds = [r for r, row in enumerate(rows) if row[1] != rows[0][1]]
    if seeds:
        raise UnlearningRunError(f"distributed run: ranks {seeds} were given another seed than rank 0; pass the same "
                                 "seed (or none) on every rank; no certificate was issued")
    secret = origin = value = None
    if comm.rank == 0:
        key = run_key(seed, context)
        secret, origin, value = key.secret, key.origin, key.seed
    secret, origin, value = comm.broadcast((secret, origin, value), "sharing the noise secret")
    return RunKey(secret=secret, origin=origin, key=noise.derive_key(secret, context), seed=value)
