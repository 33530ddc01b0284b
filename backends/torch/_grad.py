"""Minibatch gradients of the unlearned parameters, clipped as the run asks, into the flat buffer ``g``.

Three ways, one interface (``compute(inputs, targets) -> loss``, result in ``flat.g``, or in a caller's
float64 vector ``into=`` where :attr:`GradientComputer.writes_into`):

* ``"batch"``: the gradient of the minibatch-mean loss (clipped later, globally, by the step
  function; docs/theory.md#gradient-clipping allows clipping the mean).
* ``"per_sample"``: for models whose unlearned parameters are all in layers certun's own rules cover
  (Linear, Conv2d, Embedding, LayerNorm, GroupNorm), certun's one-backward path
  (:mod:`certun.backends.torch._layers`, for ``"ghost"`` too); otherwise Opacus ``GradSampleHooks``
  (non-wrapping, state-dict keys unchanged) compute each sample's gradient, and certun clips each to
  ``C1`` and averages them itself into ``g``. Modules Opacus cannot handle (attention, anything its
  validators refuse but recurrent layers, which stay refused) fall back to ``torch.func``
  (:mod:`certun.backends.torch._func`), for ``"ghost"`` too. No ``DPOptimizer``: its traps (``expected_batch_size``
  instead of the real batch, loss-reduction mismatches) are avoided by construction, since certun
  divides by the real batch size and asks the loss for per-sample values (``reduction="none"``).
* ``"ghost"``: Opacus' ghost clipping hooks compute per-sample gradient *norms* without
  materialising per-sample gradients, then a second backward of the norm-weighted loss gives the
  clipped sum.

In every mode the step function clips the resulting mean once more, globally, to ``C1`` with a norm
accumulated in float64 and re-measured after scaling: a no-op up to rounding after per-sample
clipping, and what makes ``‖g‖ ≤ C1`` hold in floating point whatever Opacus computed (Opacus
computes per-sample norms in the parameters' dtype; certun's own per-sample norms are float64).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from certun.backends.torch._func import FuncPerSample
from certun.backends.torch._layers import LayerPerSample
from certun.backends.torch._loss import batch_size, per_sample_loss
from certun.backends.torch._model import FlatParameters, opacus_problems
from certun.backends.torch._precision import autocast_context
from certun.backends.torch._steps import SAFETY
from certun.backends.torch._sumcheck import check_per_sample_sum, opacus_sums, tf32_possible
from certun.errors import CertunError, InvalidParameterError, UnlearningRunError, UnsupportedModelError

__all__ = ["GradientComputer", "batch_size", "per_sample_loss"]

#: Factor on Opacus' (parameter-dtype) per-sample norms in ghost clipping: 1 + 1e-3 covers the float32
#: undershoot of a norm over up to ~1e7 coordinates per layer (measured 3.7e-4 at 1e7).
_GHOST_NORM_SLACK = 1.0 + 1e-3

#: ``compute(into=_PIECES)``: leave the batch gradient where autograd put it (:meth:`GradientComputer.compute_pieces`).
_PIECES: Any = torch.empty(0)

_INPLACE_MARKERS = ("BackwardHookFunction", "modified by an inplace operation", "is being modified inplace")


class GradientComputer:
    """Computes the (clipped) minibatch gradient of the unlearned parameters into ``flat.g``.

    Args:
        model: the model, in training mode, on its device.
        flat: the flat parameters (unlearned ones only carry ``requires_grad``).
        loss_fn: per-sample capable loss (:func:`per_sample_loss`).
        mode: ``"batch"``, ``"per_sample"`` or ``"ghost"``.
        C1: per-sample clipping radius (per-sample and ghost modes).
        autocast: ``torch.bfloat16`` to run forward and backward under autocast (:mod:`._precision`), or None.
    """

    def __init__(self, model: nn.Module, flat: FlatParameters, loss_fn: Callable[..., torch.Tensor], *,
                 mode: str, C1: float | None = None, autocast: torch.dtype | None = None) -> None:
        self.model = model
        self.flat = flat
        self.loss_fn = loss_fn
        self.mode = mode
        self.C1 = C1
        self.hooks: Any = None
        self.layers: LayerPerSample | None = None
        self.func: FuncPerSample | None = None
        self.sums_checked = False
        self.autocast = autocast
        self.into: torch.Tensor | None = None
        if mode in ("per_sample", "ghost") and LayerPerSample.applies(model, flat):
            self.layers = LayerPerSample(model, flat)
        elif mode in ("per_sample", "ghost") and opacus_problems(model):
            self.func = FuncPerSample(model, flat.names, flat.params)
        elif mode == "per_sample":
            from opacus.grad_sample import GradSampleHooks

            self.hooks = GradSampleHooks(model, batch_first=True, loss_reduction="sum", strict=False)
        elif mode == "ghost":
            pass  # hooks attached on the first batch, after the per-sample sum probe (_probe_then_hook)
        elif mode != "batch":
            raise ValueError(f"unknown gradient mode {mode!r}")
        if autocast is not None and self.func is None and self.layers is None and mode != "batch":
            raise InvalidParameterError(
                "autocast", "bf16", f"None for this model with clip={mode!r}", "Opacus' hooks, which per-sample "
                "clipping would use for it, give bfloat16 per-sample gradients certun does not re-measure; use "
                "clip='batch', or layers certun's own per-sample code covers (docs/backends.md)")
        if autocast is not None and self.func is not None:
            self.func.autocast = lambda: autocast_context(autocast, flat.g.device)

    @property
    def implementation(self) -> str:
        """Which code computes the gradient (recorded in the certificate's execution extras)."""
        if self.layers is not None:
            return "certun per-sample clipping (Linear/Conv2d/Embedding/LayerNorm/GroupNorm, one backward)"
        if self.func is not None:
            return "torch.func per-sample clipping (vmap over grad)"
        return {"per_sample": "opacus GradSampleHooks", "ghost": "opacus ghost clipping",
                "batch": "minibatch-mean gradient"}[self.mode]

    @property
    def writes_into(self) -> bool:
        """Whether :meth:`compute` can write the gradient into a caller's vector (``into=``)."""
        return self.mode == "batch" or self.layers is not None

    @property
    def gives_pieces(self) -> bool:
        """Whether :meth:`compute_pieces` applies: the batch gradient, read where autograd leaves it."""
        return self.mode == "batch"

    def compute_pieces(self, inputs: Any, targets: Any) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Batch mode: the mean loss and the gradient as autograd allocated it, one flat tensor per parameter.

        No copy into ``flat.g`` or a float64 vector: the fused step widens each piece as it reads it.
        The pieces are valid until the next call.
        """
        if not self.gives_pieces:
            raise InvalidParameterError("clip", self.mode, "'batch' for the gradient in pieces")
        loss = self.compute(inputs, targets, into=_PIECES)
        return loss, self.flat.grad_pieces()

    @property
    def recorded(self) -> str:
        """:attr:`implementation`, and the autocast it ran under (what the run records)."""
        extra = "" if self.autocast is None else f", forward and backward under {str(self.autocast)[6:]} autocast"
        return self.implementation + extra

    def close(self) -> None:
        """Remove every hook and every attribute Opacus put on parameters and modules."""
        if self.layers is not None:
            self.layers.close()
            self.layers = None
        if self.hooks is not None:
            self.hooks.cleanup()
            for module in self.model.modules():
                for attribute in ("activations", "max_batch_len"):
                    if hasattr(module, attribute):
                        delattr(module, attribute)
            self.hooks = None

    def compute(self, inputs: Any, targets: Any, *, into: torch.Tensor | None = None) -> torch.Tensor:
        """Forward and backward on one minibatch; ``flat.g`` then holds the gradient. Returns the mean loss.

        ``into`` (where :attr:`writes_into`): a length-``d`` vector that receives the gradient instead of
        ``flat.g``, with the bits ``flat.g`` would hold, widened: in batch mode straight from the gradients
        autograd allocates, on certun's per-layer path from each layer's clipped sum. No zeroing or
        accumulation pass over ``g``, except on the step that checks the per-sample sums (which compares
        with the batch gradient accumulated there).
        """
        if self.func is not None:
            return self._compute_func(inputs, targets)
        if self.mode == "ghost" and self.hooks is None and self.layers is None:
            self._probe_then_hook(inputs, targets)
        self.into = into if self.writes_into or into is _PIECES else None
        if self.into is not None and (self.mode == "batch" or self.sums_checked):
            self.flat.clear_grads()
        else:
            self.flat.point_grads()
        # the first step's sum check compares float32 computations: no autocast until it has passed
        cast = self.autocast if self.mode == "batch" or self.sums_checked else None
        with autocast_context(cast, self.flat.g.device):
            try:
                output = self.model(inputs)
            except CertunError:
                raise
            except Exception as exc:  # user code on user data: re-raised as a certun error naming the cause
                raise self._pass_error("forward", exc) from exc
            losses = per_sample_loss(self.loss_fn, output, targets)
        with warnings.catch_warnings():
            # Opacus' full backward hooks on the first layer warn when the input needs no gradient:
            # expected and harmless here (certun never needs input gradients).
            warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)
            try:
                self._backward(losses)
            except CertunError:
                raise
            except Exception as exc:  # autograd or hooks failing: re-raised as a certun error naming the cause
                raise self._pass_error("backward", exc) from exc
        return losses.detach().mean()

    def _sample_loss(self, output: Any, targets: Any, reduction: str = "none") -> torch.Tensor:
        """The per-sample loss as torch.func calls it (``reduction="none"``), through :func:`per_sample_loss`."""
        return per_sample_loss(self.loss_fn, output, targets)

    def _compute_func(self, inputs: Any, targets: Any) -> torch.Tensor:
        """The torch.func path: per-sample sums checked on the first batch, then the clipped mean into ``flat.g``."""
        try:
            if not self.sums_checked:
                self._check_func_sums(inputs, targets)
            return self.func.clipped_mean(self._sample_loss, inputs, targets, self.C1, self.flat.g_views)
        except CertunError:
            raise
        except Exception as exc:  # user code under vmap: re-raised as a certun error naming the cause
            raise self._pass_error("forward", exc) from exc

    def _check_func_sums(self, inputs: Any, targets: Any) -> None:
        """Σ_i g_i by torch.func against autograd's batch gradient (random state restored: the run is unchanged).

        Made in eval mode: under ``vmap`` dropout draws other masks than in a batch forward, so the two
        sides would differ by the masks; the check is about how the parameters are used, which dropout
        does not change (batch-mixing norm layers, which eval mode would alter, are refused before).
        """
        device = self.flat.g.device
        devices = [device.index if device.index is not None else torch.cuda.current_device()] \
            if device.type == "cuda" else []
        modes = [(m, m.training) for m in self.model.modules()]
        self.model.eval()
        self.flat.point_grads()
        try:
            cast, self.func.autocast = self.func.autocast, contextlib.nullcontext  # float32, as autograd's side
            try:
                with torch.random.fork_rng(devices=devices):
                    sums, scale = self.func.sums(self._sample_loss, inputs, targets)
            finally:
                self.func.autocast = cast
            with torch.random.fork_rng(devices=devices):
                per_sample_loss(self.loss_fn, self.model(inputs), targets).sum().backward()
            batch = {n: p.grad for n, p in zip(self.flat.names, self.flat.params, strict=True)}
            self.sums_checked = check_per_sample_sum(sums, batch, scale=scale, dtype=self.flat.g.dtype,
                                                     tf32=tf32_possible(device))
        finally:
            self.flat.clear_grads()
            for module, mode in modes:
                module.training = mode

    def _backward(self, losses: torch.Tensor) -> None:
        if self.mode == "batch":
            losses.mean().backward()
            if self.into is not _PIECES:
                self.flat.gather_grads(self.into)
        elif self.layers is not None:
            self.layers.backward(losses.sum(), full=not self.sums_checked)
            self._check_sums_once(len(losses))
            self.layers.clip_into_g(len(losses), self.C1, into=self.into)
        elif self.mode == "per_sample":
            losses.sum().backward()
            self._check_sums_once(len(losses))
            self._clip_per_sample(len(losses))
        else:
            self._ghost(losses)

    def _check_sums_once(self, batch: int) -> None:
        """On the first step: the per-sample gradients (before clipping) must sum to autograd's batch gradient."""
        if self.sums_checked:
            return
        if self.layers is not None:
            sums, scale = self.layers.sums(batch)
        else:
            samples = {n: p.grad_sample for n, p in zip(self.flat.names, self.flat.params, strict=True)
                       if isinstance(getattr(p, "grad_sample", None), torch.Tensor)}
            sums, scale = opacus_sums(samples)
        batch = {n: p.grad for n, p in zip(self.flat.names, self.flat.params, strict=True)}
        self.sums_checked = check_per_sample_sum(sums, batch, scale=scale, dtype=self.flat.g.dtype,
                                                 tf32=tf32_possible(self.flat.g.device))

    def _probe_then_hook(self, inputs: Any, targets: Any) -> None:
        """Ghost clipping never materialises per-sample gradients, so its norms cannot be checked against the
        batch gradient: the first batch is probed once with per-sample hooks (random state restored, so the
        run is unchanged), then the ghost hooks are attached."""
        from opacus.grad_sample import GradSampleHooksFastGradientClipping

        device = self.flat.g.device
        devices = [device.index if device.index is not None else torch.cuda.current_device()] \
            if device.type == "cuda" else []
        probe = GradientComputer(self.model, self.flat, self.loss_fn, mode="per_sample", C1=self.C1)
        try:
            with torch.random.fork_rng(devices=devices):
                probe.compute(inputs, targets)
        finally:
            probe.close()
            self.flat.clear_grads()
        self.sums_checked = probe.sums_checked
        self.hooks = GradSampleHooksFastGradientClipping(
            self.model, batch_first=True, loss_reduction="sum", strict=False,
            max_grad_norm=self.C1, use_ghost_clipping=True)

    def _pass_error(self, phase: str, exc: Exception) -> Exception:
        text = f"{type(exc).__name__}: {exc}"
        if any(marker in str(exc) for marker in _INPLACE_MARKERS):
            if self.hooks is not None:
                return UnsupportedModelError([(
                    "<model>", "an in-place operation modifies the output of a layer that Opacus hooks for "
                    "per-sample gradients (e.g. `out += identity` in a residual block, or ReLU(inplace=True))",
                    "rewrite it out of place (`out = out + identity`), or use clip='batch'")])
            return UnsupportedModelError([(
                "<model>", f"the {phase} pass failed because an in-place operation modified a tensor autograd "
                f"needs ({text})", "rewrite that operation out of place (e.g. `h = h * 2` instead of `h.mul_(2)`)")])
        if phase == "forward":
            return UnlearningRunError(f"the forward pass failed on a retain batch (wrong input shape?): {text}")
        return UnlearningRunError(f"the backward pass failed on a retain batch: {text}")

    def _clip_per_sample(self, batch: int) -> None:
        """Clip each sample's gradient to C1 and write the mean into ``flat.g``."""
        grads = []
        for name, p in zip(self.flat.names, self.flat.params, strict=True):
            gs = getattr(p, "grad_sample", None)
            if isinstance(gs, list):
                raise UnlearningRunError(f"parameter {name!r} accumulated per-sample gradients over several "
                                         "forward passes; one forward per step is required")
            if gs is None:
                if p.grad is not None and bool(p.grad.any()):
                    raise UnsupportedModelError([(name, "received a gradient but Opacus computed no per-sample "
                                                  "gradient for it", "use clip='batch', or freeze it (params=...)")])
                grads.append(None)
                continue
            if gs.shape[0] != batch:
                raise UnlearningRunError(f"per-sample gradient of {name!r} has batch {gs.shape[0]}, expected {batch}: "
                                         "per-sample clipping needs batch-first inputs at every layer (a "
                                         "sequence-first layout such as (S, B, F) is split along the wrong axis); use "
                                         "batch-first layers or clip='batch'")
            grads.append(gs.reshape(batch, -1))
        present = [g for g in grads if g is not None]
        # per-sample norms accumulated in float64: a float32 norm undershoots at large d
        norms = torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(g, dim=1, dtype=torch.float64) for g in present]), dim=0)
        coef = torch.clamp(self.C1 * (1.0 - SAFETY) / norms, max=1.0).div_(batch).to(self.flat.g.dtype)
        for g2d, view in zip(grads, self.flat.g_views, strict=True):
            flat_view = view.view(-1)
            if g2d is None:
                flat_view.zero_()
            else:
                torch.mv(g2d.t(), coef, out=flat_view)
        for p in self.flat.params:
            p.grad_sample = None

    def _ghost(self, losses: torch.Tensor) -> None:
        """Ghost clipping: norms from a first backward, clipped sum from a second, mean into ``flat.g``."""
        batch = len(losses)
        losses.sum().backward(retain_graph=True)
        norm_list = []
        for name, p in zip(self.flat.names, self.flat.params, strict=True):
            ns = getattr(p, "_norm_sample", None)
            if ns is None:
                if p.grad is not None and bool(p.grad.any()):
                    raise UnsupportedModelError([(name, "received a gradient but Opacus computed no per-sample "
                                                  "norm for it", "use clip='per_sample' or 'batch'")])
                continue
            if ns.dim() == 0 or ns.shape[0] != batch:
                raise UnlearningRunError(
                    f"Opacus computed per-sample norms of {name!r} for a batch of {ns.shape[0] if ns.dim() else 1}, "
                    f"expected {batch}: per-sample clipping needs batch-first inputs at every layer (a sequence-first "
                    "layout such as (S, B, F) is split along the wrong axis); use batch-first layers or clip='batch'")
            norm_list.append(ns.reshape(-1))
        if not norm_list:
            raise UnlearningRunError("Opacus computed no per-sample norm for any unlearned parameter")
        # Opacus accumulates each layer's per-sample norm in the parameters' dtype; combine in float64 and
        # inflate by the float32 error bound so the coefficient errs on the small side. The step
        # function's float64 clip of the mean is what finally guarantees ||g|| <= C1.
        stacked = torch.stack(norm_list)
        slack = 1.0 if stacked.dtype == torch.float64 else _GHOST_NORM_SLACK
        norms = torch.linalg.vector_norm(stacked.to(torch.float64), dim=0) * slack
        coef = torch.clamp(self.C1 * (1.0 - SAFETY) / norms, max=1.0).to(losses.dtype).detach()
        self.flat.point_grads()
        self.hooks.disable_hooks()
        try:
            (coef * losses).sum().backward()
        finally:
            self.hooks.enable_hooks()
        self.flat.gather_grads().div_(batch)
        for p in self.flat.params:
            if hasattr(p, "_norm_sample"):
                del p._norm_sample
