"""The backend registry and interface: lazy built-ins, refusals that list what is valid, no torch on import."""

from __future__ import annotations

import subprocess
import sys

import pytest

import certun
from certun.backends import Backend, RunResult, available_backends, get_backend, register_backend, registry
from certun.errors import InvalidParameterError


class _Dummy:
    name = "dummy"

    def unlearn(self, model, data, schedule, /, *, seed=None, **opts):
        """Do nothing (registry tests only)."""
        raise NotImplementedError


@pytest.fixture
def clean_registry(monkeypatch):
    """A private registry for one test, so registrations do not leak."""
    monkeypatch.setattr(registry, "_registry", {})


def test_builtins_load_on_first_use_and_are_backends(clean_registry):
    """get_backend loads each built-in once and returns an object satisfying the Backend protocol."""
    for name in ("numpy", "torch"):
        backend = get_backend(name)
        assert backend.name == name
        assert isinstance(backend, Backend)
        assert get_backend(name) is backend


def test_unknown_name_lists_available_names(clean_registry):
    """An unknown name raises InvalidParameterError naming every available backend, registered ones too."""
    register_backend(_Dummy())
    with pytest.raises(InvalidParameterError) as info:
        get_backend("jax")
    message = str(info.value)
    for name in ("'dummy'", "'numpy'", "'torch'", "jax"):
        assert name in message
    assert available_backends() == ("dummy", "numpy", "torch")


def test_reregistration_raises_unless_forced(clean_registry):
    """Registering a taken name (or a built-in's) raises; force=True replaces."""
    first, second = _Dummy(), _Dummy()
    register_backend(first)
    with pytest.raises(InvalidParameterError, match="force=True"):
        register_backend(second)
    assert get_backend("dummy") is first
    register_backend(second, force=True)
    assert get_backend("dummy") is second
    impostor = _Dummy()
    impostor.name = "torch"
    with pytest.raises(InvalidParameterError, match="a name not yet registered"):
        register_backend(impostor)


def test_register_refuses_non_backends(clean_registry):
    """Objects without a name or an unlearn method are refused."""
    class NoUnlearn:
        name = "x"

    with pytest.raises(InvalidParameterError, match="unlearn"):
        register_backend(NoUnlearn())
    anonymous = _Dummy()
    anonymous.name = ""
    with pytest.raises(InvalidParameterError, match=r"backend\.name"):
        register_backend(anonymous)


def test_importing_backends_does_not_import_torch():
    """`import certun.backends` (and the numpy backend) leaves torch unimported."""
    code = ("import sys, certun.backends; from certun.backends import get_backend; get_backend('numpy'); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_unlearn_result_is_frozen():
    """RunResult and certun.UnlearnResult cannot be mutated after the run."""
    import dataclasses

    from certun.certificates import RunRecord

    record = RunRecord(backend="x", clipping=None, unlearned_parameters=("w",), d=1, noisy_steps=0)
    for result in (RunResult(model=None, history={}, record=record, seed=1),
                   certun.UnlearnResult(model=None, certificate=None, history={}, record=record, seed=1)):
        with pytest.raises(dataclasses.FrozenInstanceError):
            result.seed = 2


def test_the_public_names_of_the_torch_backend_are_pinned():
    pytest.importorskip("torch")
    import certun.backends.torch

    assert sorted(certun.backends.torch.__all__) == sorted([
        "SAFETY", "TorchBackend", "add_noise", "clip", "gc_step", "mc_step", "output_perturbation", "project_ball",
        "resolve_device"])
