"""Resumable runs (torch backend): a process killed mid-run is resumed in another and ends bit-identical."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

torch = pytest.importorskip("torch")

import certun  # noqa: E402

# The run both processes make: dropout in the model, so the auxiliary RNG state is part of what resumes.
_SCRIPT = textwrap.dedent("""
    import os, sys
    import torch
    from torch import nn
    import certun

    def inputs():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.3), nn.Linear(8, 2))
        g = torch.Generator().manual_seed(1)
        X, y = torch.randn(24, 4, generator=g), torch.randint(0, 2, (24,), generator=g)
        data = [(X[i:i + 6], y[i:i + 6]) for i in range(0, 24, 6)]
        schedule = certun.plan(1.0, 1e-5, C0=1.0, C1=1.0, gamma=0.1, T=10)
        return model, data, schedule

    def run(folder=None, callback=None):
        model, data, schedule = inputs()
        extra = {} if folder is None else dict(checkpoint_dir=folder, checkpoint_every=3)
        return certun.unlearn(model, data, schedule, loss_fn=torch.nn.functional.cross_entropy, seed=5,
                              progress=False, callback=callback, **extra)

    if __name__ == "__main__":
        def die(t, x):
            if t == int(sys.argv[2]):
                os._exit(3)  # no cleanup, no finally: as a SIGKILL or pre-emption would
        run(sys.argv[1], die)
