"""The numpy reference backend: certified unlearning of linear and logistic models, written plainly.

It exists to make the torch backend checkable and the backend interface real: same options, same
step semantics (:mod:`certun.backends.numpy_steps`), gradients derived by hand instead of autograd,
float64 throughout. The tests run both backends on identical inputs with identical injected noise and
compare every step.

Models are :class:`LinearModel`: ``z = X Wᵀ + b`` with one of three losses. The flat parameter
vector is ``[W.ravel(), b]``, named ``"weight"`` and ``"bias"`` as in ``torch.nn.Linear``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from certun.accountant import Schedule, Variant
from certun.backends import _skeleton as skeleton
from certun.backends._options import RunOptions, clipping_for
from certun.backends.base import RunResult
from certun.backends.numpy_steps import SAFETY, add_noise, gc_step, mc_step, output_perturbation, project_ball
from certun.backends.numpy_steps import clip as clip_vector
from certun.errors import InvalidParameterError, UnlearningRunError

__all__ = ["LOSSES", "LinearModel", "NumpyBackend", "batches"]

#: ``cross_entropy`` (integer labels, softmax), ``logistic`` (one output, labels in {0, 1}),
#: ``squared`` (per-sample mean of squared errors over outputs, like ``torch.nn.functional.mse_loss``).
LOSSES = ("cross_entropy", "logistic", "squared")
PARAMETER_NAMES = ("weight", "bias")


@dataclass(frozen=True)
class LinearModel:
    """A linear model ``z = X Wᵀ + b`` with its loss; immutable (the backend returns a new one).

    Attributes:
        weight: ``(n_out, n_in)`` array.
        bias: ``(n_out,)`` array.
        loss: one of :data:`LOSSES`.
    """

    weight: np.ndarray
    bias: np.ndarray
    loss: str = "cross_entropy"

    def __post_init__(self) -> None:
        w = np.array(self.weight, dtype=np.float64)
        b = np.array(self.bias, dtype=np.float64)
        if w.ndim != 2:
            raise InvalidParameterError("weight", f"<array of shape {w.shape}>", "a 2-D (n_out, n_in) array")
        if b.shape != (w.shape[0],):
            raise InvalidParameterError("bias", f"<array of shape {b.shape}>", f"shape ({w.shape[0]},)")
        if self.loss not in LOSSES:
            raise InvalidParameterError("loss", self.loss, "one of " + ", ".join(repr(v) for v in LOSSES))
        if self.loss == "logistic" and w.shape[0] != 1:
            raise InvalidParameterError("weight", f"<{w.shape[0]} outputs>", "1 output for the logistic loss")
        if not (np.isfinite(w).all() and np.isfinite(b).all()):
            raise InvalidParameterError("weight/bias", "<non-finite values>", "finite everywhere")
        object.__setattr__(self, "weight", w)
        object.__setattr__(self, "bias", b)

    @property
    def d(self) -> int:
        """Number of parameters."""
        return self.weight.size + self.bias.size

    def flat(self) -> np.ndarray:
        """``[W.ravel(), b]`` (a copy)."""
        return np.concatenate([self.weight.ravel(), self.bias])

    def with_flat(self, x: np.ndarray) -> LinearModel:
        """A model with the same shapes and loss holding the flat parameters ``x``."""
        n = self.weight.size
        return LinearModel(x[:n].reshape(self.weight.shape), x[n:].copy(), self.loss)

    def named(self) -> dict[str, np.ndarray]:
        """``{"weight": W, "bias": b}``."""
        return {"weight": self.weight, "bias": self.bias}

    def logits(self, X: np.ndarray) -> np.ndarray:
        """``X Wᵀ + b``, shape ``(B, n_out)``."""
        return np.asarray(X, dtype=np.float64) @ self.weight.T + self.bias

    def losses_and_residuals(self, X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-sample losses ``(B,)`` and ``∂loss_i/∂z_i`` ``(B, n_out)``."""
        z = self.logits(X)
        batch = z.shape[0]
        if self.loss == "cross_entropy":
            labels = np.asarray(y).astype(np.int64).reshape(-1)
            if labels.shape != (batch,) or labels.min() < 0 or labels.max() >= z.shape[1]:
                raise UnlearningRunError(f"cross_entropy labels must be {batch} integers in [0, {z.shape[1]})")
            zmax = z.max(axis=1, keepdims=True)
            logsum = zmax[:, 0] + np.log(np.exp(z - zmax).sum(axis=1))
            losses = logsum - z[np.arange(batch), labels]
            residual = np.exp(z - logsum[:, None])
            residual[np.arange(batch), labels] -= 1.0
            return losses, residual
        target = np.asarray(y, dtype=np.float64).reshape(z.shape)
        if self.loss == "logistic":
            losses = (np.logaddexp(0.0, z) - target * z)[:, 0]
            return losses, 1.0 / (1.0 + np.exp(-z)) - target
        diff = z - target
        return np.mean(diff**2, axis=1), 2.0 * diff / z.shape[1]


