"""``certun demo``: models fit for per-sample clipping, data-independent defaults, the report, the run end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from certun.certificates import load_certificate, verify
from certun.cli import main
from certun.demo import DemoConfig, default_hyperparameters, plan_schedule, run_demo
from certun.demo.data import fashion_mnist_available
from certun.demo.models import accuracy, build_model, fit, parameter_norm
from certun.demo.run_report import Phase, phase_table, write_report
from certun.errors import InvalidParameterError

torch.set_num_threads(1)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------------------ models
@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_build_model_is_seeded_and_leaves_the_global_rng_alone(name):
    """The same seed gives the same weights, another seed others, and the global RNG state is unchanged."""
    state = torch.random.get_rng_state()
    a = build_model(name, (1, 8, 8), 10, seed=5)
    b = build_model(name, (1, 8, 8), 10, seed=5)
    c = build_model(name, (1, 8, 8), 10, seed=6)
    assert torch.equal(torch.random.get_rng_state(), state)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)
    assert any(not torch.equal(va, vc) for va, vc in zip(a.state_dict().values(), c.state_dict().values(),
                                                         strict=True))


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_models_have_no_batchnorm_buffers_or_inplace_ops(name):
    """Both models pass the torch backend's model check for per-sample clipping (no BatchNorm, no in-place)."""
    from certun.backends.torch._model import check_model, select_parameters

    model = build_model(name, (1, 28, 28), 10, seed=0)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert not list(model.buffers())
    assert not any(getattr(m, "inplace", False) for m in model.modules())
    check_model(model, select_parameters(model, None), hooks=True, buffers="reject")  # raises if unsupported
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)


def test_bad_model_arguments_are_refused():
    """Unknown names and impossible input shapes raise InvalidParameterError naming the argument."""
    with pytest.raises(InvalidParameterError, match="model"):
        build_model("resnet", (1, 8, 8), 10, seed=0)
    with pytest.raises(InvalidParameterError, match="image_size"):
        build_model("cnn", (1, 2, 2), 10, seed=0)


def test_fit_learns_a_separable_problem_and_accuracy_counts_correctly():
    """A few SGD epochs separate two well-separated blobs; accuracy is the share of correct predictions."""
    from certun.demo.data import make_loader

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(-2, 0.3, (64, 1, 2, 2)), rng.normal(2, 0.3, (64, 1, 2, 2))]).astype(np.float32)
    y = np.repeat([0, 1], 64)
    model = build_model("mlp", (1, 2, 2), 2, seed=0)
    losses = []
    fit(model, make_loader(x, y, batch_size=16, shuffle=True, seed=0), epochs=5, lr=0.1,
        on_epoch=lambda e, loss: losses.append(loss))
    assert len(losses) == 5 and losses[-1] < losses[0]
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    assert accuracy(model, xt, yt) == 1.0
    assert accuracy(model, xt, 1 - yt) == 0.0
    with pytest.raises(InvalidParameterError):
        accuracy(model, xt[:0], yt[:0])


# ------------------------------------------------------------------------------------------ defaults
@pytest.mark.parametrize("center", ["zero", "init", "public"])
@pytest.mark.parametrize("quick", [False, True])
def test_default_hyperparameters_follow_the_documented_rule(center, quick):
    """C0 comes from the architecture's init norm, gamma·C1·T = C0 (T* of docs/theory.md#gradient-clipping), T = 200 or
    20."""
    norm = parameter_norm(build_model("mlp", (1, 28, 28), 10, seed=0))
    config = DemoConfig.quick_defaults(center=center) if quick else DemoConfig(center=center)
    h = default_hyperparameters(config, norm)
    expected_C0 = math.ceil(norm) if center == "zero" else math.ceil(norm) / 10
    assert h["C0"] == expected_C0 and h["C0"] >= (norm if center == "zero" else norm / 10)
    assert h["T"] == (20 if quick else 200) and h["lam"] == 0.0 and h["C1"] == 1.0
    assert math.isclose(h["gamma"] * h["C1"] * h["T"], h["C0"], rel_tol=1e-12)


@pytest.mark.parametrize("variant", ["gradient_clipping", "model_clipping", "output_perturbation"])
def test_planned_schedules_meet_the_target(variant):
    """Each variant's schedule achieves (eps, delta) at most the target, recomputed by the accountant."""
    from certun.accountant import guarantee

    config = DemoConfig.quick_defaults(variant=variant, eps=2.0, delta=1e-6)
    schedule = plan_schedule(config, default_hyperparameters(config, 9.4))
    g = guarantee(schedule)
    assert schedule.variant.value == variant
    assert g.eps <= 2.0 * (1 + 1e-9) and g.delta <= 1e-6 * (1 + 1e-9)
    assert schedule.T == (0 if variant == "output_perturbation" else 20)


