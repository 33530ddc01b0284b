"""The PyTorch backend: runs a schedule's noisy phase on an ``nn.Module`` and records the run.

The run, in order (each step's formula is in :mod:`certun.backends.torch._steps`):

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

import copy
import itertools
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from certun.accountant.schedule import Mode, Schedule, Variant
from certun.backends._options import RunOptions, clipping_for, opening_secret
from certun.backends.base import RunResult
from certun.backends.run_key import RunKey, check_tail, draw_index, noise_record, run_context, run_key
from certun.backends.torch._attributes import digestible, unregistered_arrays
from certun.backends.torch._grad import GradientComputer, batch_size
from certun.backends.torch._hygiene import (
    clear_training_state,
    restore_training_flags,
    stale_state_problems,
    training_flags,
)
from certun.backends.torch._model import (
    FlatParameters,
    ModelParts,
    check_center,
    check_model,
    flat_center,
    select_parameters,
)
from certun.backends.torch._steps import add_noise, gc_step, mc_step, output_perturbation, project_ball
from certun.certificates import provenance
from certun.certificates.record import RunRecord
from certun.errors import InvalidParameterError, UnlearningRunError, UnsupportedModelError

__all__ = ["TorchBackend"]

_CHECK_EVERY = 25  # steps between finiteness checks (each one synchronises a GPU)


def _tqdm(iterable: Iterable[Any], *, total: int, desc: str, enabled: bool) -> Iterable[Any]:
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=False)


_DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")


def resolve_device(device: Any) -> torch.device:
    """``device`` as an available ``torch.device``; CUDA when available and none is given, else CPU.

    Raises:
        InvalidParameterError: not a device, a device type that holds no data (``"meta"``) or that
            this machine does not have (``"cuda"`` without CUDA, an index beyond the device count).
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InvalidParameterError("device", device, "a torch device ('cpu', 'cuda', 'cuda:1', ...)") from exc
    if dev.type not in _DEVICE_TYPES:
        raise InvalidParameterError("device", device, "a device that holds data: one of " + ", ".join(_DEVICE_TYPES))
    backend = getattr(torch, dev.type, None) if dev.type != "cpu" else None
    if backend is not None:
        available = getattr(backend, "is_available", lambda: False)()
        if not available:
            raise InvalidParameterError("device", device, f"an available device ({dev.type} is not available here; "
                                        "use 'cpu' or device=None)")
        count = getattr(backend, "device_count", lambda: 1)()
        if dev.index is not None and dev.index >= count:
            raise InvalidParameterError("device", device, f"an index below the {count} {dev.type} device(s) here")
    return dev


def _to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    return obj


def _pair(batch: Any, *, batch_first: bool) -> tuple[Any, Any, int]:
    """``(inputs, targets, batch size)`` of one retain batch; refuses malformed batches with a certun error.

    With ``batch_first`` (per-sample clipping), a tensor input must have the targets' batch size on
    its first axis: per-sample gradients are split along it.
    """
    if not (isinstance(batch, (list, tuple)) and len(batch) == 2):
        raise UnlearningRunError(f"each retain batch must be an (inputs, targets) pair, got "
                                 f"{type(batch).__name__}" + (f" of length {len(batch)}"
                                                              if isinstance(batch, (list, tuple)) else ""))
    inputs, targets = batch
    size = batch_size(targets)
    if batch_first and size and isinstance(inputs, torch.Tensor) and (inputs.dim() == 0 or inputs.shape[0] != size):
        raise UnlearningRunError(f"inputs of shape {tuple(inputs.shape)} do not have the targets' batch size {size} "
                                 "on their first axis; per-sample clipping needs batch-first inputs (use clip='batch' "
                                 "for other layouts)")
    return inputs, targets, size


