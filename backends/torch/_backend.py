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

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from certun.accountant import Schedule
from certun.backends import _skeleton as skeleton
from certun.backends._options import RunOptions
from certun.backends.base import RunResult
from certun.backends.torch._data import resolve_device
from certun.backends.torch._run import TorchRun
from certun.errors import InvalidParameterError

__all__ = ["TorchBackend", "resolve_device"]


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
    ) -> RunResult:
        """Unlearn: run ``schedule``'s noisy phase on ``model`` with retain data only, then post-process.

        Args:
            model: the trained model. It is deep-copied unless ``inplace=True``. Models still carrying
                Opacus hooks or old-style ``weight_norm``/``spectral_norm`` caches are refused; stale
                ``.grad`` tensors and Opacus attributes are dropped from the model that is run.
            data: the retain data ``D∖D_f``: a re-iterable of ``(inputs, targets)`` batches (a
                ``DataLoader``). The noisy phase cycles through it for exactly ``schedule.T`` batches
                (an endless stream is fine there); fine-tuning and ``buffers="recompute"`` need a
                sized re-iterable (``len()``), one pass per epoch. Pass a loader with its own seeded
                ``generator`` (or no shuffling) for runs that reproduce bit for bit.
            schedule: from :func:`certun.plan`; the backend runs it and computes no privacy itself.
            loss_fn: a loss accepting ``reduction="none"`` (``torch.nn.functional.cross_entropy``) or a
                loss module; per-sample losses are averaged over the real batch size.
            seed: ``None`` (default): the noise key is fresh from the OS's secure source (256 bits).
                An integer (``0 <= seed < 2**63``) is for tests and audits only: it is not a secret
                key, the certificate records it as a user seed and ``certun verify`` WARNs. Either
                way the run key is derived from it and every run input (starting model, centre,
                retain/forget identifiers, schedule, options, dtype), so a reused seed never repeats
                noise across different runs; never reuse a seed all the same. The certificate holds
                only a salted commitment; the opening goes back in ``result.seed_opening``. Passing a
                previous run's ``seed_opening`` replays that run exactly (an audit, or scoring a run
                privately): same secret, same inputs, same noise -- never release both.
            params: which parameters are unlearned (names or parameter objects). Default: every
                parameter with ``requires_grad``. If any parameter is left out (by ``params`` or by
                ``requires_grad=False``) the run is refused unless ``frozen="public"`` says the left-out
                ones are independent of D. The rest are frozen:
                left bit-identical and recorded, and the user asserts they are independent of the
                training data (docs/theory.md#definition). The unlearned vector ``x`` always follows the model's
                ``named_parameters()`` order, whatever the order of ``params``.
            center: the balls' centre (docs/theory.md#anchored-balls): a state dict, or a flat vector in
                ``named_parameters()`` order of the unlearned parameters (the order of
                ``result.record.unlearned_parameters``), independent of the training data (e.g.
                public pretrained weights); default 0. A centre equal to the starting model, whole or in
                any non-constant tensor, is refused (docs/theory.md#anchored-balls).
            clip: ``"per_sample"`` (Opacus hooks), ``"ghost"`` (Opacus ghost clipping) or
                ``"batch"`` (clip the minibatch-mean gradient); used where the variant clips.
            finetune_epochs, finetune_lr: noiseless SGD on retain data after the noisy phase
                (post-processing); for ``retrain`` these are the training epochs.
            postprocess: ``"project_C0"`` (project back onto the C0 ball first; free, docs/theory.md#utility-limit) or
                ``"none"``.
            device: where to run; CUDA when available, else CPU.
            progress: show tqdm bars for the noisy phase and the fine-tuning.
            retain_ids, forget_ids: record identifiers for the certificate's Merkle roots; retain ids
                default to the loader's dataset indices. Explicit retain ids must number the records
                of the loader's dataset (or, for unsized data, the samples of one pass).
            noise_mode: ``"fresh"``; ``"reuse_first_draw_UNSAFE"`` is an audit control only (adds one
                draw at every step, warns, issues no certificate).
            buffers: ``"reject"`` data-dependent buffers (default), ``"recompute"`` BatchNorm running
                statistics from retain data (needs ``clip="batch"`` where gradients are clipped), or
                ``"public"`` (the user asserts the model's non-norm buffers are independent of D).
            frozen: ``"reject"`` (default) refuses any parameter that is not unlearned (left out of
                ``params``, or with ``requires_grad=False`` when ``params`` is not given); ``"public"``
                asserts they are independent of D (e.g. a public backbone) and leaves them frozen.
            attributes: ``"reject"`` (default) refuses tensors and arrays a module keeps as plain
                attributes (``self.mu = X.mean(0)``), which the run would neither unlearn nor record;
                ``"public"`` asserts they are independent of D: digested, recorded, checked unchanged.
            model_factory: for ``retrain``: builds a freshly initialised model of the same
                architecture; default re-initialises with each module's ``reset_parameters()``,
                refused if that leaves any unlearned parameter untouched.
            callback: called as ``callback(step, x)`` after each noisy step with the flat float64
                master iterate (a live view: copy it to keep it, never modify it). Intermediate iterates are not
                covered by the guarantee: never publish them.
            noise_source: testing hook: ``noise_source(k, d)`` returns the k-th standard-normal draw;
                no certificate is issued.
            inplace: modify ``model`` itself instead of a copy.
            previous: the previous certificate of this model's ledger (dict or path). When the
                model is the one it released, the
                starting model is recorded as a plain digest (it is public) instead of a commitment.

        Returns:
            A :class:`~certun.backends.RunResult`.

        Raises:
            InvalidParameterError: a bad option or schedule.
            UnsupportedModelError: the model cannot be unlearned soundly as asked (every problem listed).
            UnlearningRunError: the run failed (empty data, NaN loss, wrong shapes); nothing is written.
        """
        opts = RunOptions.check(schedule, clip=clip, postprocess=postprocess, finetune_epochs=finetune_epochs,
                                finetune_lr=finetune_lr, noise_mode=noise_mode, progress=progress,
                                callback=callback, noise_source=noise_source, buffers=buffers, frozen=frozen,
                                attributes=attributes)
        if not isinstance(model, nn.Module):
            raise InvalidParameterError("model", type(model).__name__, "a torch.nn.Module")
        if not callable(loss_fn):
            raise InvalidParameterError("loss_fn", type(loss_fn).__name__, "a callable loss")
        if model_factory is not None and not callable(model_factory):
            raise InvalidParameterError("model_factory", type(model_factory).__name__, "a callable or None")
        if params is not None and not isinstance(params, str):
            params = list(params)  # iterated more than once (e.g. model.parameters(), a generator)
        skeleton.check_seed(seed)
        hooks = TorchRun(model, data, schedule, opts, loss_fn=loss_fn, params=params, center=center,
                         device=resolve_device(device), model_factory=model_factory, inplace=inplace)
        return skeleton.run(hooks, data, schedule, opts, seed=seed, previous=previous, retain_ids=retain_ids,
                            forget_ids=forget_ids)
