"""The built wheel maps the root folders to certun.* and ships the certificate schema."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not (ROOT / "pyproject.toml").exists(), reason="needs the source tree")
def test_wheel_contents(tmp_path):
    """A wheel built from the tree holds certun/{accountant,backends,certificates} and no top-level strays."""
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    wheel = next(tmp_path.glob("certun-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for module in ("certun/__init__.py", "certun/cli/__init__.py", "certun/accountant/planner.py",
                   "certun/backends/__init__.py", "certun/certificates/__init__.py"):
        assert module in names
    top = {n.split("/")[0] for n in names}
    assert top <= {"certun", f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info"}
