"""docs/results.md's tables are generated from the reproduction runs and match a rerun of the code.

The fast tests pin the page machinery (markers, timing masks). The slow test reruns the page's
digits/MLP command on this code and compares every generated line of that section with the page, wall-clock
numbers aside: if the code changes what the command measures, the page must be regenerated.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "results.md"
sys.path.insert(0, str(ROOT / "benchmarks"))

results_page = pytest.importorskip("results_page")

TAGS = ("fashion-mnist-mlp", "fashion-mnist-cnn", "digits-mlp", "digits-cnn")


def test_every_run_has_one_generated_section_with_its_command() -> None:
    """Each of the four runs has one marked section on the page, ending with the command that produced it."""
    page = PAGE.read_text()
    for tag in TAGS:
        section = results_page.section_of(page, tag)
        data, arch = tag.rsplit("-", 1)
        assert f"python benchmarks/reproduce.py --data {data} --arch {arch}" in section, tag
        assert re.search(r"^Command: `python benchmarks/reproduce\.py [^`]*`; \d+ s on ", section, re.MULTILINE), tag


def test_the_page_names_the_commit_its_tables_were_measured_on() -> None:
    """The page says which commit produced the generated sections (a 7+ hex-digit hash)."""
    assert re.search(r"measured on commit `[0-9a-f]{7,40}`", PAGE.read_text())


def test_mask_timing_blanks_wall_clock_only() -> None:
    """The command's seconds and the "CPU s" columns are masked; every other cell is kept."""
    text = ("| method | test final | CPU s to 98% |\n|---|---|---|\n| retrain | 0.840 | 12.5 ± 1.0 |\n\n"
            "Command: `python x.py --out a`; 750 s on AMD EPYC, 1 torch thread(s).\n")
    masked = results_page.mask_timing(text)
    assert "| retrain | 0.840 |…|" in masked
    assert "12.5" not in masked and "750 s" not in masked and "0.840" in masked
    assert results_page.mask_timing(text.replace("0.840", "0.841")) != masked  # a changed accuracy is seen


def test_replace_section_needs_exactly_one_marker_pair() -> None:
    """A page with the markers missing or doubled is refused instead of being silently appended to."""
    with pytest.raises(ValueError, match="exactly one"):
        results_page.replace_section("no markers here", "digits-mlp", "x")
    one = "a\n<!-- begin generated: t -->\nold\n<!-- end generated: t -->\nb\n"
    assert results_page.section_of(results_page.replace_section(one, "t", "new"), "t") == "new\n"
    with pytest.raises(ValueError, match="exactly one"):
        results_page.section_of(one + one, "t")


@pytest.mark.slow
def test_digits_mlp_section_matches_a_rerun_of_its_command(tmp_path: Path) -> None:
    """Rerun the page's digits/MLP command (~1 min, one thread) and compare its section with the page."""
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    section = results_page.section_of(PAGE.read_text(), "digits-mlp")
    command = re.search(r"^Command: `python (benchmarks/reproduce\.py [^`]*)`", section, re.MULTILINE).group(1)
    argv = command.split()
    argv[argv.index("--out") + 1] = str(tmp_path)  # same options, scratch output folder
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    proc = subprocess.run([sys.executable, *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    results["command"] = results["command"].replace(str(tmp_path), argv_out(section))
    rerun = results_page.mask_timing(results_page.page_section(results)).splitlines()
    page = results_page.mask_timing(section).splitlines()
    differing = [(a, b) for a, b in zip(page, rerun, strict=False) if a != b]
    assert len(page) == len(rerun) and not differing, (
        "docs/results.md's digits/MLP section differs from a rerun of its command on this code; regenerate the page "
        f"(python benchmarks/results_page.py). First differences: {differing[:3]}")


def argv_out(section: str) -> str:
    """The ``--out`` folder named in the section's command line."""
    return re.search(r"--out (\S+?)`", section).group(1)
