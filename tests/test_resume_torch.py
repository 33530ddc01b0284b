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