class _RetainStream:
    """Cycles through the retain data as ``(inputs, targets)`` on the device, one pass after another.

    Refuses empty data, tells a consumed one-shot iterator from empty data, and reports the number
    of samples of each completed pass to ``on_pass`` (the retain-identifier count check).
    """

    def __init__(self, data: Iterable[Any], device: torch.device, *, batch_first: bool,
                 on_pass: Callable[[int], None] | None) -> None:
        self.data = data
        self.device = device
        self.batch_first = batch_first
        self.on_pass = on_pass
        self._iterator = self._cycle()

    def __next__(self) -> tuple[Any, Any]:
        return next(self._iterator)

    def _cycle(self) -> Iterator[tuple[Any, Any]]:
        passes = 0
        while True:
            count = samples = 0
            for batch in self.data:
                inputs, targets, size = _pair(batch, batch_first=self.batch_first)
                if size == 0:
                    continue
                count += 1
                samples += size
                yield _to_device(inputs, self.device), _to_device(targets, self.device)
            if count == 0:
                if passes:
                    raise UnlearningRunError(
                        f"the retain data yielded no batch on pass {passes + 1}: a one-shot iterator or generator "
                        "was consumed after one pass; pass a re-iterable (a DataLoader or a list of batches)")
                raise UnlearningRunError("the retain data is empty: no batch with at least one sample")
            passes += 1
            if self.on_pass is not None:
                self.on_pass(samples)


def _epoch_length(data: Iterable[Any], why: str) -> int:
    """Batches per pass of ``data``, for phases that iterate whole passes; refuses unsized or one-shot data.

    An endless stream has no epoch: fine-tuning or recomputing statistics over it would never return.
    """
    from collections.abc import Iterator as IteratorABC

    if isinstance(data, IteratorABC):
        raise InvalidParameterError("data", f"<{type(data).__name__}>", f"a re-iterable with len() for {why} (a "
                                    "DataLoader or a list of batches): an iterator is consumed by the noisy phase")
    try:
        n = len(data)  # type: ignore[arg-type]
    except TypeError:
        raise InvalidParameterError("data", f"<unsized {type(data).__name__}>", f"a re-iterable with len() for {why}: "
                                    "an endless stream has no epoch") from None
    if n < 1:
        raise UnlearningRunError("the retain data is empty: no batch with at least one sample")
    return n


