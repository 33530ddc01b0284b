"""The torch backend's array operations on the run skeleton (:mod:`certun.backends._skeleton`).

:class:`TorchRun` checks and copies the model (``prepare``), keeps the unlearned parameters as views
into one flat buffer, runs every noisy step on a float64 master copy of it with the step functions of
:mod:`certun.backends.torch._steps`, rounds the master into the parameters' dtype once
(docs/theory.md#floating-point-and-randomness), then post-processes (projection, fine-tuning,
BatchNorm statistics from retain data) and checks what must not have changed (``finish``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from certun.accountant import Schedule, Variant
from certun.backends import _skeleton as skeleton
from certun.backends._options import RunOptions, clipping_for
from certun.backends.noise import MAX_WORKERS
from certun.backends.run_key import RunKey, loss_name
from certun.backends.torch import _rng
from certun.backends.torch._attributes import digestible, unregistered_arrays
from certun.backends.torch._data import cpu_copy, epoch_length, pair, to_device, tqdm_bar
from certun.backends.torch._finetune import finetune
from certun.backends.torch._fused import FusedStep, fits
from certun.backends.torch._grad import GradientComputer
from certun.backends.torch._hygiene import clear_training_state, restore_training_flags, training_flags
from certun.backends.torch._model import FlatParameters, check_center, check_model, flat_center, select_parameters
from certun.backends.torch._precision import check_autocast_dtype
from certun.backends.torch._prepare import (
    check_frozen,
    check_params_order,
    copy_model,
    norm_buffers,
    restore_model,
)
from certun.backends.torch._retrain import reinitialise
from certun.backends.torch._state import changed_attributes, state_fingerprint
from certun.backends.torch._steps import add_noise, gc_step, mc_step, output_perturbation, project_ball
from certun.certificates import provenance
from certun.errors import UnlearningRunError

__all__ = ["TorchRun"]



class TorchRun(skeleton.Hooks):
    """One run of the torch backend (internal): the hooks the skeleton calls, and the state between them."""

    name = "torch"
    packages = ("torch", "opacus", "numpy")

    def __init__(self, model: nn.Module, data: Iterable[Any], schedule: Schedule, opts: RunOptions, *,
                 loss_fn: Callable[..., torch.Tensor], params: Any, center: Any, device: torch.device,
                 model_factory: Callable[[], nn.Module] | None, inplace: bool,
                 autocast: torch.dtype | None = None) -> None:
        self.source, self.data, self.s, self.opts, self.loss_fn = model, data, schedule, opts, loss_fn
        self.params_arg, self.center_arg, self.device = params, center, device
        self.model_factory, self.inplace, self.autocast = model_factory, inplace, autocast
        self.before: dict[str, torch.Tensor] = {}
        self.buffers_before: dict[str, torch.Tensor] | None = None
        self.clipping = clipping_for(schedule, opts.clip)
        self.epoch_batches: int | None = None
        if opts.finetune_epochs or opts.buffers == "recompute":
            self.epoch_batches = epoch_length(data, "fine-tuning" if opts.finetune_epochs else "buffers='recompute'")
        self.flat: FlatParameters | None = None
        self.computer: GradientComputer | None = None
        self.z64: torch.Tensor | None = None
        self._g64: torch.Tensor | None = None
        self.clip_implementation: str | None = None

    # ------------------------------------------------------------------ before the run
    def prepare(self) -> skeleton.Prepared:
        opts, params = self.opts, self.params_arg
        self.model = work = copy_model(self.source, inplace=self.inplace)
        self.flags = training_flags(work)
        work.to(self.device)
        self.parts = parts = select_parameters(work, params)
        check_frozen(parts, opts.frozen, params)
        check_center(self.center_arg, parts)
        if params is not None and self.center_arg is not None and not isinstance(self.center_arg, Mapping):
            check_params_order(params, parts)
        check_model(work, parts, hooks=self.clipping in ("per_sample", "ghost"), buffers=opts.buffers,
                    attributes=opts.attributes)
        self.dtype = parts.params[0].dtype
        check_autocast_dtype(self.autocast, self.dtype)
        self.center = flat_center(self.center_arg, parts, device=self.device, dtype=self.dtype)
        center = None
        if self.center is not None:
            pieces = torch.split(self.center.detach().cpu(), [p.numel() for p in parts.params])
            center = {n: t.view_as(p) for n, t, p in zip(parts.names, pieces, parts.params, strict=True)}
        self.frozen_before = provenance.model_digest(cpu_copy(dict(parts.frozen))) if parts.frozen else None
        self.public = (provenance.model_digest(cpu_copy(parts.buffers))
                       if opts.buffers == "public" and parts.buffers else None)
        loose = unregistered_arrays(work) if opts.attributes == "public" else {}
        self.public_attributes = provenance.model_digest(digestible(loose)) if loose else None
        self.frozen_mode = "none" if not parts.frozen else opts.frozen
        self.before = cpu_copy(dict(zip(parts.names, parts.params, strict=True)))
        return skeleton.Prepared(
            model=work, names=parts.names, d=sum(p.numel() for p in parts.params),
            before=self.before, center=center,
            clipping=self.clipping, dtype=str(self.dtype).replace("torch.", ""), device=str(self.device),
            key_options={"buffers": opts.buffers, "frozen": self.frozen_mode,
                         "frozen_parameters": sorted(parts.frozen), "attributes": opts.attributes,
                         "loss": loss_name(self.loss_fn),
                         "frozen_values": None if self.frozen_before is None else self.frozen_before.root,
                         "public_buffers": None if self.public is None else self.public.root,
                         "public_attributes": None if self.public_attributes is None else self.public_attributes.root})

    @contextlib.contextmanager
    def session(self, key: RunKey) -> Iterator[None]:
        """Unlearned parameters require gradients, the frozen ones not; the auxiliary RNG (dropout) is seeded
        from the key in a forked RNG state; everything is restored and cleaned afterwards."""
        work, parts = self.model, self.parts
        requires_grad = {n: p.requires_grad for n, p in work.named_parameters()}
        for p in parts.frozen.values():
            p.requires_grad_(False)
        for p in parts.params:
            p.requires_grad_(True)
        self.state_before = state_fingerprint(work)  # plain attributes; none may be written during the run
        # torch.manual_seed below reseeds every CUDA device: fork them all so the caller's RNGs are restored
        fork_devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
        failed = False
        try:
            with torch.random.fork_rng(devices=fork_devices):
                torch.manual_seed(key.aux_seed())
                yield
        except BaseException:
            failed = True
            raise
        finally:
            if self.flat is not None:
                self.flat.release()
            if failed and self.inplace:  # never leave the caller's model holding an uncertified iterate
                restore_model(parts, self.before, self.buffers_before)
            for n, p in work.named_parameters():
                p.requires_grad_(requires_grad[n])
            clear_training_state(work)
            restore_training_flags(self.flags)

    # ------------------------------------------------------------------ the noisy phase
    def start(self) -> torch.Tensor | None:
        if self.opts.buffers == "recompute":
            if self.inplace:  # the caller's statistics, put back if the run fails
                self.buffers_before = cpu_copy(norm_buffers(self.parts))
            for _, module in self.parts.norms:
                module.reset_running_stats()
        if self.s.variant is Variant.RETRAIN:
            reinitialise(self.model, self.parts, self.model_factory, self.center)
        self.model.train()
        self.flat = FlatParameters(self.parts.names, self.parts.params, device=self.device, dtype=self.dtype)
        if self.s.variant is Variant.RETRAIN:
            return None
        # the float64 master iterate: the only copy the noisy phase updates; rounded once, in release()
        self.c64 = None if self.center is None else self.center.to(torch.float64)
        return self.flat.x.to(torch.float64, copy=True)

    def normal(self, generator: Any, index: int, d: int) -> torch.Tensor:
        workers = self.draw_workers(d)
        if self.computer is None:  # the σ0 draw: once a run
            return generator.normal_torch(index, d, workers=workers).to(device=self.device)
        # a noisy step's draw: into one host buffer reused by every step (no fresh 80 MB to page in at d = 10⁷),
        # spent within its step. On a CPU that buffer is the draw; elsewhere ``.to`` copies it to the device,
        # and that copy must stay blocking (pageable source), or the next step could refill it mid-copy.
        if self.z64 is None:
            self.z64 = torch.empty(d, dtype=torch.float64)
        return generator.normal_torch(index, d, out=self.z64, workers=workers).to(device=self.device)

    @staticmethod
    def draw_workers(count: int) -> int:
        """Threads for a keyed draw of ``count`` coordinates: torch's own thread count, the user's setting
        (1 under ``OMP_NUM_THREADS=1``), with at least 2²⁰ coordinates each (a smaller piece gains less
        than a thread costs), and no more than the sampler accepts. The draw is positional, so its bits do
        not depend on it (docs/noise.md); on a large model it is most of a CPU step, and on an accelerator
        host the cores are otherwise idle."""
        return max(1, min(torch.get_num_threads(), count >> 20, MAX_WORKERS))

    def as_noise(self, z: Any, d: int) -> torch.Tensor:
        z = torch.as_tensor(z, device=self.device).to(torch.float64)
        if z.shape != (d,):
            raise UnlearningRunError(f"noise_source returned shape {tuple(z.shape)}, expected ({d},)")
        return z

    def project(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return project_ball(x, self.s.C0, self.c64)

    def add_noise(self, x: torch.Tensor, sigma: float, z: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return add_noise(x, sigma, noise=z)

    def output_perturbation(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return output_perturbation(x, C0=self.s.C0, sigma0=self.s.sigma0, center=self.c64, noise=z)

    def batches(self, on_pass: Callable[[int], None] | None) -> Iterator[tuple[Any, Any]]:
        batch_first = self.clipping in ("per_sample", "ghost")

        def retain_pair(batch: Any) -> tuple[tuple[Any, Any], int]:
            inputs, targets, size = pair(batch, batch_first=batch_first)
            return (inputs, targets), size

        for (inputs, targets), raw in skeleton.cycle(self.data, retain_pair, on_pass):
            yield (to_device(inputs, self.device), to_device(targets, self.device)), raw

    def progress(self, steps: range, desc: str) -> Iterable[int]:
        return tqdm_bar(steps, total=len(steps), desc=desc, enabled=self.opts.progress)

    @contextlib.contextmanager
    def noisy_steps(self) -> Iterator[None]:
        computer = GradientComputer(self.model, self.flat, self.loss_fn, mode=self.clipping or "batch", C1=self.s.C1,
                                    autocast=self.autocast)
        self.computer, self._g64 = computer, None  # the float64 gradient buffer, made when a path needs it
        self.fused = FusedStep(self.flat.sizes, self.device) if self.c64 is None and fits(self.flat.d) else None
        self.params_hold: torch.Tensor | None = None  # the master whose rounding the parameters hold
        self.clip_implementation = computer.recorded if self.clipping or self.autocast else None
        try:
            yield
        finally:
            computer.close()
            self.flat.clear_grads()
            self.computer = self.z64 = self.params_hold = self._g64 = None

    def noisy_step(self, x: torch.Tensor, t: int, batch: Any,
                   draw: Callable[[], Any]) -> tuple[torch.Tensor, tuple[Any, Any, Any]]:
        s, flat = self.s, self.flat
        if self.params_hold is not x or self.opts.callback is not None:
            # a callback ran since the last step (it could touch the model); the retain data's iterator must not
            with torch.no_grad():
                flat.x.copy_(x)  # the gradient is evaluated at the master rounded to the parameters' dtype
        self.params_hold = None
        gamma, sigma = s.gammas[t], s.sigmas[t]
        if self.fused is not None:  # the same update in fewer passes over memory (._fused)
            loss, pieces = self.gradient_pieces(batch)
            with torch.no_grad():
                stats = self._fused_update(x, pieces, draw(), gamma, sigma)
            self.params_hold = x  # the parameters now hold x rounded (written in the update's last pass)
            return x, (loss.detach().to(torch.float64), *stats)
        loss, g = self.gradient(batch)
        with torch.no_grad():
            return x, (loss.detach().to(torch.float64), *self.unfused_update(x, g, draw(), gamma, sigma))

    def unfused_update(self, x: torch.Tensor, g: torch.Tensor, z: torch.Tensor, gamma: float,
                       sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
        """The variant's update by the step functions, one pass per operation (a centre, or beyond the fused
        step's range); the history's ``‖g‖`` and ``‖x − c‖``."""
        s, c = self.s, self.c64
        if s.variant is Variant.GRADIENT_CLIPPING:
            gc_step(x, g, gamma=gamma, lam=s.lam, C1=s.C1, center=c)
            add_noise(x, sigma, noise=z)
        else:
            mc_step(x, g, gamma=gamma, lam=s.lam, C2=s.C2, sigma=sigma, mode=skeleton.mc_mode(s), C1=s.C1,
                    center=c, noise=z)
        dist = torch.linalg.vector_norm(x) if c is None else torch.dist(x, c)
        return torch.linalg.vector_norm(g), dist

    def _fused_update(self, x: torch.Tensor, pieces: list[torch.Tensor], z: torch.Tensor, gamma: float,
                      sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
        """The variant's update of ``x`` without a centre (:mod:`._fused`); the history's two norms."""
        s, fused, params = self.s, self.fused, self.flat.x
        if s.variant is Variant.GRADIENT_CLIPPING:
            return fused.gc(x, pieces, z, params, gamma=gamma, lam=s.lam, C1=s.C1, sigma=sigma)
        if skeleton.mc_mode(s) == "noise_after_projection":
            return fused.mc_after(x, pieces, z, params, gamma=gamma, lam=s.lam, C2=s.C2, sigma=sigma)
        return fused.mc_before(x, pieces, z, params, gamma=gamma, lam=s.lam, C1=s.C1, C2=s.C2, sigma=sigma)

    def gradient_pieces(self, batch: Any) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The step's mean loss and its (clipped) minibatch gradient as the fused step reads it: in batch mode the
        gradients autograd left, one per parameter (no copy); otherwise the float64 buffer ``g64``."""
        if self.computer.gives_pieces:
            return self.computer.compute_pieces(*batch)
        loss, g = self.gradient(batch)
        return loss, [g]

    @property
    def g64(self) -> torch.Tensor:
        """The float64 gradient buffer of the noisy steps (length ``d``), allocated on first use: batch mode
        without a centre never needs it (the fused step reads autograd's gradients)."""
        if self._g64 is None:
            self._g64 = torch.empty_like(self.flat.x, dtype=torch.float64)
        return self._g64

    def gradient(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """The step's mean loss and its (clipped) minibatch gradient in the float64 buffer ``g64``."""
        if self.computer.writes_into:  # straight into g64: the bits the float32 buffer's copy would give
            return self.computer.compute(*batch, into=self.g64), self.g64
        loss = self.computer.compute(*batch)
        return loss, self.g64.copy_(self.flat.g)

    def check_steps(self, stats: list[tuple[Any, Any, Any]], start: int, upto: int) -> None:
        block = torch.stack([torch.stack(list(row)) for row in stats[start:upto]])
        finite = torch.isfinite(block).all(dim=1)
        if not bool(finite.all()):
            bad = start + int((~finite).nonzero()[0, 0])
            # the step number only: a loss value at step 0 would be a statistic of the starting model
            raise UnlearningRunError(f"non-finite loss, gradient or iterate at noisy step {bad}; no certificate "
                                     "was issued (lower gamma, or check the data and the model for NaN/inf)")

    def values(self, stats: list[tuple[Any, Any, Any]]) -> list[tuple[float, float, float]]:
        if not stats:
            return []
        return [tuple(row) for row in torch.stack([torch.stack(list(r)) for r in stats]).cpu().tolist()]

    def to_host(self, x: torch.Tensor) -> Any:
        return x.detach().to("cpu", torch.float64).numpy().copy()

    def from_host(self, a: Any) -> torch.Tensor:
        return torch.from_numpy(a.copy()).to(device=self.device, dtype=torch.float64)

    def rng_state(self) -> bytes:
        return _rng.get_state()

    def set_rng_state(self, state: bytes) -> None:
        _rng.set_state(state)

    # ------------------------------------------------------------------ after the noisy phase
    def release(self, x: torch.Tensor | None, *, project: bool) -> None:
        flat = self.flat
        with torch.no_grad():
            if x is not None:
                flat.x.copy_(x)  # the single rounding to the parameters' dtype
            if project:
                project_ball(flat.x, self.s.C0, self.center)
        self._check_finite("after the noisy phase")

    def _check_finite(self, where: str) -> None:
        if not bool(torch.isfinite(self.flat.x).all()):
            raise UnlearningRunError(f"the unlearned parameters are not finite {where}; no certificate was issued")

    def finetune(self, history: dict[str, list[Any]], on_pass: Callable[[int], None] | None) -> int:
        """Noiseless SGD on retain data, then BatchNorm statistics from retain data when asked (:mod:`._finetune`)."""
        return finetune(self, history, on_pass)

    def finish(self) -> skeleton.Finished:
        parts, opts = self.parts, self.opts
        written = changed_attributes(self.state_before, state_fingerprint(self.model))
        if written:
            raise UnlearningRunError(
                f"the model wrote plain attributes during the run: {written[:5]}"
                f"{' ...' if len(written) > 5 else ''}; state computed at iterates the guarantee does not "
                "cover (the pre-noise start among them) would ship with the model "
                "(docs/theory.md#soundness-rules); no certificate was issued. Cache nothing in forward(), or "
                "register the state as a buffer and pass buffers='recompute' or 'public'")
        after = cpu_copy(dict(zip(parts.names, parts.params, strict=True)))
        if parts.frozen:
            frozen_after = provenance.model_digest(cpu_copy(dict(parts.frozen)))
            if frozen_after.root != self.frozen_before.root:
                changed = [n for n in self.frozen_before.tensors
                           if self.frozen_before.tensors[n] != frozen_after.tensors[n]]
                raise UnlearningRunError(f"frozen parameters changed during the run: {changed[:5]}")
        if self.public is not None and provenance.model_digest(cpu_copy(parts.buffers)).root != self.public.root:
            raise UnlearningRunError("buffers declared public changed during the run; they must stay fixed")
        if self.public_attributes is not None:
            self._check_public_attributes()
        public, public_attributes = self.public, self.public_attributes
        return skeleton.Finished(model=self.model, after=after, record={
            "clipping": "per_sample" if self.clipping == "ghost" else self.clipping,  # ghost is per-sample clipping
            "frozen_parameters": dict(self.frozen_before.tensors) if self.frozen_before else {},
        }, extra={
            "buffers": opts.buffers,
            "frozen": self.frozen_mode,
            "clip_implementation": self.clip_implementation,
            "recomputed_buffers": [path for path, _ in parts.norms] if opts.buffers == "recompute" else [],
            "public_buffers": dict(public.tensors) if public is not None else {},
            "attributes": "public" if public_attributes is not None else "none",
            "public_attributes": dict(public_attributes.tensors) if public_attributes is not None else {},
        })

    def _check_public_attributes(self) -> None:
        before = self.public_attributes
        now = provenance.model_digest(digestible(unregistered_arrays(self.model)))
        if now.root != before.root:
            changed = sorted(set(now.tensors) ^ set(before.tensors)
                             | {n for n in now.tensors.keys() & before.tensors.keys()
                                if now.tensors[n] != before.tensors[n]})
            raise UnlearningRunError(f"attributes declared public changed during the run: {changed[:5]}; they "
                                     "must stay fixed (state updated from the data belongs in the parameters)")
