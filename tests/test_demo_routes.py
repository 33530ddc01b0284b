"""``certun demo --route``: the exact routes (retrain-public, sisa) end in verifying (0, 0) certificates, and
options a route does not read are refused in one line before any data is read."""

from __future__ import annotations

import pytest
import torch

import certun
import certun.demo.data
from certun.certificates import load_certificate
from certun.cli import main
from certun.demo import DemoConfig, run_demo
from certun.errors import InvalidParameterError

torch.set_num_threads(1)


def _verified(out, *, eps=1.0, delta=1e-5) -> dict:
    """The certificate in ``out``, after checking it verifies against ``out/unlearned.pt`` and claims exactness."""
    assert {p.name for p in out.iterdir()} >= {"unlearned.pt", "certificate.json", "report.md", "report.png"}
    report = certun.verify(out / "certificate.json", model=out / "unlearned.pt")
    assert report.ok, str(report)
    assert report["model"].status.value == "PASS" and report["recompute"].status.value == "PASS"
    cert = load_certificate(out / "certificate.json")
    assert cert["claim"]["variant"] == "retrain" and cert["claim"]["eps"] == eps and cert["claim"]["delta"] == delta
    return cert


def test_retrain_public_route_retrains_from_the_public_weights_and_verifies(tmp_path, capsys):
    """--route retrain-public: exact retraining centred at the public weights; the certificate verifies."""
    out = tmp_path / "rp"
    assert main(["demo", "--quick", "--data", "digits", "--route", "retrain-public", "--out", str(out),
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "public pretraining epoch" in printed and "route retrain-public: certificate verifies" in printed
    assert "achieved (eps, delta) = (0, 0)" in printed
    cert = _verified(out)
    assert cert["execution"]["backend"] == "torch" and cert["execution"]["noisy_steps"] == 0
    assert cert["artifacts"]["center"] is not None  # the public weights, not the origin
    assert "route | retrain-public" in (out / "report.md").read_text()


def test_sisa_route_serves_the_forget_set_and_verifies(tmp_path):
    """--route sisa: the ensemble's deletion is certified (backend sisa), verifies, and reports its cost."""
    config = DemoConfig.quick_defaults(data="digits", route="sisa", shards=3, slices=2, batch_size=64)
    lines: list[str] = []
    result = run_demo(config, tmp_path, progress=False, echo=lines.append)
    assert result.route == "sisa" and result.verification.ok
    cert = _verified(tmp_path)
    assert cert["execution"]["backend"] == "sisa"
    assert cert["execution"]["sisa"]["shards"] == 3 and cert["execution"]["sisa"]["slices"] == 2
    assert cert["artifacts"]["forget_set"]["size"] == 99  # 10% of digits' quick training set
    facts = dict(result.facts)
    assert "for a full retraining" in facts["deletion cost"] and facts["route"] == "sisa"
    assert [p.kind for p in result.phases] == ["original", "retrain"]
    assert any("route sisa: certificate verifies" in line for line in lines)
    # the released file is the ensemble: one state per shard
    state = torch.load(tmp_path / "unlearned.pt")
    assert {k.split(".")[1] for k in state} == {"0", "1", "2"}


@pytest.fixture
def no_training(monkeypatch):
    """Make reading data a test failure: a refused option must be refused before it."""
    def refuse(*args, **kwargs):
        raise AssertionError("the demo started working before refusing its options")

    monkeypatch.setattr(certun.demo.data, "load_data", refuse)
    monkeypatch.setattr(certun.demo.data, "make_splits", refuse)


@pytest.mark.parametrize(("argv", "says"), [
    (("--route", "sisa", "--T", "5"), "T=5"),
    (("--route", "retrain-public", "--C0", "2"), "C0=2.0"),
    (("--route", "retrain-public", "--noise-seed", "3"), "noise_seed=3"),
    (("--route", "retrain-public", "--variant", "gradient_clipping"), "variant='gradient_clipping'"),
    (("--route", "sisa", "--clip", "per_sample"), "clip='per_sample'"),
    (("--route", "sisa", "--center", "zero"), "center='zero'"),
    (("--route", "retrain-public", "--center", "init"), "center='init'"),
    (("--route", "sisa", "--finetune-epochs", "2"), "finetune_epochs=2"),
    (("--route", "noisy", "--shards", "3"), "shards=3"),
    (("--slices", "2",), "slices=2"),
])
def test_an_option_the_route_does_not_read_is_refused_in_one_line(capsys, tmp_path, no_training, argv, says):
    """Options of another route (even at their default value) exit 2 in one line naming option and route."""
    out = tmp_path / "never"
    code = main(["demo", "--quick", "--no-progress", "--out", str(out), *argv])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert says in err and "route" in err
    assert not out.exists()


@pytest.mark.parametrize(("kwargs", "name"), [
    (dict(route="sisa", variant="model_clipping"), "variant"),
    (dict(route="retrain-public", T=3), "T"),
    (dict(route="sisa", center="public"), "center"),
    (dict(route="retrain-public", center="init"), "center"),
    (dict(route="exact"), "route"),
    (dict(route="sisa", shards=0), "shards"),
])
def test_demo_config_refuses_options_of_another_route(kwargs, name):
    """The library API refuses the same combinations as the command line."""
    with pytest.raises(InvalidParameterError, match=f"{name}="):
        DemoConfig(**kwargs)


def test_the_default_route_is_noisy():
    """Without --route the demo runs the paper's noisy route, as before."""
    assert DemoConfig().route == "noisy"
    from certun.cli import build_parser

    assert build_parser().parse_args(["demo"]).route == "noisy"


def test_retrain_public_report_labels_its_loss_curve_as_retraining_from_the_public_weights(tmp_path, monkeypatch):
    """The report's loss panel must not call a retraining from public weights one 'from scratch'."""
    import certun.demo.run_report as run_report

    seen: dict = {}
    original = run_report.plot_report

    def spy(phases, **kwargs):
        seen.update(kwargs)
        return original(phases, **kwargs)

    monkeypatch.setattr(run_report, "plot_report", spy)
    config = DemoConfig.quick_defaults(data="digits", route="retrain-public", batch_size=64)
    run_demo(config, tmp_path, progress=False, echo=lambda line: None)
    assert seen["retrain_loss"] and seen.get("retrain_label") == "retraining from the public weights"
