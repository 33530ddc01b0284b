"""``certun verify``, ``certun inspect`` and ``certun receipt verify`` on the command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import certificates_fixtures as fx
import numpy as np
import pytest

from certun.certificates import public_key_multibase, write_certificate
from certun.certificates._verify import CHECK_NAMES
from certun.cli import main

DATA = Path(__file__).parent / "data"
SIGNED = DATA / "gradient_clipping_signed.cert.json"
BAD = DATA / "official_code_noise.bad.cert.json"


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_verify_prints_one_line_per_check_then_ok(capsys, tmp_path):
    """A good certificate: one ``STATUS  name  detail`` line per check in order, then OK, exit 0."""
    model = tmp_path / "model.npz"
    np.savez(model, **fx.params(), **fx.frozen())
    code, out, _ = _run(capsys, "verify", str(SIGNED), "--model", str(model),
                        "--trusted-key", public_key_multibase(fx.TEST_KEY), "--max-eps", "1")
    lines = out.strip().splitlines()
    assert code == 0 and lines[-1] == "OK"
    assert [line.split()[1] for line in lines[:-1]] == list(CHECK_NAMES)
    assert lines[CHECK_NAMES.index("signature")].startswith("PASS  signature")
    assert lines[CHECK_NAMES.index("model")].startswith("PASS  model")


def test_verify_fails_with_exit_1_and_says_why(capsys):
    """The official-code-noise certificate prints FAIL for recompute with both numbers, FAILED, exit 1."""
    code, out, _ = _run(capsys, "verify", str(BAD))
    assert code == 1
    assert out.strip().endswith("FAILED")
    line = next(x for x in out.splitlines() if x.startswith("FAIL"))
    assert line.split()[1] == "recompute" and "claimed eps 1.0 < recomputed 7.07" in line


def test_verify_json_is_the_report(capsys):
    """``--json`` prints the report as JSON with the same checks and ``ok``."""
    code, out, _ = _run(capsys, "verify", str(SIGNED), "--json")
    report = json.loads(out)
    assert code == 0 and report["ok"] is True
    assert [c["name"] for c in report["checks"]] == list(CHECK_NAMES)
    assert {c["status"] for c in report["checks"]} <= {"PASS", "WARN", "SKIP"}


@pytest.mark.parametrize("content", [b"", b"{not json", b'{"a": NaN}', b"\xff\xfe"])
def test_malformed_file_exits_nonzero_without_traceback(capsys, tmp_path, content):
    """Malformed files: a FAIL line that says what is wrong, FAILED, exit 1, no traceback."""
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    code, out, err = _run(capsys, "verify", str(path))
    assert code == 1 and out.strip().endswith("FAILED")
    assert out.startswith("FAIL  strict_parse")
    assert "Traceback" not in out + err


def test_missing_file_and_bad_option(capsys, tmp_path):
    """A missing certificate is unreadable input and a malformed ``--max-eps`` a usage error: exit 2."""
    code, _, err = _run(capsys, "verify", str(tmp_path / "none.json"))
    assert code == 2 and "none.json" in err
    with pytest.raises(SystemExit) as exc:
        main(["verify", str(SIGNED), "--max-eps", "nan"])
    assert exc.value.code == 2


def test_verify_chain_option(capsys):
    """``--chain DIR`` checks the links of the chained golden certificate."""
    code, out, _ = _run(capsys, "verify", str(DATA / "model_clipping_chained.cert.json"), "--chain", str(DATA))
    assert code == 0
    assert any(line.startswith("PASS  chain") for line in out.splitlines())


def test_inspect_prints_a_summary(capsys):
    """``inspect`` summarises claim, mechanism, sets, seed commitment and signer without verifying."""
    code, out, _ = _run(capsys, "inspect", str(SIGNED))
    assert code == 0
    for needle in ("(1, 1e-05)-unlearning", "T=100", "forget_set", "committed: sha256:", "eddsa-jcs-2022",
                   "unverified"):
        assert needle in out


def test_inspect_malformed_exits_2_with_message(capsys, tmp_path):
    """``inspect`` on a malformed file prints one error line on stderr and exits 2."""
    path = tmp_path / "bad.json"
    path.write_text('{"format": "certun.certificate", "format_version": 9}')
    code, _, err = _run(capsys, "inspect", str(path))
    assert code == 2 and "unknown format_version 9" in err and "Traceback" not in err


def test_receipt_verify(capsys, tmp_path):
    """A data subject's receipt verifies against the forget set (exit 0) and not the retain set (exit 1)."""
    receipt = DATA / "receipt_forget_42.json"
    code, out, _ = _run(capsys, "receipt", "verify", str(receipt), str(SIGNED), "--id", "42")
    assert code == 0 and out.startswith("OK: record 42")
    code, out, _ = _run(capsys, "receipt", "verify", str(receipt), str(SIGNED), "--set", "retain")
    assert code == 1 and out.startswith("FAILED")
    code, out, _ = _run(capsys, "receipt", "verify", str(receipt), str(SIGNED), "--id", "43")
    assert code == 1 and "another record" in out
    forged = json.loads(receipt.read_text())
    forged["record_id"] = 43
    (tmp_path / "r.json").write_text(json.dumps(forged))
    code, out, _ = _run(capsys, "receipt", "verify", str(tmp_path / "r.json"), str(SIGNED))
    assert code == 1


def test_console_entry_point(tmp_path):
    """``python -m certun verify`` works end to end in a fresh process and returns the exit code."""
    path = write_certificate(fx.certificate(), tmp_path / "c.json")
    proc = subprocess.run([sys.executable, "-m", "certun", "verify", str(path)], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().endswith("OK")