@pytest.mark.parametrize(("kwargs", "name"), [
    (dict(variant="retrain"), "variant"), (dict(eps=0.0), "eps"), (dict(delta=1.0), "delta"),
    (dict(forget_fraction=1.5), "forget_fraction"), (dict(center="origin"), "center"),
    (dict(device="tpu"), "device"), (dict(seed=-1), "seed"), (dict(T=0), "T"), (dict(C0=-1.0), "C0"),
])
def test_demo_config_refuses_bad_values(kwargs, name):
    """Every bad option raises InvalidParameterError naming it before any work starts."""
    with pytest.raises(InvalidParameterError, match=name):
        DemoConfig(**kwargs)


# ------------------------------------------------------------------------------------------ report
def _phases():
    return [Phase(label="original (trained on D)", kind="original", retain=0.9, forget=0.89, test=0.86),
            Phase(label="after noise", kind="noisy", retain=0.1, forget=0.1, test=0.1),
            Phase(label="fine-tune epoch 1 (released)", kind="finetune", retain=0.84, forget=0.83, test=0.82),
            Phase(label="retrained", kind="retrain", retain=0.85, forget=0.84, test=0.83)]


def test_phase_table_has_one_aligned_row_per_phase():
    """The text table has a header, a rule and one row per phase with four-decimal accuracies."""
    lines = phase_table(_phases()).splitlines()
    assert len(lines) == 2 + 4 and "0.8600" in lines[2] and lines[5].startswith("retrained")
    assert len({line.index("  ") for line in lines[2:]}) >= 1 and len({len(line) for line in lines}) == 1


def test_phase_refuses_impossible_accuracies():
    """An accuracy outside [0, 1] (or NaN) and an unknown kind are refused."""
    with pytest.raises(InvalidParameterError, match="test"):
        Phase(label="x", kind="original", retain=0.5, forget=0.5, test=float("nan"))
    with pytest.raises(InvalidParameterError, match="kind"):
        Phase(label="x", kind="other", retain=0.5, forget=0.5, test=0.5)


def test_write_report_writes_markdown_and_png(tmp_path):
    """report.md holds the facts, the table, the verification and the image link; report.png is a PNG."""
    md, png = write_report(tmp_path, title="T", phases=_phases(), facts=[("C0", "10")], verification="PASS x\nOK",
                           notes=["a note"], finetune_loss=[2.0, 1.5], retrain_loss=[2.1, 1.4])
    text = md.read_text()
    assert "| C0 | 10 |" in text and "| after noise | 0.1000 | 0.1000 | 0.1000 |" in text
    assert "PASS x" in text and "![accuracy over the phases](report.png)" in text and "- a note" in text
    assert png.read_bytes()[:8] == PNG_MAGIC
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.md", "report.png"]  # no temporary leftovers


# ------------------------------------------------------------------------------------------ end to end
def _check_outputs(out, *, eps, delta):
    for name in ("unlearned.pt", "certificate.json", "report.md", "report.png"):
        assert (out / name).is_file(), name
    report = verify(out / "certificate.json", model=out / "unlearned.pt")
    assert report.ok, str(report)
    assert report["recompute"].status.value == "PASS" and report["model"].status.value == "PASS"
    cert = load_certificate(out / "certificate.json")
    assert cert["claim"]["eps"] == eps and cert["claim"]["delta"] == delta
    assert (out / "report.png").read_bytes()[:8] == PNG_MAGIC
    return cert


@pytest.mark.skipif(not fashion_mnist_available(), reason="Debian package dataset-fashion-mnist not installed")
def test_certun_demo_quick_end_to_end(tmp_path, capsys):
    """`certun demo --quick` writes all four files, and the certificate verifies against unlearned.pt."""
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--no-progress", "--noise-seed", "7"]) == 0
    printed = capsys.readouterr().out
    assert "Fashion-MNIST" in printed and "certificate verifies" in printed and "retrained from" in printed
    cert = _check_outputs(out, eps=1.0, delta=1e-5)
    assert cert["artifacts"]["forget_set"]["size"] == 200 and cert["artifacts"]["retain_set"]["size"] == 1800
    md = (out / "report.md").read_text()
    assert "fine-tune epoch 1 (released)" in md and "0 (the paper's setting)" in md
    assert "differs from the released model by at most 0.00e+00" in md  # the replay is bit-identical on CPU