def _cpu_copy(named: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {n: t.detach().to("cpu", copy=True) for n, t in named.items()}


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
        buffers, frozen, attributes = opts.buffers, opts.frozen, opts.attributes
        if not isinstance(model, nn.Module):
            raise InvalidParameterError("model", type(model).__name__, "a torch.nn.Module")
        if not callable(loss_fn):
            raise InvalidParameterError("loss_fn", type(loss_fn).__name__, "a callable loss")
        if model_factory is not None and not callable(model_factory):
            raise InvalidParameterError("model_factory", type(model_factory).__name__, "a callable or None")
        if params is not None and not isinstance(params, str):
            params = list(params)  # iterated more than once below (e.g. model.parameters(), a generator)
        prev = provenance.load_previous(previous)
        if isinstance(seed, Mapping):
            opening_secret(seed)  # refuse a bad opening before any work
        elif seed is not None:
            provenance.resolve_seed(seed)  # refuse a bad seed before any work
        dev = resolve_device(device)
        variant = schedule.variant
        clipping = clipping_for(schedule, opts.clip)
        hooks = clipping in ("per_sample", "ghost")
        epoch_batches = None
        if opts.finetune_epochs or buffers == "recompute":
            epoch_batches = _epoch_length(data, "fine-tuning" if opts.finetune_epochs else "buffers='recompute'")

        started = provenance.now_utc()
        problems = stale_state_problems(model)
        if problems:
            raise UnsupportedModelError(problems)
        work = model if inplace else _deepcopy(model)
        clear_training_state(work)  # stale gradients and Opacus state never enter (or leave) the run
        flags = training_flags(work)
        work.to(dev)
        parts = select_parameters(work, params)
        if parts.frozen and frozen != "public":
            left_out = "with requires_grad=False" if params is None else "left out of params"
            raise InvalidParameterError(
                "frozen", frozen, f"'public' to assert that the parameters {left_out} "
                f"{sorted(parts.frozen)[:5]}{' ...' if len(parts.frozen) > 5 else ''} are independent of the "
                "training data (docs/theory.md#definition); a frozen parameter trained on D voids the guarantee",
                hint="either pass frozen='public' (the certificate records them as public), or unlearn them too: "
                     + ("set requires_grad=True on every parameter trained on D" if params is None
                        else "add them to params=, or leave params out to unlearn every trainable parameter"))
        check_center(center, parts)
        if params is not None and center is not None and not isinstance(center, Mapping):
            _check_params_order(params, parts)
        check_model(work, parts, hooks=hooks, buffers=buffers, attributes=attributes)
        ids = provenance.identifiers(data, retain_ids, forget_ids)
        count_pass = provenance.check_retain_count(ids, data)
        dtype = parts.params[0].dtype
        named_unlearned = dict(zip(parts.names, parts.params, strict=True))
        before = provenance.model_digest(_cpu_copy(named_unlearned))
        start_model = provenance.starting_model(before, prev)
        flat_d = sum(p.numel() for p in parts.params)
        check_tail(schedule, flat_d)
        frozen_before = provenance.model_digest(_cpu_copy(dict(parts.frozen))) if parts.frozen else None
        public = provenance.model_digest(_cpu_copy(parts.buffers)) if (buffers == "public" and parts.buffers) else None
        loose = unregistered_arrays(work) if attributes == "public" else {}
        public_attributes = provenance.model_digest(digestible(loose)) if loose else None
        requires_grad = {n: p.requires_grad for n, p in work.named_parameters()}
        for p in parts.frozen.values():
            p.requires_grad_(False)
        for p in parts.params:
            p.requires_grad_(True)

        run = _Run(work, data, schedule, parts, opts, loss_fn=loss_fn, device=dev, dtype=dtype,
                   center=center, clipping=clipping, buffers=buffers, model_factory=model_factory,
                   epoch_batches=epoch_batches,
                   on_pass=(lambda n: provenance.check_pass_count(ids, n)) if count_pass else None)
        frozen_mode = "none" if not parts.frozen else frozen
        key = run_key(seed, run_context(
            model_before=before.root, center=None if run.center_digest is None else run.center_digest.root,
            retain_fingerprint=ids.retain_fingerprint, forget_fingerprint=ids.forget_fingerprint, schedule=schedule,
            options={"clip": clipping, "postprocess": opts.postprocess, "noise_mode": opts.noise_mode,
                     "buffers": buffers, "frozen": frozen_mode, "frozen_parameters": sorted(parts.frozen),
                     "attributes": attributes},
            unlearned_parameters=parts.names, dtype=str(dtype).replace("torch.", ""), backend=self.name))
        run.key = key
        # torch.manual_seed below reseeds every CUDA device: fork them all so the caller's RNGs are restored
        fork_devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
        try:
            with torch.random.fork_rng(devices=fork_devices):
                torch.manual_seed(key.aux_seed())
                run.execute()
        finally:
            for n, p in work.named_parameters():
                p.requires_grad_(requires_grad[n])
            clear_training_state(work)
            restore_training_flags(flags)

        after = provenance.model_digest(_cpu_copy(dict(zip(parts.names, parts.params, strict=True))))
        if parts.frozen:
            frozen_after = provenance.model_digest(_cpu_copy(dict(parts.frozen)))
            if frozen_after.root != frozen_before.root:
                changed = [n for n in frozen_before.tensors if frozen_before.tensors[n] != frozen_after.tensors[n]]
                raise UnlearningRunError(f"frozen parameters changed during the run: {changed[:5]}")
        if public is not None:
            public_after = provenance.model_digest(_cpu_copy(parts.buffers))
            if public_after.root != public.root:
                raise UnlearningRunError("buffers declared public changed during the run; they must stay fixed")
        if public_attributes is not None:
            now = provenance.model_digest(digestible(unregistered_arrays(work)))
            if now.root != public_attributes.root:
                changed = sorted(set(now.tensors) ^ set(public_attributes.tensors)
                                 | {n for n in now.tensors.keys() & public_attributes.tensors.keys()
                                    if now.tensors[n] != public_attributes.tensors[n]})
                raise UnlearningRunError(f"attributes declared public changed during the run: {changed[:5]}; they "
                                         "must stay fixed (state updated from the data belongs in the parameters)")
        commitment, opening = provenance.key_commitment(key)
        record = RunRecord(
            backend=self.name,
            clipping="per_sample" if clipping == "ghost" else clipping,  # ghost clipping is per-sample clipping
            unlearned_parameters=parts.names,
            d=run.flat_d,
            noisy_steps=run.noisy_steps,
            frozen_parameters=dict(frozen_before.tensors) if frozen_before else {},
            model_before=start_model.plain,
            model_before_commitment=start_model.commitment,
            model_after=after,
            center=run.center_digest,
            retain_root=ids.retain_root,
            forget_root=ids.forget_root,
            retain_count=None if ids.retain_tree is None else ids.retain_tree.size,
            forget_count=None if ids.forget_tree is None else ids.forget_tree.size,
            id_scheme=ids.id_scheme,
            seed_commitment=commitment,
            postprocess=opts.postprocess if variant is not Variant.RETRAIN else "none",
            finetune={"epochs": opts.finetune_epochs, "lr": opts.finetune_lr, "steps": run.finetune_steps},
            device=str(dev),
            dtype=str(dtype).replace("torch.", ""),
            started_at=started,
            finished_at=provenance.now_utc(),
            versions=provenance.versions("torch", "opacus", "numpy"),
            noise=noise_record(schedule, run.flat_d, key),
            extra={
                "buffers": buffers,
                "frozen": frozen_mode,
                "clip_implementation": run.clip_implementation,
                "recomputed_buffers": [path for path, _ in parts.norms] if buffers == "recompute" else [],
                "public_buffers": dict(public.tensors) if public is not None else {},
                "attributes": "public" if public_attributes is not None else "none",
                "public_attributes": dict(public_attributes.tensors) if public_attributes is not None else {},
                "noise_mode": opts.recorded_noise_mode,
            },
        )
        return RunResult(model=work, history=run.history, record=record, seed=key.seed,
                             seed_opening=opening, retain_tree=ids.retain_tree, forget_tree=ids.forget_tree,
                             model_before_opening=start_model.opening)


def _deepcopy(model: nn.Module) -> nn.Module:
    """``copy.deepcopy(model)``, or a certun error saying how to proceed when the model cannot be copied."""
    try:
        return copy.deepcopy(model)
    except (TypeError, RuntimeError, AttributeError, ValueError, copy.Error) as exc:
        raise UnsupportedModelError([("<model>", f"copy.deepcopy(model) failed ({type(exc).__name__}: {exc})",
                                      "make the model deep-copyable (e.g. no non-leaf tensor attributes), or pass "
                                      "inplace=True to unlearn it in place")]) from exc


def _check_params_order(params: Iterable[Any], parts: ModelParts) -> None:
    """A flat centre follows named_parameters() order; refuse ``params`` listed in another order with one."""
    by_id = {id(p): n for n, p in zip(parts.names, parts.params, strict=True)}
    given = [item if isinstance(item, str) else by_id.get(id(item), "") for item in params]
    given = [n for n in given if n in parts.names]
    if given != [n for n in parts.names if n in set(given)]:
        raise InvalidParameterError(
            "center", "<flat vector>", "a state dict when params are listed in another order than the model's "
            f"named_parameters() ({list(parts.names)[:5]}...): a flat centre follows named_parameters() order")


class _Run:
    """One execution of the phases on an already checked, copied model (internal)."""

    def __init__(self, model: nn.Module, data: Iterable[Any], schedule: Schedule, parts: ModelParts,
                 opts: RunOptions, *, loss_fn: Callable[..., torch.Tensor], device: torch.device,
                 dtype: torch.dtype, center: Any, clipping: str | None, buffers: str,
                 model_factory: Callable[[], nn.Module] | None, epoch_batches: int | None = None,
                 on_pass: Callable[[int], None] | None = None) -> None:
        self.model = model
        self.epoch_batches = epoch_batches
        self.on_pass = on_pass
        self.data = data
        self.schedule = schedule
        self.parts = parts
        self.opts = opts
        self.loss_fn = loss_fn
        self.device = device
        self.dtype = dtype
        self.clipping = clipping
        self.buffers = buffers
        self.model_factory = model_factory
        self.center = flat_center(center, parts, device=device, dtype=dtype)
        self.center_digest = None
        if self.center is not None:
            pieces = torch.split(self.center.detach().cpu(), [p.numel() for p in parts.params])
            self.center_digest = provenance.model_digest({n: t.view_as(p) for n, t, p in
                                                 zip(parts.names, pieces, parts.params, strict=True)})
        self.key: RunKey | None = None  # set before execute()
        self.flat_d = sum(p.numel() for p in parts.params)
        self.noisy_steps = 0
        self.finetune_steps = 0
        self.clip_implementation: str | None = None
        self.history: dict[str, list[Any]] = {k: [] for k in ("step", "loss", "sigma", "gamma", "grad_norm", "dist",
                                                              "time_s", "ft_step", "ft_loss")}
        self._draws = 0
        self._first_draw: torch.Tensor | None = None

    # ------------------------------------------------------------------ phases
    def execute(self) -> None:
        """Run every phase; on success the model holds the unlearned parameters."""
        if self.buffers == "recompute":
            for _, module in self.parts.norms:
                module.reset_running_stats()
        variant = self.schedule.variant
        if variant is Variant.RETRAIN:
            self._reinitialise()
        self.model.train()
        flat = FlatParameters(self.parts.names, self.parts.params, device=self.device, dtype=self.dtype)
        try:
            if variant in (Variant.OUTPUT_PERTURBATION, Variant.GRADIENT_CLIPPING, Variant.MODEL_CLIPPING):
                # the float64 master iterate: the only copy the noisy phase updates; rounded once, below
                x64 = flat.x.to(torch.float64, copy=True)
                c64 = None if self.center is None else self.center.to(torch.float64)
                if variant is Variant.OUTPUT_PERTURBATION:
                    with torch.no_grad():
                        output_perturbation(x64, C0=self.schedule.C0, sigma0=self.schedule.sigma0, center=c64,
                                            noise=self._draw(x64, None))
                else:
                    self._noisy_phase(flat, x64, c64)
                with torch.no_grad():
                    flat.x.copy_(x64)  # the single rounding to the parameters' dtype
                del x64, c64
            if variant is not Variant.RETRAIN and self.opts.postprocess == "project_C0":
                with torch.no_grad():
                    project_ball(flat.x, self.schedule.C0, self.center)
            self._check_finite(flat.x, "after the noisy phase")
            self._finetune(flat)
            if self.buffers == "recompute" and self.parts.norms:
                self._recompute_running_stats()
        finally:
            flat.release()

    def _draw(self, x: torch.Tensor, step: int | None) -> torch.Tensor:
        """The float64 standard-normal vector of noisy step ``step`` (``None``: the σ0 draw).

        Fresh from the keyed generator (draw index :func:`~certun.backends.run_key.draw_index`),
        injected by ``noise_source`` (called with the running draw count), or (audit only) reused.
        """
        k = self._draws
        self._draws += 1
        if self.opts.noise_source is not None:
            z = torch.as_tensor(self.opts.noise_source(k, x.numel()), device=x.device).to(torch.float64)
            if z.shape != x.shape:
                raise UnlearningRunError(f"noise_source returned shape {tuple(z.shape)}, expected {tuple(x.shape)}")
            return z
        if self.opts.noise_mode != "fresh" and self._first_draw is not None:
            return self._first_draw
        if self.key is None:  # set by unlearn() before execute(); never reached from the public API
            raise UnlearningRunError("internal error: the run's noise key was not derived; no certificate was issued")
        z = self.key.generator().normal_torch(draw_index(self.schedule, step), x.numel(), device=x.device)
        z = z.to(device=x.device, dtype=torch.float64).reshape(x.shape)
        if self.opts.noise_mode != "fresh":
            self._first_draw = z
        return z

    def _noisy_phase(self, flat: FlatParameters, x: torch.Tensor, c: torch.Tensor | None) -> None:
        """The noisy steps on the float64 master ``x`` (centre ``c`` in float64); ``flat.x`` only holds
        ``x`` rounded to the parameters' dtype, where each gradient is evaluated."""
        s = self.schedule
        noised = False
        with torch.no_grad():
            project_ball(x, s.C0, c)  # global over all unlearned parameters (docs/theory.md#anchored-balls)
            if s.variant is Variant.MODEL_CLIPPING and s.sigma0 is not None:
                add_noise(x, s.sigma0, noise=self._draw(x, None))
                noised = True
        mode = self.clipping or "batch"
        computer = GradientComputer(self.model, flat, self.loss_fn, mode=mode, C1=s.C1)
        self.clip_implementation = computer.implementation if self.clipping else None
        stats = torch.zeros(s.T, 3, device=self.device, dtype=torch.float64)
        g64 = torch.empty_like(x)
        batches = _RetainStream(self.data, self.device, batch_first=self.clipping in ("per_sample", "ghost"),
                                on_pass=self.on_pass)
        gc = s.variant is Variant.GRADIENT_CLIPPING
        mc_mode = (s.mode or Mode.NOISE_AFTER_PROJECTION).value
        times = []
        start = time.perf_counter()
        try:
            for t in _tqdm(range(s.T), total=s.T, desc="certun noisy steps", enabled=self.opts.progress):
                inputs, targets = next(batches)
                with torch.no_grad():
                    flat.x.copy_(x)  # the gradient is evaluated at the master rounded to the parameters' dtype
                loss = computer.compute(inputs, targets)
                g = g64.copy_(flat.g)
                gamma, sigma = s.gammas[t], s.sigmas[t]
                with torch.no_grad():
                    z = self._draw(x, t)
                    if gc:
                        gc_step(x, g, gamma=gamma, lam=s.lam, C1=s.C1, center=c)
                        add_noise(x, sigma, noise=z)
                    else:
                        mc_step(x, g, gamma=gamma, lam=s.lam, C2=s.C2, sigma=sigma, mode=mc_mode, C1=s.C1,
                                center=c, noise=z)
                    stats[t, 0] = loss
                    stats[t, 1] = torch.linalg.vector_norm(g)
                    stats[t, 2] = torch.linalg.vector_norm(x) if c is None else torch.dist(x, c)
                self.noisy_steps = t + 1
                times.append(time.perf_counter() - start)
                if self.opts.callback is not None:
                    self.opts.callback(t, x)
                if (t + 1) % _CHECK_EVERY == 0 or t + 1 == s.T:
                    self._check_stats(stats, t + 1)
        finally:
            computer.close()
            flat.clear_grads()
        values = stats.cpu().tolist()
        h = self.history
        h["step"] = list(range(s.T))
        # step 0's loss and gradient are evaluated at Pi(A(D)) before any noise unless sigma0 noised it:
        # they identify the starting model, so they never leave the run
        pre = 0 if noised else min(1, s.T)
        h["loss"] = [None] * pre + [v[0] for v in values[pre:]]
        h["grad_norm"] = [None] * pre + [v[1] for v in values[pre:]]
        h["dist"] = [v[2] for v in values]
        h["sigma"] = list(s.sigmas)
        h["gamma"] = list(s.gammas)
        h["time_s"] = times

    def _check_stats(self, stats: torch.Tensor, upto: int) -> None:
        finite = torch.isfinite(stats[:upto]).all(dim=1)
        if not bool(finite.all()):
            bad = int((~finite).nonzero()[0, 0])
            # the step number only: a loss value at step 0 would be a statistic of the starting model
            raise UnlearningRunError(f"non-finite loss, gradient or iterate at noisy step {bad}; no certificate "
                                     "was issued (lower gamma, or check the data and the model for NaN/inf)")

    def _check_finite(self, x: torch.Tensor, where: str) -> None:
        if not bool(torch.isfinite(x).all()):
            raise UnlearningRunError(f"the unlearned parameters are not finite {where}; no certificate was issued")

    def _finetune(self, flat: FlatParameters) -> None:
        """Noiseless SGD on retain data: post-processing (docs/theory.md#definition), or the training of ``retrain``."""
        epochs = self.opts.finetune_epochs
        if epochs == 0:
            return
        lr = self.opts.finetune_lr
        computer = GradientComputer(self.model, flat, self.loss_fn, mode="batch")
        losses = []
        try:
            for epoch in _tqdm(range(epochs), total=epochs, desc="certun fine-tuning", enabled=self.opts.progress):
                count = samples = 0
                for batch in itertools.islice(self.data, self.epoch_batches):
                    inputs, targets, size = _pair(batch, batch_first=False)
                    if size == 0:
                        continue
                    loss = computer.compute(_to_device(inputs, self.device), _to_device(targets, self.device))
                    with torch.no_grad():
                        flat.x.add_(flat.g, alpha=-lr)
                    losses.append(loss)
                    count += 1
                    samples += size
                if count == 0:
                    raise UnlearningRunError("the retain data is empty: nothing to fine-tune on")
                if epoch == 0 and self.on_pass is not None:
                    self.on_pass(samples)
                values = torch.stack(losses[-count:])
                if not bool(torch.isfinite(values).all()):
                    raise UnlearningRunError(f"non-finite loss during fine-tuning epoch {epoch} "
                                             f"(lr={lr}); no certificate was issued")
        finally:
            computer.close()
            flat.clear_grads()
        self.finetune_steps = len(losses)
        self.history["ft_step"] = list(range(len(losses)))
        self.history["ft_loss"] = torch.stack(losses).cpu().tolist() if losses else []
        self._check_finite(flat.x, "after fine-tuning")

    def _recompute_running_stats(self) -> None:
        """Reset the norm layers' running statistics and recompute them over one pass of retain data."""
        momenta = {}
        for path, module in self.parts.norms:
            module.reset_running_stats()
            momenta[path] = module.momentum
            module.momentum = None  # cumulative average over the pass
        self.model.train()
        try:
            with torch.no_grad():
                for batch in itertools.islice(self.data, self.epoch_batches):
                    inputs, _, size = _pair(batch, batch_first=False)
                    if size:
                        self.model(_to_device(inputs, self.device))
        finally:
            for path, module in self.parts.norms:
                module.momentum = momenta[path]

    def _reinitialise(self) -> None:
        """Retrain from scratch: unlearned parameters from the factory, else the centre, else reset_parameters()."""
        named = dict(zip(self.parts.names, self.parts.params, strict=True))
        frozen_values = {n: p.detach().clone() for n, p in self.parts.frozen.items()}
        with torch.no_grad():
            if self.model_factory is not None:
                fresh = dict(self.model_factory().named_parameters())
                wrong = [n for n, p in named.items() if n not in fresh or fresh[n].shape != p.shape]
                if wrong:
                    raise InvalidParameterError("model_factory", f"<model without matching {wrong[:5]}>",
                                                "a factory building the same architecture")
                for name, p in named.items():
                    p.copy_(fresh[name].detach().to(device=p.device, dtype=p.dtype))
            elif self.center is not None:
                pieces = torch.split(self.center, [q.numel() for q in named.values()])
                for p, piece in zip(named.values(), pieces, strict=True):
                    p.copy_(piece.view_as(p))
            else:
                self._reset_parameters(named)
            for name, value in frozen_values.items():
                self.parts.frozen[name].copy_(value)

    def _reset_parameters(self, named: dict[str, nn.Parameter]) -> None:
        """Re-initialise with each owning module's ``reset_parameters()``; refuse if any value survives.

        Every unlearned parameter is first filled with NaN, so a parameter that ``reset_parameters()``
        does not know about (a subclass' extra parameter), or re-initialises from its old value, is
        caught: retraining from scratch must not keep anything trained on D (docs/theory.md#retrain).
        """
        ids = {id(p) for p in named.values()}
        problems = []
        for p in named.values():
            p.fill_(float("nan"))
        for path, module in self.model.named_modules():
            own = [p for p in module.parameters(recurse=False) if id(p) in ids]
            if not own:
                continue
            if callable(getattr(module, "reset_parameters", None)):
                module.reset_parameters()
            else:
                problems.append((path, f"{type(module).__name__} has no reset_parameters() to re-initialise "
                                 "it for retraining", "pass model_factory= (or center=) to unlearn"))
        without_reset = bool(problems)
        for name, p in named.items():
            if not without_reset and bool(torch.isnan(p).any()):
                problems.append((name, "reset_parameters() of its module did not re-initialise this parameter (or "
                                 "re-initialised it from its trained value), so retraining would keep values "
                                 "trained on D", "pass model_factory= (a function building a freshly initialised "
                                 "model) or center="))
        if problems:
            raise UnsupportedModelError(problems)