def batches(X: np.ndarray, y: np.ndarray, batch_size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Split ``(X, y)`` into consecutive minibatches (the numpy backend's data, in a fixed order)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidParameterError("batch_size", batch_size, "an integer >= 1")
    return [(X[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(X), batch_size)]


def gradient(model: LinearModel, X: np.ndarray, y: np.ndarray, *, clip: str | None,
             C1: float | None) -> tuple[float, np.ndarray]:
    """Mean loss and the flat minibatch gradient; with ``clip="per_sample"`` each sample's gradient is clipped.

    Per-sample gradient of sample i: ``W: r_i x_iᵀ``, ``b: r_i``, so ``‖g_i‖² = ‖r_i‖²(‖x_i‖² + 1)``.
    """
    if X.ndim != 2 or X.shape[1] != model.weight.shape[1]:
        raise UnlearningRunError(f"inputs of shape {X.shape} do not fit a model with {model.weight.shape[1]} inputs")
    losses, r = model.losses_and_residuals(X, y)
    batch = X.shape[0]
    if clip == "per_sample":
        norms = np.sqrt(np.sum(r**2, axis=1) * (np.sum(X**2, axis=1) + 1.0))
        with np.errstate(divide="ignore"):
            coef = np.minimum(1.0, C1 * (1.0 - SAFETY) / norms) / batch
    else:
        coef = np.full(batch, 1.0 / batch)
    weighted = r * coef[:, None]
    return float(np.mean(losses)), np.concatenate([(weighted.T @ X).ravel(), weighted.sum(axis=0)])


class NumpyBackend:
    """Certified unlearning for :class:`LinearModel` (registered as ``"numpy"``): the reference backend."""

    name = "numpy"

    def unlearn(
        self,
        model: LinearModel,
        data: Iterable[Any],
        schedule: Schedule,
        /,
        *,
        seed: int | Mapping[str, Any] | None = None,
        center: Any = None,
        clip: str = "per_sample",
        finetune_epochs: int = 0,
        finetune_lr: float = 0.05,
        postprocess: str = "project_C0",
        progress: bool = False,
        retain_ids: Iterable[Any] | None = None,
        forget_ids: Iterable[Any] | None = None,
        noise_mode: str = "fresh",
        model_factory: Callable[[], LinearModel] | None = None,
        callback: Callable[[int, np.ndarray], None] | None = None,
        noise_source: Callable[[int, int], Any] | None = None,
        previous: Any = None,
        checkpoint_dir: Any = None,
        checkpoint_every: int | None = None,
    ) -> RunResult:
        """Unlearn ``model`` as ``schedule`` says; the options mean what they mean for the torch backend.

        ``data`` is a re-iterable of ``(X, y)`` numpy batches (see :func:`batches`). ``clip="ghost"`` is
        refused (it is a memory optimisation of per-sample clipping; use ``"per_sample"``). ``retrain``
        starts from ``model_factory()``, else the centre, else zeros. ``progress`` is accepted for
        interface parity and ignored (the reference backend is silent). Noise: draw ``t`` of the keyed
        float64 generator of :mod:`certun.backends.noise` per step, keyed from a fresh OS key
        (``seed=None``) or a user seed (testing/audit only) and every run input
        (:mod:`certun.backends.run_key`). ``previous``: the previous certificate of this model's
        ledger (dict or path); when the model is the one it released, the starting model is recorded in plain.
        ``checkpoint_dir``/``checkpoint_every``: a resumable run (docs/backends.md, "Resumable runs").
        """
        opts = RunOptions.check(schedule, clip=clip, postprocess=postprocess, finetune_epochs=finetune_epochs,
                                finetune_lr=finetune_lr, noise_mode=noise_mode, progress=progress,
                                callback=callback, noise_source=noise_source, checkpoint_dir=checkpoint_dir,
                                checkpoint_every=checkpoint_every)
        if opts.clip == "ghost":
            raise InvalidParameterError("clip", clip, "'per_sample' or 'batch' for the numpy backend")
        if not isinstance(model, LinearModel):
            raise InvalidParameterError("model", type(model).__name__, "a certun.backends.numpy_backend.LinearModel")
        hooks = _NumpyRun(model, data, schedule, opts, center=center, model_factory=model_factory)
        return skeleton.run(hooks, data, schedule, opts, seed=seed, previous=previous, retain_ids=retain_ids,
                            forget_ids=forget_ids)


class _NumpyRun(skeleton.Hooks):
    """The numpy backend's array operations on the run skeleton (:mod:`certun.backends._skeleton`)."""

    name = "numpy"
    packages = ("numpy",)

    def __init__(self, model: LinearModel, data: Iterable[Any], schedule: Schedule, opts: RunOptions, *,
                 center: Any, model_factory: Callable[[], LinearModel] | None) -> None:
        self.model, self.data, self.s, self.opts = model, data, schedule, opts
        self.center_arg, self.model_factory = center, model_factory
        self.c: np.ndarray | None = None
        self.clipping = clipping_for(schedule, opts.clip)
        self.x: np.ndarray | None = None

    def prepare(self) -> skeleton.Prepared:
        model = self.model
        self.c = _center(self.center_arg, model)
        return skeleton.Prepared(
            model=model, names=PARAMETER_NAMES, d=model.d, before=model.named(),
            center=None if self.c is None else model.with_flat(self.c).named(), clipping=self.clipping,
            key_options={"loss": model.loss}, dtype="float64", device="cpu")

    def start(self) -> np.ndarray:
        x = self.model.flat()
        if self.s.variant is Variant.RETRAIN:
            x = (self.model_factory().flat() if self.model_factory is not None else
                 (self.c.copy() if self.c is not None else np.zeros_like(x)))
            if x.shape != (self.model.d,):
                raise InvalidParameterError("model_factory", "<model of another shape>", "the same architecture")
        return x

    def normal(self, generator: Any, index: int, d: int) -> np.ndarray:
        return np.asarray(generator.normal(index, d), dtype=np.float64)

    def as_noise(self, z: Any, d: int) -> np.ndarray:
        z = np.asarray(z, dtype=np.float64)
        if z.shape != (d,):
            raise UnlearningRunError(f"noise_source returned shape {z.shape}, expected ({d},)")
        return z

    def project(self, x: np.ndarray) -> np.ndarray:
        return project_ball(x, self.s.C0, self.c)

    def add_noise(self, x: np.ndarray, sigma: float, z: np.ndarray) -> np.ndarray:
        return add_noise(x, sigma, noise=z)

    def output_perturbation(self, x: np.ndarray, z: np.ndarray) -> np.ndarray:
        return output_perturbation(x, C0=self.s.C0, sigma0=self.s.sigma0, center=self.c, noise=z)

    def batches(self, on_pass: Callable[[int], None] | None) -> Iterator[tuple[Any, Any]]:
        return skeleton.cycle(self.data, _pair, on_pass)

    def noisy_step(self, x: np.ndarray, t: int, batch: Any,
                   draw: Callable[[], Any]) -> tuple[np.ndarray, tuple[float, float, float]]:
        s, c = self.s, self.c
        loss, g = gradient(self.model.with_flat(x), *batch, clip=self.clipping, C1=s.C1)
        if not np.isfinite(loss):
            raise UnlearningRunError(f"non-finite loss at noisy step {t}; no certificate was issued")
        gamma, sigma, z = s.gammas[t], s.sigmas[t], draw()
        if s.variant is Variant.GRADIENT_CLIPPING:
            used = clip_vector(g, s.C1)
            x = add_noise(gc_step(x, g, gamma=gamma, lam=s.lam, C1=s.C1, center=c), sigma, noise=z)
        else:
            mode = skeleton.mc_mode(s)
            used = g if mode == "noise_after_projection" else clip_vector(g + s.lam * (x if c is None else x - c), s.C1)
            x = mc_step(x, g, gamma=gamma, lam=s.lam, C2=s.C2, sigma=sigma, mode=mode, C1=s.C1, center=c, noise=z)
        return x, (loss, float(np.linalg.norm(used)), float(np.linalg.norm(x if c is None else x - c)))

    def release(self, x: np.ndarray, *, project: bool) -> None:
        self.x = project_ball(x, self.s.C0, self.c) if project else x
        if not np.isfinite(self.x).all():
            raise UnlearningRunError("the unlearned parameters are not finite after the noisy phase")

    def finetune(self, history: dict[str, list[Any]], on_pass: Callable[[int], None] | None) -> int:
        """Plain SGD on retain data, one pass per epoch (post-processing, docs/theory.md#definition)."""
        steps, x = 0, self.x
        for epoch in range(self.opts.finetune_epochs):
            count = samples = 0
            for X, y in self.data:
                if len(X) == 0:
                    continue
                samples += len(X)
                loss, g = gradient(self.model.with_flat(x), np.asarray(X, dtype=np.float64), np.asarray(y),
                                   clip=None, C1=None)
                if not np.isfinite(loss):
                    raise UnlearningRunError(f"non-finite loss during fine-tuning epoch {epoch}")
                x = x - self.opts.finetune_lr * g
                history["ft_step"].append(steps)
                history["ft_loss"].append(loss)
                steps, count = steps + 1, count + 1
            if count == 0:
                raise UnlearningRunError("the retain data is empty: nothing to fine-tune on")
            if on_pass is not None:
                on_pass(samples)
        if not np.isfinite(x).all():
            raise UnlearningRunError("the unlearned parameters are not finite after fine-tuning")
        self.x = x
        return steps

    def finish(self) -> skeleton.Finished:
        released = self.model.with_flat(self.x)
        return skeleton.Finished(model=released, after=released.named(), extra={"loss": self.model.loss})


def _pair(batch: Any) -> tuple[tuple[np.ndarray, np.ndarray], int]:
    """One retain batch as float64 inputs and labels, with its size; refuses anything but an ``(X, y)`` pair."""
    if not (isinstance(batch, (list, tuple)) and len(batch) == 2):
        raise UnlearningRunError("each retain batch must be an (X, y) pair")
    X, y = batch
    return (np.asarray(X, dtype=np.float64), np.asarray(y)), len(X)


def _center(center: Any, model: LinearModel) -> np.ndarray | None:
    """The ``center`` option as a flat float64 vector (``None``: the origin); refuses one equal to the model."""
    if center is None:
        return None
    if isinstance(center, LinearModel):
        c = center.flat()
    elif isinstance(center, dict):
        missing = [n for n in PARAMETER_NAMES if n not in center]
        if missing:
            raise InvalidParameterError("center", f"<mapping missing {missing}>", "a mapping with weight and bias")
        c = LinearModel(center["weight"], center["bias"], model.loss).flat()
    else:
        c = np.asarray(center, dtype=np.float64)
    if c.shape != (model.d,):
        raise InvalidParameterError("center", f"<shape {c.shape}>", f"a flat vector of length d={model.d}")
    if not np.isfinite(c).all():
        raise InvalidParameterError("center", "<non-finite values>", "finite everywhere")
    n = model.weight.size
    same = [name for name, piece, start in (("weight", c[:n], model.weight.ravel()), ("bias", c[n:], model.bias))
            if np.array_equal(piece, start) and not (start.size and np.all(start == start[0]))]
    if same:
        raise InvalidParameterError(
            "center", f"<equal to the starting model in {same}>",
            "independent of the training data (docs/theory.md#anchored-balls): the certificate publishes the "
            "centre's digest, so the trained parameters as the centre would publish the model the run hides",
            hint="use public pretrained weights, the initialisation drawn before training, or the origin")
    return c
