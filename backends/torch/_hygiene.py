"""Training state that must not survive into a certified model: find it, refuse it, or clear it.

The guarantee covers the released parameters only (docs/theory.md#definition). Anything else a model object
carries from training on D — stale ``.grad`` tensors, Opacus' per-sample gradients and activations,
caches derived from earlier parameter values — is data-dependent state that ``torch.save(model)`` or
pickling would publish alongside. Three jobs:

* :func:`stale_state_problems` refuses what certun cannot clean safely: Opacus hooks still attached
  (a ``GradSampleModule`` or hooks left by training), and old-style ``torch.nn.utils.weight_norm`` /
  ``spectral_norm`` pre-hooks, which keep the derived ``weight`` as a plain attribute computed from
  the parameters at the *last forward pass* (an intermediate iterate, not the released model).
* :func:`clear_training_state` drops every ``.grad`` and every attribute Opacus puts on parameters
  and modules, at the start of a run and after each phase.
* :func:`training_flags` / :func:`restore_training_flags` keep each submodule's own train/eval flag.
"""

from __future__ import annotations

from torch import nn

__all__ = [
    "OPACUS_MODULE_ATTRS",
    "OPACUS_PARAM_ATTRS",
    "clear_training_state",
    "restore_training_flags",
    "stale_state_problems",
    "training_flags",
]

#: Attributes Opacus (hooks and DPOptimizer) sets on parameters; they hold per-sample gradients of D.
OPACUS_PARAM_ATTRS = ("grad_sample", "_forward_counter", "_current_grad_sample", "_norm_sample", "summed_grad")
#: Attributes Opacus' hooks set on modules; ``activations`` holds training inputs.
OPACUS_MODULE_ATTRS = ("activations", "max_batch_len")


def _owner(hook: object) -> object:
    """The object a hook function is bound to (through ``functools.partial`` too), or the hook itself."""
    func = getattr(hook, "func", hook)  # functools.partial
    return getattr(func, "__self__", hook)


def _is_opacus(obj: object) -> bool:
    return type(obj).__module__.split(".")[0] == "opacus"


def stale_state_problems(model: nn.Module) -> list[tuple[str, str, str]]:
    """``(path, reason, remedy)`` for every piece of training machinery certun will not clean up silently."""
    from torch.nn.utils.spectral_norm import SpectralNorm
    from torch.nn.utils.weight_norm import WeightNorm

    problems: list[tuple[str, str, str]] = []
    if _is_opacus(model):
        problems.append(("<model>", f"the model is an Opacus {type(model).__name__} wrapper with its hooks attached",
                         "pass the wrapped module (model._module) after removing the hooks (model.remove_hooks())"))
        return problems
    for path, module in model.named_modules():
        hooks = [*module._forward_hooks.values(), *module._forward_pre_hooks.values(),
                 *module._backward_hooks.values(), *getattr(module, "_backward_pre_hooks", {}).values()]
        if any(_is_opacus(_owner(h)) for h in hooks) or getattr(module, "autograd_grad_sample_hooks", None):
            problems.append((path, "Opacus per-sample-gradient hooks from training are still attached (they record "
                             "training inputs and per-sample gradients)",
                             "remove them first (GradSampleModule.remove_hooks() / hooks.cleanup()), or unwrap"))
        for hook in module._forward_pre_hooks.values():
            if isinstance(hook, (WeightNorm, SpectralNorm)):
                kind = "weight_norm" if isinstance(hook, WeightNorm) else "spectral_norm"
                extra = ("" if kind == "weight_norm" else
                         "; its power-iteration vectors are buffers computed during training on D")
                problems.append((path, f"old-style torch.nn.utils.{kind} keeps the derived {hook.name!r} as a plain "
                                 "attribute computed at the last forward pass, i.e. from an intermediate iterate, "
                                 f"not the released parameters{extra}",
                                 f"use torch.nn.utils.parametrizations.{kind} (computed on access), or "
                                 f"torch.nn.utils.remove_{kind}(module) before unlearning"))
    return problems


def clear_training_state(model: nn.Module) -> None:
    """Drop every parameter's ``.grad`` and every Opacus attribute on parameters and modules (in place)."""
    for p in model.parameters():
        p.grad = None
        for attribute in OPACUS_PARAM_ATTRS:
            if hasattr(p, attribute):
                delattr(p, attribute)
    for module in model.modules():
        for attribute in (*OPACUS_MODULE_ATTRS, "autograd_grad_sample_hooks"):
            if attribute in module.__dict__:
                delattr(module, attribute)


def training_flags(model: nn.Module) -> dict[nn.Module, bool]:
    """Each submodule's ``training`` flag, to restore after a run that switches modes."""
    return {module: module.training for module in model.modules()}


def restore_training_flags(flags: dict[nn.Module, bool]) -> None:
    """Put back every submodule's own flag (``model.train(flag)`` would overwrite submodules' eval())."""
    for module, flag in flags.items():
        module.training = flag
