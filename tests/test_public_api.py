"""The public API is pinned: adding or removing a public name is a deliberate act that edits this file.

Also checks the house rule that keeps the parts apart: no library module imports another part's private
(``_name``) module; it goes through that part's ``__init__`` (docs/architecture.md).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import certun
import certun.backends
import certun.certificates

ROOT = Path(__file__).resolve().parents[1]

CERTUN_ALL = {
    "__version__", "plan", "guarantee", "get_backend", "verify", "Schedule", "Guarantee", "Variant", "Mode",
    "Method", "CertunError", "InvalidParameterError", "InfeasibleError", "SolverError", "NumericalError",
    "UnsupportedModelError", "CertificateFormatError", "DatasetFormatError", "UnlearningRunError", "unlearn",
    "UnlearnResult",
}
CERTIFICATES_ALL = {
    "FORMAT_VERSION", "SUPPORTED_FORMAT_VERSIONS", "CheckResult", "MerkleReceipt", "MerkleTree", "ModelDigest",
    "Report", "RunRecord", "Status", "canonical_bytes", "content_digest", "encode_id", "generate_signing_key",
    "issue", "key_commitment", "load_certificate", "load_public_key", "load_public_key_file", "load_signing_key",
    "merkle_tree", "model_commitment", "model_digest", "open_model_commitment", "open_seed_commitment",
    "printable", "public_key_multibase", "read_bytes", "seed_commitment", "signing_key_multibase", "strict_loads",
    "tensor_digest", "verify", "verify_receipt", "write_certificate",
}
BACKENDS_ALL = {
    "After", "AttributesMode", "Backend", "BufferMode", "ClipMode", "Clipping", "FrozenMode", "Noise", "NoiseMode",
    "Postprocess", "RunResult", "Unlearned", "UnsafeNoiseWarning", "available_backends", "get_backend",
    "register_backend",
}

#: Library folders -> the dotted part their modules belong to (certun/ splits into sub-parts).
PART_FOLDERS = {
    "accountant": "certun.accountant",
    "backends": "certun.backends",
    "certificates": "certun.certificates",
    "certun/cli": "certun.cli",
    "certun/demo": "certun.demo",
    "certun/audit": "certun.audit",
    "certun": "certun",
}
PARTS = sorted(set(PART_FOLDERS.values()) - {"certun"})


@pytest.mark.parametrize(("module", "pinned"), [
    (certun, CERTUN_ALL), (certun.certificates, CERTIFICATES_ALL), (certun.backends, BACKENDS_ALL),
])
def test_all_is_pinned_and_every_name_exists(module, pinned):
    """``__all__`` is exactly the pinned set, without duplicates, and each name is really there."""
    assert len(module.__all__) == len(set(module.__all__)), "duplicate names in __all__"
    assert set(module.__all__) == pinned, (f"{module.__name__}.__all__ changed: added "
                                           f"{sorted(set(module.__all__) - pinned)}, removed "
                                           f"{sorted(pinned - set(module.__all__))}")
    for name in module.__all__:
        assert hasattr(module, name), f"{module.__name__}.{name} is in __all__ but does not exist"


def _part_of(path: Path) -> str:
    rel = path.relative_to(ROOT).as_posix()
    folder = max((f for f in PART_FOLDERS if rel.startswith(f + "/")), key=len)
    return PART_FOLDERS[folder]


def _imported_modules(tree: ast.AST) -> list[str]:
    """Every absolute module an ``import`` or ``from ... import`` names, with ``from x import y`` giving
    both ``x`` and ``x.y`` (``y`` may be a module)."""
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            names += [f"{node.module}.{alias.name}" for alias in node.names]
    return names


def private_reaches(source: str, part: str) -> list[str]:
    """The imports in ``source`` (a module of ``part``) that reach into another part's private module."""
    bad = []
    for name in _imported_modules(ast.parse(source)):
        owner = next((p for p in PARTS if name == p or name.startswith(p + ".")), None)
        if owner is None or owner == part:
            continue
        inner = name[len(owner) + 1:].split(".") if name != owner else []
        if any(piece.startswith("_") and not piece.startswith("__") for piece in inner):
            bad.append(name)
    return bad


def test_the_scan_finds_a_reach_into_a_private_module():
    """The checker itself can fail: both import forms are caught, a part's own private modules are not."""
    assert private_reaches("from certun.certificates._verify import verify", "certun.backends") == [
        "certun.certificates._verify", "certun.certificates._verify.verify"]
    assert private_reaches("import certun.accountant._numerics as n", "certun.cli") == ["certun.accountant._numerics"]
    assert private_reaches("from certun.certificates import _parse", "certun.demo") == ["certun.certificates._parse"]
    assert private_reaches("from certun.certificates._verify import verify", "certun.certificates") == []
    assert private_reaches("from certun.certificates import verify\nfrom certun._validation import integer",
                           "certun.backends") == []


def test_no_library_module_reaches_into_another_parts_private_modules():
    """accountant/, backends/, certificates/ and certun/ import each other only through public names."""
    found = {}
    for folder in ("accountant", "backends", "certificates", "certun"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            bad = private_reaches(path.read_text(encoding="utf-8"), _part_of(path))
            if bad:
                found[path.relative_to(ROOT).as_posix()] = bad
    assert not found, f"imports of another part's private modules: {found}"