""")


def _state_bytes(model):
    return {k: v.detach().cpu().numpy().tobytes() for k, v in model.state_dict().items()}


def test_a_killed_process_resumes_in_another_bit_identical(tmp_path):
    """Killed after step 7 (checkpoints after steps 2 and 5), resumed by a new process at step 6: same model
    bytes, same history and certificate as one uninterrupted run; the checkpoint folder is gone."""
    script = tmp_path / "resume_run.py"
    script.write_text(_SCRIPT)
    folder = tmp_path / "ckpt"
    killed = subprocess.run([sys.executable, str(script), str(folder), "7"], capture_output=True, text=True,
                            timeout=600)
    assert killed.returncode == 3, killed.stderr
    assert (folder / "certun-checkpoint.bin").is_file()
    sys.path.insert(0, str(tmp_path))
    try:
        import resume_run
    finally:
        sys.path.remove(str(tmp_path))
    resumed = resume_run.run(folder)
    reference = resume_run.run()
    assert resumed.resumed_from == 6 and reference.resumed_from is None
    assert _state_bytes(resumed.model) == _state_bytes(reference.model)
    assert {k: v for k, v in resumed.history.items() if k != "time_s"} == \
        {k: v for k, v in reference.history.items() if k != "time_s"}
    for part in ("claim", "mechanism", "accounting", "subject"):
        assert resumed.certificate[part] == reference.certificate[part]
    assert not folder.exists()


def test_torch_refuses_another_runs_checkpoint(tmp_path):
    """A torch checkpoint resumed with another loss is refused before any step (the key context differs)."""
    script = tmp_path / "resume_run2.py"
    script.write_text(_SCRIPT)
    folder = tmp_path / "ckpt"
    killed = subprocess.run([sys.executable, str(script), str(folder), "4"], capture_output=True, text=True,
                            timeout=600)
    assert killed.returncode == 3, killed.stderr
    sys.path.insert(0, str(tmp_path))
    try:
        import resume_run2
    finally:
        sys.path.remove(str(tmp_path))
    model, data, schedule = resume_run2.inputs()
    with pytest.raises(certun.errors.InvalidParameterError, match="checkpoint"):
        certun.unlearn(model, data, schedule, loss_fn=torch.nn.functional.nll_loss, seed=5, progress=False,
                       checkpoint_dir=folder, checkpoint_every=3)
    assert (folder / "certun-checkpoint.bin").is_file()


class _CrashError(Exception):
    pass


def _shuffled_run(folder=None, *, generator, crash_at=None):
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.3), nn.Linear(8, 2))
    g = torch.Generator().manual_seed(1)
    dataset = torch.utils.data.TensorDataset(torch.randn(24, 4, generator=g), torch.randint(0, 2, (24,), generator=g))
    loader = torch.utils.data.DataLoader(dataset, batch_size=6, shuffle=True,
                                         generator=torch.Generator().manual_seed(3) if generator else None)

    def callback(t, x):
        if t == crash_at:
            raise _CrashError

    extra = {} if folder is None else dict(checkpoint_dir=folder, checkpoint_every=3)
    return certun.unlearn(model, loader, certun.plan(1.0, 1e-5, C0=1.0, C1=1.0, gamma=0.1, T=10),
                          loss_fn=torch.nn.functional.cross_entropy, seed=5, progress=False, callback=callback,
                          **extra)


def test_a_shuffling_loader_with_its_own_generator_resumes_across_passes(tmp_path):
    """Four batches a pass, resumed at step 6 (inside the second pass): the loader's own generator gives the
    same order again, so the run ends bit-identical."""
    folder = tmp_path / "ckpt"
    with pytest.raises(_CrashError):
        _shuffled_run(folder, generator=True, crash_at=7)
    resumed = _shuffled_run(folder, generator=True)
    reference = _shuffled_run(generator=True)
    assert resumed.resumed_from == 6
    assert _state_bytes(resumed.model) == _state_bytes(reference.model)
    assert not folder.exists()


def test_a_loader_shuffled_by_the_global_rng_is_refused_past_its_first_pass(tmp_path):
    """Without its own generator the loader's second-pass order follows the dropout draws before it, which
    re-reading cannot repeat: the re-read chain differs and the resume is refused, checkpoint kept."""
    folder = tmp_path / "ckpt"
    with pytest.raises(_CrashError):
        _shuffled_run(folder, generator=False, crash_at=7)
    with pytest.raises(certun.errors.UnlearningRunError, match="same order"):
        _shuffled_run(folder, generator=False)
    assert (folder / "certun-checkpoint.bin").is_file()


def test_a_checkpoint_from_another_device_count_is_refused_and_kept(tmp_path, monkeypatch):
    """The dropout state is per CUDA device: a resume that sees another number of devices is refused, and
    the checkpoint stays for a resume where the run began."""
    from certun.backends.torch import _rng

    folder = tmp_path / "ckpt"
    with pytest.raises(_CrashError):
        _shuffled_run(folder, generator=True, crash_at=4)
    seen = len(_rng._devices())
    monkeypatch.setattr(_rng, "_devices", lambda: list(range(seen + 1)))
    with pytest.raises(certun.errors.UnlearningRunError, match="CUDA devices"):
        _shuffled_run(folder, generator=True)
    assert (folder / "certun-checkpoint.bin").is_file()


@pytest.mark.parametrize("change", ["frozen_values", "unlearned_parameters"])
def test_torch_binds_frozen_values_and_the_unlearned_set(tmp_path, change):
    """Frozen (public) parameters and which parameters are unlearned shape every step: a resume after either
    changed would continue one run's iterate with another's steps; refused before any step, checkpoint kept."""
    from torch import nn

    def inputs():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        g = torch.Generator().manual_seed(1)
        X, y = torch.randn(24, 4, generator=g), torch.randint(0, 2, (24,), generator=g)
        return model, [(X[i:i + 6], y[i:i + 6]) for i in range(0, 24, 6)]

    schedule = certun.plan(1.0, 1e-5, C0=1.0, C1=1.0, gamma=0.1, T=8)
    common = dict(loss_fn=torch.nn.functional.cross_entropy, seed=5, progress=False, frozen="public",
                  checkpoint_dir=tmp_path / "ckpt", checkpoint_every=3)

    def crash(t, x):
        if t == 4:
            raise _CrashError

    model, data = inputs()
    with pytest.raises(_CrashError):
        certun.unlearn(model, data, schedule, params=["2.weight", "2.bias"], callback=crash, **common)
    model, data = inputs()
    params = ["2.weight", "2.bias"]
    if change == "frozen_values":
        with torch.no_grad():
            model[0].weight[0, 0] += 0.5
    else:
        params = ["2.weight"]
    seen = []
    with pytest.raises(certun.errors.InvalidParameterError, match="checkpoint"):
        certun.unlearn(model, data, schedule, params=params, callback=lambda t, x: seen.append(t), **common)
    assert seen == [] and (tmp_path / "ckpt" / "certun-checkpoint.bin").is_file()


@pytest.mark.parametrize("blob", [b"", b"\x01\x00\x00\x00", b"\x01\x00\x00\x00\xff\x00\x00\x00\x00\x00\x00\x00ab",
                                  b"\x01\x00\x00\x00\x02\x00\x00\x00\x00\x00\x00\x00ab"],
                         ids=["empty", "no_state", "short_state", "wrong_size_state"])
def test_a_malformed_rng_state_is_refused_with_a_typed_error(blob):
    """The dropout RNG state read back from a checkpoint (its owner can re-tag an edited file) is parsed with
    care: a truncated or wrong-sized state is an UnlearningRunError, not a struct/torch error, and the global
    generator is left as it was."""
    from certun.backends.torch import _rng

    before = torch.get_rng_state()
    with pytest.raises(certun.errors.UnlearningRunError, match="checkpoint"):
        _rng.set_state(blob)
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.parametrize("norm", [False, True], ids=["plain", "batchnorm_recompute"])
def test_an_in_place_run_that_crashes_leaves_the_model_as_it_was_and_resumes(tmp_path, norm):
    """inplace=True and a crash mid-run: the caller's model must not be left holding an intermediate iterate (no
    certificate covers it, and saving "what we have" would release it), and running the same call again on the
    same model object resumes from the checkpoint instead of being refused as another starting model."""
    from torch import nn

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    X, y = torch.randn(24, 4, generator=g), torch.randint(0, 2, (24,), generator=g)
    data = [(X[i:i + 6], y[i:i + 6]) for i in range(0, 24, 6)]
    schedule = certun.plan(1.0, 1e-5, C0=1.0, C1=1.0, gamma=0.1, T=8)
    common = dict(loss_fn=torch.nn.functional.cross_entropy, seed=5, progress=False, inplace=True,
                  checkpoint_dir=tmp_path / "ckpt", checkpoint_every=3)
    if norm:
        model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
        model(X)  # running statistics of the caller's own
        common.update(buffers="recompute", clip="batch")
    else:
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def crash(t, x):
        if t == 4:
            raise _CrashError

    with pytest.raises(_CrashError):
        certun.unlearn(model, data, schedule, callback=crash, **common)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    resumed = certun.unlearn(model, data, schedule, **common)
    assert resumed.resumed_from == 3 and resumed.model is model