@pytest.mark.parametrize("variant", ["model_clipping", "output_perturbation"])
def test_demo_runs_other_variants_on_the_digits_fallback(tmp_path, variant):
    """The other variants run on scikit-learn's digits and yield verifying certificates of that variant."""
    config = DemoConfig.quick_defaults(variant=variant, data="digits", noise_seed=3, batch_size=64)
    lines = []
    result = run_demo(config, tmp_path, progress=False, echo=lines.append)
    assert result.data_name == "digits" and any("load_digits" in line for line in lines)
    cert = _check_outputs(tmp_path, eps=1.0, delta=1e-5)
    assert cert["mechanism"]["variant"] == variant
    kinds = [p.kind for p in result.phases]
    assert kinds == ["original", "noisy", "finetune", "retrain"]
    assert result.replay_max_abs_diff == 0.0


def test_demo_forget_class_and_public_center(tmp_path):
    """Forgetting a whole class with a public centre: the forget set is that class, and the centre is recorded."""
    config = DemoConfig.quick_defaults(data="digits", forget_class=3, center="public", noise_seed=4, batch_size=64)
    result = run_demo(config, tmp_path, progress=False, echo=lambda line: None)
    cert = _check_outputs(tmp_path, eps=1.0, delta=1e-5)
    assert cert["artifacts"]["center"] is not None  # a digest of the public weights, not the origin
    facts = dict(result.facts)
    assert facts["forget set"] == "class 3 (3)" and "public split" in facts["centre of the balls"]


def test_demo_cli_bad_option_exits_2_with_one_line(capsys, tmp_path):
    """A bad option exits 2 with the error message and writes nothing."""
    out = tmp_path / "never"
    assert main(["demo", "--quick", "--eps", "-1", "--out", str(out)]) == 2
    assert "eps=-1.0 is invalid" in capsys.readouterr().err
    assert not out.exists()


def test_report_facts_name_the_data_and_hyperparameters(tmp_path):
    """The report states which data was used and every planning hyperparameter."""
    config = DemoConfig.quick_defaults(data="digits", noise_seed=1, batch_size=64)
    result = run_demo(config, tmp_path, progress=False, echo=lambda line: None)
    facts = dict(result.facts)
    for key in ("data", "C0", "C1", "lam, gamma, T", "noise", "target (eps, delta)", "achieved (eps, delta)"):
        assert key in facts
    assert "load_digits" in facts["data"]
    cert = json.loads((tmp_path / "certificate.json").read_text())
    assert cert["mechanism"]["C0"] == float(facts["C0"])


def test_original_forget_accuracy_is_a_private_diagnostic_only(tmp_path):
    """The original model's forget-set accuracy is not covered by the guarantee (it is a membership signal
    about D_f): it never reaches report.md, report.png's data or the printed table; it is kept only in
    DemoResult.private, marked as such."""
    config = DemoConfig.quick_defaults(data="digits", noise_seed=5, batch_size=64)
    lines = []
    result = run_demo(config, tmp_path, progress=False, echo=lines.append)
    original = result.phases[0]
    assert original.kind == "original" and original.forget is None
    value = result.private["original model forget-set accuracy"]
    assert 0.0 <= value <= 1.0 and "never publish" in result.private_note
    md = (tmp_path / "report.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| original (trained on D)"))
    assert f"{value:.4f}" not in row and "not reported" in row
    assert f"original: forget {value:.3f}" not in md
    printed = "\n".join(lines)
    table_row = next(line for line in printed.splitlines() if line.startswith("original"))
    assert f"{value:.4f}" not in table_row


def test_a_phase_without_forget_accuracy_formats_as_not_reported(tmp_path):
    """Phase(forget=None) is valid only for the original model and prints as 'not reported'."""
    phases = [Phase(label="original (trained on D)", kind="original", retain=0.9, forget=None, test=0.86),
              *_phases()[1:]]
    assert "not reported" in phase_table(phases).splitlines()[2]
    md, _ = write_report(tmp_path, title="T", phases=phases, facts=[], verification="ok", notes=[])
    assert "| original (trained on D) | 0.9000 | not reported | 0.8600 |" in md.read_text()
    with pytest.raises(InvalidParameterError, match="forget"):
        Phase(label="x", kind="noisy", retain=0.5, forget=None, test=0.5)


def test_demo_release_is_keyed_from_the_os_and_its_replay_uses_the_opening(tmp_path):
    """Without --noise-seed the released run's key is fresh from the OS (not a 63-bit user seed), and the
    private per-epoch replay reuses that run's opening, so it is still bit-identical. The original model's
    row is marked private in the report."""
    config = DemoConfig.quick_defaults(data="digits", batch_size=64)
    result = run_demo(config, tmp_path, progress=False, echo=lambda line: None)
    cert = json.loads((tmp_path / "certificate.json").read_text())
    assert cert["execution"]["noise"]["key_origin"] == "os"
    assert result.replay_max_abs_diff == 0.0
    assert "**Private:**" in (tmp_path / "report.md").read_text()
