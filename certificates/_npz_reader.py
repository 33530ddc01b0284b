"""Read an ``.npz`` model file member by member, refusing archives that are ambiguous or expand without bound.

``numpy.load`` maps members ``w`` and ``w.npy`` to one key and inflates whatever the zip directory
declares, so a verifier using it could hash another array than the one a zip-level loader reads, and a
small file could allocate gigabytes. This reader reads the zip directory first and refuses: duplicate
member names, members not ending in ``.npy`` and names that collide once ``.npy`` is stripped; a total
declared size above :data:`MAX_EXPANSION` times the file size (plus :data:`EXPANSION_ALLOWANCE`); and
a ``.npy`` header whose shape and dtype do not account for exactly the member's bytes. Only then does
it inflate, with ``allow_pickle=False``. See docs/certificates.md#threat-model.
"""

from __future__ import annotations

import os
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np

from certun.certificates._verification_report import printable
from certun.errors import CertificateFormatError

__all__ = ["EXPANSION_ALLOWANCE", "MAX_EXPANSION", "read_npz"]

#: Most bytes the members of an ``.npz`` may declare per byte of the file (weights compress a few-fold;
#: a long run of zeros compresses a thousand-fold, and is what a decompression bomb is made of).
MAX_EXPANSION = 32
#: Declared bytes always allowed on top of that (small archives of zero-initialised tensors).
EXPANSION_ALLOWANCE = 4 * 1024 * 1024


def _members(archive: zipfile.ZipFile, label: str) -> list[tuple[str, zipfile.ZipInfo]]:
    infos = archive.infolist()
    dupes = sorted(name for name, n in Counter(i.filename for i in infos).items() if n > 1)
    if dupes:
        raise CertificateFormatError(f"{label} holds members {[printable(d) for d in dupes[:5]]} more than once: "
                                     "two arrays for one tensor name")
    odd = [i.filename for i in infos if not i.filename.endswith(".npy")]
    if odd:
        raise CertificateFormatError(f"{label} holds members {[printable(o) for o in odd[:5]]} that are not .npy "
                                     "arrays (every member of a model .npz must end in .npy)")
    named = [(i.filename[: -len(".npy")], i) for i in infos]
    clash = sorted(name for name, n in Counter(name for name, _ in named).items() if n > 1)
    if clash:
        raise CertificateFormatError(f"{label} holds several members for tensors {[printable(c) for c in clash[:5]]}")
    return named


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, name: str, label: str) -> np.ndarray:
    with archive.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version not in ((1, 0), (2, 0), (3, 0)):
            raise CertificateFormatError(f"{label}: member {printable(repr(name))} has .npy version {version}")
        reader = {(1, 0): np.lib.format.read_array_header_1_0}.get(version, np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = reader(f, max_header_size=10_000)
        if dtype.hasobject:
            raise CertificateFormatError(f"{label}: tensor {printable(repr(name))} holds Python objects")
        count = 1
        for dim in shape:
            count *= int(dim)
        header = f.tell()
        if header + count * dtype.itemsize != info.file_size:
            raise CertificateFormatError(
                f"{label}: tensor {printable(repr(name))} declares shape {shape} of {dtype} "
                f"({count * dtype.itemsize} bytes) but its member holds {info.file_size - header} bytes of data")
        data = f.read(count * dtype.itemsize)
    array = np.frombuffer(data, dtype=dtype, count=count)
    return array.reshape(shape, order="F" if fortran else "C").copy()


def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """``name -> array`` of an ``.npz`` file, each member checked before it is inflated.

    Raises:
        CertificateFormatError: duplicate or colliding members, a member not ending in ``.npy``, a
            declared size far above the file's, or a ``.npy`` header that does not match its member.
    """
    path = Path(path)
    label = printable(str(path))
    size = os.path.getsize(path)
    with zipfile.ZipFile(path) as archive:
        named = _members(archive, label)
        declared = sum(info.file_size for _, info in named)
        limit = MAX_EXPANSION * size + EXPANSION_ALLOWANCE
        if declared > limit:
            raise CertificateFormatError(
                f"{label} declares {declared} bytes of arrays in a {size}-byte file, more than the {limit} a model "
                f"file may expand to ({MAX_EXPANSION}x its size + {EXPANSION_ALLOWANCE}): refusing to inflate it")
        return {name: _read_member(archive, info, name, label) for name, info in named}
