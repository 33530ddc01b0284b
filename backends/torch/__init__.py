"""The PyTorch backend (registered as ``"torch"``): runs a schedule on an ``nn.Module``.

Importing this package imports torch; :mod:`certun.backends` does not. The backend's hooks are in
``_backend``; the step formulas on flat float64 vectors (``_steps``), the clipped minibatch gradient
(``_grad``, with certun's own per-layer path ``_layers`` and its rules ``_rules_outer``/``_rules_other``,
Opacus hooks, and the ``torch.func`` fallback ``_func`` for modules Opacus cannot handle; ``_loss`` for
per-sample losses, ``_precision`` for the bfloat16 autocast option), the model checks (``_model``,
``_hygiene``, ``_attributes``) and the per-sample sum check (``_sumcheck``) are private modules. The step functions
are public here because the audit replays the backend's own steps with them.
"""

from certun.backends.torch._backend import TorchBackend
from certun.backends.torch._data import resolve_device
from certun.backends.torch._steps import SAFETY, add_noise, clip, gc_step, mc_step, output_perturbation, project_ball

__all__ = [
    "SAFETY",
    "TorchBackend",
    "add_noise",
    "clip",
    "gc_step",
    "mc_step",
    "output_perturbation",
    "project_ball",
    "resolve_device",
]
