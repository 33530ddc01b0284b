"""The PyTorch backend: runs a schedule's noisy phase on an ``nn.Module`` and records the run.

The run, in order (the order is the run skeleton's, :mod:`certun.backends._skeleton`; the torch
operations are :class:`~certun.backends.torch._run.TorchRun`'s; each step's formula is in
:mod:`certun.backends.torch._steps`):

1. refuse training machinery left on the model (Opacus hooks, old-style weight_norm caches), copy it
   (unless ``inplace=True``), drop every stale gradient and Opacus attribute, select the unlearned
   parameters, refuse anything that would make the guarantee false
   (:func:`~certun.backends.torch._model.check_model`);
2. digest the unlearned parameters (published only as a salted commitment for a first request), the
   frozen ones and the centre; derive the run's noise key from a fresh OS key (or a user seed, for
   tests and audits) and every run input (:mod:`certun.backends.run_key`); refuse a run whose
   sampler tail residual could exceed 1e-13·δ (no optimizer state from training exists here: certun
   runs its own update);
3. in a float64 master copy of the unlearned vector: project globally onto the C0 ball around the
   centre, then run exactly ``schedule.T`` noisy steps of the variant on retain minibatches (the
   gradient is evaluated at the master rounded to the parameters' dtype; clipping, weight decay,
   projection and the float64 noise draw ``t`` of the keyed generator are applied in float64), and
   round to the parameters' dtype once at the end (docs/theory.md#floating-point-and-randomness);
4. post-process (project back onto the C0 ball; noiseless fine-tuning; BatchNorm statistics
   recomputed from retain data when asked) -- all post-processing of the unlearned parameters and
   retain data only (docs/theory.md#definition, #utility-limit);
5. check frozen parameters are bit-identical, digest the result, commit to the key and return the
   :class:`~certun.certificates.RunRecord` (:func:`certun.unlearn` issues and writes the certificate).

A failure at any point raises and writes nothing.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from certun.accountant import Schedule
from certun.backends import _skeleton as skeleton
from certun.backends._options import RunOptions
from certun.backends.base import RunResult
from certun.backends.distributed import agreed
from certun.backends.torch._data import resolve_device
from certun.backends.torch._fsdp_layout import is_sharded
from certun.backends.torch._precision import check_autocast
from certun.backends.torch._run import TorchRun
from certun.errors import InvalidParameterError

__all__ = ["TorchBackend", "resolve_device"]


def _check_callables(model: Any, loss_fn: Any, model_factory: Any, params: Any) -> Any:
    """Reject a model that is not a ``torch.nn.Module``, a loss that is not callable, or a bad model factory.

    Returns ``params`` as a list when it is an iterable (iterated more than once, e.g. a generator).
    """
    if not isinstance(model, nn.Module):
        raise InvalidParameterError("model", type(model).__name__, "a torch.nn.Module")
    if not callable(loss_fn):
        raise InvalidParameterError("loss_fn", type(loss_fn).__name__, "a callable loss")
    if model_factory is not None and not callable(model_factory):
        raise InvalidParameterError("model_factory", type(model_factory).__name__, "a callable or None")
    return list(params) if params is not None and not isinstance(params, str) else params


_LAYOUTS = {"replicated": "DistributedRun", "ddp": "DistributedRun", "sharded": "ShardedRun", "fsdp": "FsdpRun"}


def _runner(model: nn.Module, distributed: str | None, opts: RunOptions) -> tuple[nn.Module, type[TorchRun]]:
    """The hooks class for ``distributed`` and the model it runs on (a DDP wrapper's ``.module``)."""
    wrapped = isinstance(model, nn.parallel.DistributedDataParallel)
    if distributed != "fsdp" and any(is_sharded(p) for p in model.parameters()):
        raise InvalidParameterError("distributed", distributed, "'fsdp' for a module wrapped by "
                                    "torch.distributed.fsdp.fully_shard (its parameters are DTensors)")
    if distributed is None:
        if wrapped:
            raise InvalidParameterError("distributed", None, "'replicated' for a DistributedDataParallel model "
                                        "(or pass its .module to a single-process run)")
        return model, TorchRun
    if not isinstance(distributed, str) or distributed not in _LAYOUTS:
        raise InvalidParameterError("distributed", distributed, "None, 'replicated' (alias 'ddp'), 'sharded' or "
                                    "'fsdp'")
    if distributed == "fsdp":
        from certun.backends.torch._fsdp_run import FsdpRun

        return model, FsdpRun
    from certun.backends.torch import _dist_run

    return (model.module if wrapped else model), getattr(_dist_run, _LAYOUTS[distributed])


def _hooks(model: nn.Module, data: Any, schedule: Schedule, distributed: str | None, seed: Any,
           options: dict[str, Any], hooks_args: dict[str, Any]) -> tuple[RunOptions, TorchRun]:
    """Every option checked, and the run's hooks built (in a distributed run, every rank's outcome is agreed)."""
    opts = RunOptions.check(schedule, **options)
    cast = check_autocast(hooks_args["autocast"])
    params = _check_callables(model, hooks_args["loss_fn"], hooks_args["model_factory"], hooks_args["params"])
    skeleton.check_seed(seed)
    module, runner = _runner(model, distributed, opts)
    return opts, runner(module, data, schedule, opts, **{**hooks_args, "params": params, "autocast": cast,
                                                          "device": resolve_device(hooks_args["device"])})


class TorchBackend:
    """Certified unlearning for ``torch.nn.Module`` models (registered as ``"torch"``)."""

    name = "torch"

    def unlearn(
        self,
        model: nn.Module,
        data: Iterable[Any],
        schedule: Schedule,
        /,
        *,
        loss_fn: Callable[..., torch.Tensor],
        seed: int | Mapping[str, Any] | None = None,
        params: Iterable[Any] | None = None,
        center: Any = None,
        clip: str = "per_sample",
        finetune_epochs: int = 0,
        finetune_lr: float = 0.05,
        postprocess: str = "project_C0",
        device: Any = None,
        progress: bool = True,
        retain_ids: Iterable[Any] | None = None,
        forget_ids: Iterable[Any] | None = None,
        noise_mode: str = "fresh",
        buffers: str = "reject",
        frozen: str = "reject",
        attributes: str = "reject",
        model_factory: Callable[[], nn.Module] | None = None,
        callback: Callable[[int, torch.Tensor], None] | None = None,
        noise_source: Callable[[int, int], Any] | None = None,
        inplace: bool = False,
        previous: Any = None,
        checkpoint_dir: Any = None, checkpoint_every: int | None = None, distributed: str | None = None,
        autocast: str | None = None,
    ) -> RunResult:
        """Unlearn: run ``schedule``'s noisy phase on ``model`` with retain data only, then post-process.

        ``model`` is deep-copied unless ``inplace=True``; ``data`` is a re-iterable of ``(inputs, targets)``
        retain batches; ``loss_fn`` accepts ``reduction="none"``. ``seed=None`` (default) keys the noise from
        the OS; an integer seed is for tests and audits only; a ``seed_opening`` replays a run (never
        certified). Every option, its default and why: docs/backends.md ("Options of the torch backend");
        ``autocast``: :mod:`._precision`. ``distributed="replicated"`` (DDP), ``"sharded"`` or ``"fsdp"`` (a
        ``fully_shard`` module): one call per rank of the process group (docs/distributed.md).

        Returns:
            A :class:`~certun.backends.RunResult` (no certificate: :func:`certun.unlearn` issues it).

        Raises:
            InvalidParameterError: a bad option or schedule.
            UnsupportedModelError: the model cannot be unlearned soundly as asked (every problem listed).
            UnlearningRunError: the run failed (empty data, NaN loss, wrong shapes).
        """
        options = dict(clip=clip, postprocess=postprocess, finetune_epochs=finetune_epochs, finetune_lr=finetune_lr,
                       noise_mode=noise_mode, progress=progress, callback=callback, noise_source=noise_source,
                       buffers=buffers, frozen=frozen, attributes=attributes, checkpoint_dir=checkpoint_dir,
                       checkpoint_every=checkpoint_every)
        hooks_args = dict(loss_fn=loss_fn, params=params, center=center, device=device, model_factory=model_factory,
                          inplace=inplace, autocast=autocast)
        check = functools.partial(_hooks, model, data, schedule, distributed, seed, options, hooks_args)
        opts, hooks = check() if distributed is None else agreed(check, "checking the options")
        return skeleton.run(hooks, data, schedule, opts, seed=seed, previous=previous, retain_ids=retain_ids,
                            forget_ids=forget_ids)
