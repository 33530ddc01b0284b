"""The torchrun commands of docs/distributed.md run as written and write a certificate that verifies.

The commands are read from the page, so the page cannot drift from what works: two CPU processes,
gloo, scikit-learn's digits.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import certun

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "distributed.md"


def documented_commands() -> list[str]:
    """Every line of a bash block on the page that starts with ``torchrun``."""
    blocks = re.findall(r"```bash\n(.*?)```", PAGE.read_text(encoding="utf-8"), flags=re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.startswith("torchrun ")]


def test_the_page_documents_every_layout():
    commands = documented_commands()
    assert len(commands) == 4  # the three layouts, and a checkpointed run
    assert sum("--checkpoint-dir" in c for c in commands) == 1
    layouts = {shlex.split(c)[shlex.split(c).index("--layout") + 1] for c in commands}
    assert layouts == {"replicated", "sharded", "fsdp"}


@pytest.mark.parametrize("command", documented_commands())
def test_documented_torchrun_command_writes_a_certificate_that_verifies(tmp_path, command):
    pytest.importorskip("sklearn")
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    args = shlex.split(command)
    assert args[0] == "torchrun" and "--nproc_per_node=2" in args
    # torchrun is python -m torch.distributed.run; the interpreter is this test's
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", *args[1:]], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    path = tmp_path / args[args.index("--certificate") + 1]
    assert "2 ranks" in done.stdout and str(path.name) in done.stdout
    cert = json.loads(path.read_text())
    assert cert["execution"]["distributed"]["world_size"] == 2
    assert cert["artifacts"]["forget_set"]["size"] == 20
    report = certun.verify(cert)
    assert report.ok, [c.name for c in report.failures]
    if "--checkpoint-dir" in args:  # each rank's checkpoint, and the folder, gone after the run
        assert not (tmp_path / args[args.index("--checkpoint-dir") + 1]).exists()
