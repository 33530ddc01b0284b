"""The worst-case-start game: many noisy unlearning chains from two starts, scored along their gap.

The proofs of docs/theory.md#gradient-clipping, #model-clipping bound the divergence between two runs of the same noisy
procedure that start anywhere in the ball ``B(c, C0)``; the worst case pushes the two runs apart at every step. The
game plays exactly that case on the real step rule:

- starts ``x_a = c + C0·u`` and ``x_b = c − C0·u`` (``‖x_a − x_b‖ = 2·C0``), ``u`` a unit vector;
- a canary loss ``ℓ(x) = −G·|⟨x − c, u⟩|`` whose gradient ``−G·sign(⟨x − c, u⟩)·u`` pushes each run
  away from the midpoint (after clipping: the ``x ↦ ρx + γC1·sign(x)`` map of the analysis for
  gradient clipping, and ``x ↦ C2·sign(x)`` for model clipping when ``γG ≥ C2``);
- the planned schedule (γ_t, σ_t, T, C0/C1/C2, λ), ``n_runs`` independent runs from each start;
- score = ``⟨x_T − c, u⟩``, the projection of the final model on ``x_a − x_b``.

The two score samples go to :func:`certun.audit.stats.eps_lower_bound`. A correct implementation of
a correct schedule yields ``ε̂ > ε`` with probability at most ``1 − confidence``.

Runs are batched: each chain is one row of an ``(n, d)`` tensor and all rows step together through
the torch backend's step functions (:mod:`certun.backends.torch`), on the GPU when one is given.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from certun.accountant import Guarantee, Mode, Schedule, Variant, guarantee
from certun.audit.stats import EpsilonBound, eps_lower_bound
from certun.backends import NoiseMode
from certun.certificates.provenance import resolve_seed
from certun.errors import InvalidParameterError

__all__ = [
    "NOISE_MODES",
    "RUNNERS",
    "GameResult",
    "backend_chains",
    "default_strength",
    "default_thresholds",
    "play",
    "run_chains",
    "under_noised",
]

#: ``fresh``: a new draw at every noisy step (what the proofs need). ``reuse_first_draw_UNSAFE``: the
#: first draw of each chain is added again at every later step (the defect of docs/theory.md#authors-code);
#: an audit control only.
NOISE_MODES = tuple(m.value for m in NoiseMode)
#: How the chains are run: all at once through the step functions, or one real backend run each.
RUNNERS = ("batched", "backend")
#: Bonferroni grid size for :func:`default_thresholds`.
DEFAULT_GRID_SIZE = 64


# ------------------------------------------------------------------------------------ schedules
def under_noised(schedule: Schedule) -> Schedule:
    """The authors' bug as a control: σ scaled so that the Rényi coefficient ε_R equals the claimed ε.

    Their code reported ε_R as ε (docs/theory.md#authors-code). Every σ_t is multiplied by
    ``sqrt(ε_R / ε)`` (ε_R ∝ 1/σ² for a common scale), so the result has ``ε_R = ε`` and still claims
    the original target; :func:`certun.accountant.guarantee` shows its true ε. Gradient clipping only.
    """
    if schedule.variant is not Variant.GRADIENT_CLIPPING:
        raise InvalidParameterError("schedule.variant", schedule.variant.value,
                                    "gradient_clipping (the under-noised control is a Rényi-conversion bug)")
    eps_renyi = guarantee(schedule).eps_renyi
    if eps_renyi is None or eps_renyi <= 0:
        raise InvalidParameterError("schedule", "<no Renyi coefficient>", "a gradient clipping schedule with noise")
    scale = math.sqrt(eps_renyi / schedule.target.eps)
    return dataclasses.replace(
        schedule,
        sigmas=tuple(s * scale for s in schedule.sigmas),
        notes=(*schedule.notes, f"AUDIT CONTROL: sigma x{scale:.4g} so that eps_R = {schedule.target.eps:g} "
               "is claimed as eps (docs/theory.md#authors-code); the claim is false"),
    )


def default_strength(schedule: Schedule) -> float:
    """The canary gradient norm G that realises the analysis's worst case for ``schedule``.

    Gradient clipping: ``C1`` (clipping would cut anything larger). Model clipping, noise after
    projection (gradients unclipped): ``2·C2 / min γ_t``, so one step reaches the ball's boundary
    from anywhere inside it. Model clipping with clipped gradients: ``10^6·C1``, so the clipped
    update is ``C1·sign`` to float precision even with the λ term. Output perturbation: unused (1).
    """
    v = schedule.variant
    if v is Variant.GRADIENT_CLIPPING:
        return float(schedule.C1)
    if v is Variant.MODEL_CLIPPING:
        if schedule.mode is Mode.CLIP_NOISE_BEFORE_PROJECTION:
            return 1e6 * float(schedule.C1)
        positive = [g for g in schedule.gammas if g > 0]
        return 2.0 * float(schedule.C2) / min(positive) if positive else 1.0
    return 1.0


def default_thresholds(schedule: Schedule, size: int = DEFAULT_GRID_SIZE) -> np.ndarray:
    """A threshold grid fixed by the schedule alone (before any run), for the Bonferroni rule.

    Uniform on ``[−R, R]`` where R is the farthest a fresh-noise run is expected to go along u:
    the drift bound plus 4 noise standard deviations (docs/theory.md#gradient-clipping's numerator for gradient
    clipping, ``C2`` plus 4σ for model clipping, ``C0`` plus 4σ0 for output perturbation).
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise InvalidParameterError("size", size, "an integer >= 1")
    v = schedule.variant
    if v is Variant.GRADIENT_CLIPPING:
        reach, var = float(schedule.C0), 0.0
        for g, s in zip(schedule.gammas, schedule.sigmas, strict=True):
            rho = 1.0 - g * schedule.lam
            reach = rho * reach + g * float(schedule.C1)
            var = rho * rho * var + s * s
        radius = reach + 4.0 * math.sqrt(var)
    elif v is Variant.MODEL_CLIPPING:
        radius = float(schedule.C2) + 4.0 * (schedule.sigmas[-1] if schedule.mode is Mode.NOISE_AFTER_PROJECTION
                                             else 0.0)
    elif v is Variant.OUTPUT_PERTURBATION:
        radius = float(schedule.C0) + 4.0 * float(schedule.sigma0)
    else:
        raise InvalidParameterError("schedule.variant", v.value, "a noisy variant (retrain has nothing to audit)")
    return np.linspace(-radius, radius, size)


# ------------------------------------------------------------------------------------ the chains
def run_chains(schedule: Schedule, starts, *, strength: float | None = None, noise_mode: str = "fresh",
               generator=None, draw=None):
    """Run one chain per row of ``starts`` (an ``(n, d)`` tensor, centre at 0) through ``schedule``.

    Every step is the torch backend's own step function (:mod:`certun.backends.torch`:
    ``project_ball``, ``gc_step``, ``mc_step``, ``add_noise``, ``output_perturbation``) applied to the
    whole batch, so the audit exercises the code a real run executes. The canary direction is the
    first coordinate axis ``u = e_1``. Noise comes from ``generator``, one ``N(0, σ_t² I)`` draw per
    noisy step, or in ``reuse_first_draw_UNSAFE`` mode the first draw again at every step (the
    backend's ``noise=`` argument). ``draw(index, shape)``, when given, supplies the standard-normal
    draws instead (noisy step ``t`` is draw ``t``, the σ0 draw is draw ``T``, as in the backends).
    ``starts`` is not modified; returns the final iterates.
    Source: docs/theory.md#gradient-clipping, #model-clipping (both modes), #output-perturbation.
    """
    import torch

    import certun.backends.torch as steps

    if noise_mode not in NOISE_MODES:
        raise InvalidParameterError("noise_mode", noise_mode, f"one of {', '.join(map(repr, NOISE_MODES))}")
    v = schedule.variant
    if v is Variant.RETRAIN:
        raise InvalidParameterError("schedule.variant", v.value, "a noisy variant (retrain has nothing to audit)")
    G = default_strength(schedule) if strength is None else float(strength)
    lam = float(schedule.lam)
    reuse = noise_mode == "reuse_first_draw_UNSAFE"
    x = starts.clone()
    buffer = torch.empty_like(x)
    drawn = False

    def noise_kwargs(index: int) -> dict[str, Any]:
        # fresh: the backend draws into ``buffer`` from the generator; reuse: the first draw again.
        nonlocal drawn
        if reuse and drawn:
            return {"noise": buffer}
        drawn = True
        if draw is not None:
            buffer.copy_(draw(index, tuple(x.shape)))
            return {"noise": buffer}
        return {"out": buffer}

    if v is Variant.OUTPUT_PERTURBATION:
        return steps.output_perturbation(x, C0=float(schedule.C0), sigma0=float(schedule.sigma0),
                                         generator=generator, **noise_kwargs(schedule.T))
    steps.project_ball(x, float(schedule.C0))
    if v is Variant.MODEL_CLIPPING and schedule.sigma0 is not None:
        steps.add_noise(x, float(schedule.sigma0), generator, **noise_kwargs(schedule.T))
    g = torch.zeros_like(x)
    for t, (gamma, sigma) in enumerate(zip(schedule.gammas, schedule.sigmas, strict=True)):
        g.zero_()
        g[:, 0] = -G * torch.sign(x[:, 0])  # gradient of the canary loss −G·|⟨x, u⟩|
        if v is Variant.GRADIENT_CLIPPING:
            steps.gc_step(x, g, gamma=gamma, lam=lam, C1=float(schedule.C1))
            steps.add_noise(x, sigma, generator, **noise_kwargs(t))
        else:
            steps.mc_step(x, g, gamma=gamma, lam=lam, C2=float(schedule.C2), sigma=sigma, generator=generator,
                          mode=schedule.mode.value, C1=None if schedule.C1 is None else float(schedule.C1),
                          **noise_kwargs(t))
    return x


def backend_chains(schedule: Schedule, starts, *, strength: float | None = None, noise_mode: str = "fresh",
                   seed: int, clip: str = "per_sample", device: str | None = None, backend: str = "torch"):
    """The same game run by the real backend: one ``get_backend(backend).unlearn(...)`` call per row of ``starts``.

    The model is ``nn.Linear(d, 1, bias=False)`` (its weight is ``x``), the retain data is one batch
    holding the single input ``u = e_1``, and the loss is the canary ``−G·|⟨x, u⟩|`` (per sample,
    ``reduction="none"``), so the backend's own gradient code (Opacus per-sample hooks by default),
    clipping, steps, noise generator and noise modes all run. No post-processing, no fine-tuning.
    Run ``i`` uses the noise seed ``derive_seed(seed, i)``. Slow (milliseconds per run): for
    modest N, as an end-to-end check of the batched game. Returns the ``(n, d)`` final iterates.
    """
    import warnings

    import torch
    from torch import nn

    from certun.backends import get_backend

    runner = get_backend(backend)
    G = default_strength(schedule) if strength is None else float(strength)
    n, d = starts.shape
    u = torch.zeros((1, d), dtype=starts.dtype)
    u[0, 0] = 1.0
    data = [(u, torch.zeros(1, dtype=starts.dtype))]

    def canary_loss(output, targets, reduction="mean"):
        losses = -G * output.reshape(-1).abs()
        return losses if reduction == "none" else losses.mean()

    out = torch.empty_like(starts)
    with warnings.catch_warnings():
        # the reused-noise control warns at every run; it is labelled as a control in every report
        warnings.filterwarnings("ignore", message="noise_mode='reuse_first_draw_UNSAFE'")
        for i in range(n):
            model = nn.Linear(d, 1, bias=False).to(starts.dtype)
            with torch.no_grad():
                model.weight.copy_(starts[i].reshape(1, d).cpu())
            result = runner.unlearn(model, data, schedule, loss_fn=canary_loss, seed=derive_seed(seed, i), clip=clip,
                                    postprocess="none", progress=False, noise_mode=noise_mode, device=device,
                                    retain_ids=[0])
            out[i] = result.model.weight.detach().reshape(d).to(out.dtype).cpu()
    return out


# ------------------------------------------------------------------------------------ the game
@dataclass(frozen=True)
class GameResult:
    """The outcome of one worst-case-start game.

    ``claimed`` is the schedule's target (what a certificate states); ``recomputed`` is what the
    accountant derives from the schedule's own inputs (differs from ``claimed`` for a lying control).
    ``detected`` is ``bound.eps_lower > claimed.eps``: the claim is refuted at the bound's confidence.
    """

    label: str
    variant: str
    claimed: Guarantee
    recomputed: Guarantee
    bound: EpsilonBound
    n_runs: int
    d: int
    noise_mode: str
    runner: str
    seed: int
    strength: float
    scores_a: np.ndarray = field(repr=False, compare=False)
    scores_b: np.ndarray = field(repr=False, compare=False)

    @property
    def detected(self) -> bool:
        """True when the lower bound exceeds the claimed ε (the claim is refuted)."""
        return self.bound.eps_lower > self.claimed.eps

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (without the raw scores)."""
        return {
            "label": self.label, "variant": self.variant,
            "claimed_eps": self.claimed.eps, "claimed_delta": self.claimed.delta,
            "recomputed_eps": self.recomputed.eps, "recomputed_delta": self.recomputed.delta,
            "eps_lower": self.bound.eps_lower, "confidence": self.bound.confidence,
            "detected": self.detected, "n_runs": self.n_runs, "d": self.d, "noise_mode": self.noise_mode,
            "runner": self.runner, "seed": self.seed, "strength": self.strength, "bound": self.bound.to_dict(),
        }


def _check_int(name: str, value: Any, lower: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lower:
        raise InvalidParameterError(name, value, f"an integer >= {lower}")
    return value


def derive_seed(seed: int, index: int) -> int:
    """The ``index``-th child seed of ``seed`` (``numpy.random.SeedSequence([seed, index])``), in ``[0, 2**63)``."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, dtype=np.uint64)[0] % (2**63))


def _check_play(schedule: Schedule, noise_mode: str, confidence: float, runner: str) -> None:
    """Reject a non-Schedule or retrain schedule, an unknown noise mode or runner, and a bad confidence."""
    if not isinstance(schedule, Schedule):
        raise InvalidParameterError("schedule", type(schedule).__name__, "a certun Schedule")
    if schedule.variant is Variant.RETRAIN:
        raise InvalidParameterError("schedule.variant", schedule.variant.value,
                                    "a noisy variant (retrain has nothing to audit)")
    if noise_mode not in NOISE_MODES:
        raise InvalidParameterError("noise_mode", noise_mode, f"one of {', '.join(map(repr, NOISE_MODES))}")
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0 < confidence < 1:
        raise InvalidParameterError("confidence", confidence, "a number in (0, 1)")
    if runner not in RUNNERS:
        raise InvalidParameterError("runner", runner, f"one of {', '.join(map(repr, RUNNERS))}")


def _starts(schedule: Schedule, n_runs: int, d: int, dev: Any) -> Any:
    """The ``2 * n_runs`` chain starts: ``n_runs`` at ``+C0 e_1`` (start a), then ``n_runs`` at ``-C0 e_1`` (b)."""
    import torch

    starts = torch.zeros((2 * n_runs, d), dtype=torch.float64, device=dev)
    starts[:n_runs, 0] = float(schedule.C0)
    starts[n_runs:, 0] = -float(schedule.C0)
    return starts


def play(
    schedule: Schedule,
    *,
    n_runs: int = 20_000,
    confidence: float = 0.95,
    seed: int | None = None,
    noise_mode: str = "fresh",
    d: int = 1,
    strength: float | None = None,
    select: str = "bonferroni",
    thresholds: np.ndarray | None = None,
    device: str | None = None,
    runner: str = "batched",
    label: str = "",
) -> GameResult:
    """Play the game with ``n_runs`` batched chains from each start; return the ε lower bound.

    Args:
        schedule: the planned schedule to audit; its target (ε, δ) is the claim tested.
        n_runs: independent runs from each start.
        confidence: confidence of the lower bound (see :mod:`certun.audit.stats`).
        seed: seed of the one ``torch.Generator`` of the game (recorded; drawn fresh when ``None``).
        noise_mode: ``"fresh"`` or the control ``"reuse_first_draw_UNSAFE"``.
        d: dimension of the chains (1 is the worst case; more dimensions only add noise off ``u``).
        strength: canary gradient norm G (default :func:`default_strength`).
        select: ``"bonferroni"`` (grid :func:`default_thresholds` unless ``thresholds``) or ``"holdout"``.
        device: torch device for the chains (default CPU).
        runner: ``"batched"`` (all chains at once through the backend's step functions) or
            ``"backend"`` (one real ``get_backend("torch").unlearn`` call per run; slow, end to end:
            see :func:`backend_chains`).
        label: a name for reports.
    """
    import torch

    _check_play(schedule, noise_mode, confidence, runner)
    n_runs = _check_int("n_runs", n_runs, 2)
    d = _check_int("d", d, 1)
    seed = resolve_seed(seed)
    dev = torch.device(device or "cpu")
    gen = torch.Generator(device=dev)
    gen.manual_seed(seed)
    starts = _starts(schedule, n_runs, d, dev)
    G = default_strength(schedule) if strength is None else float(strength)
    if runner == "batched":
        final = run_chains(schedule, starts, strength=G, noise_mode=noise_mode, generator=gen)
    else:
        final = backend_chains(schedule, starts, strength=G, noise_mode=noise_mode, seed=seed, device=device)
    scores = final[:, 0].detach().cpu().numpy()
    if select == "bonferroni" and thresholds is None:
        thresholds = default_thresholds(schedule)
    bound = eps_lower_bound(scores[:n_runs], scores[n_runs:], delta=schedule.target.delta, confidence=confidence,
                            select=select, thresholds=thresholds)
    return GameResult(label=label or schedule.variant.value, variant=schedule.variant.value,
                      claimed=schedule.target, recomputed=guarantee(schedule), bound=bound, n_runs=n_runs, d=d,
                      noise_mode=noise_mode, runner=runner, seed=seed, strength=G,
                      scores_a=scores[:n_runs], scores_b=scores[n_runs:])
