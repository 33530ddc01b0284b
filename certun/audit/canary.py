"""Black-box one-run canary audit of a whole train-then-unlearn pipeline (Steinke–Nasr–Jagielski 2023 style).

Procedure: draw ``m`` canaries and include each in the training set independently with probability ½
(bits ``S_i``); train on the retain data plus the included canaries; unlearn *all* included canaries
(they are the forget set); score every canary on the unlearned model; guess "in" for the ``k_in``
highest scores and "out" for the ``k_out`` lowest, abstain on the rest; count the ``W`` correct of
``r = k_in + k_out`` guesses.

Why Binomial(r, ½) is the right reference: (ε, δ)-unlearning says that for every S the output is
(ε, δ)-close to ``Ā(retain)``, which never sees a canary (docs/theory.md#definition). Under ``Ā`` the output is
independent of S, so ``W ~ Binomial(r, ½)`` exactly, whatever the scoring. For the event
``E = {P[Binomial(r, ½) ≥ W] ≤ p}`` this gives ``P[E] ≤ e^ε·p + δ``. Hence, with ``p_obs`` the
observed tail probability and ``α = 1 − confidence``,

    ε̂ = ln((α − δ) / p_obs)    (0 if negative)

satisfies ``P[ε̂ > ε] ≤ α`` for any (ε, δ)-unlearning pipeline: an exact one-run test. Unlike the
one-run DP audit, the unlearning guarantee covers all canaries at once (it does not depend on
``|D_f|``), so no per-canary composition is needed.

It is *loose*: one run gives one observation, ``ε̂ ≤ r·ln 2 + ln α`` at most, and real canaries on a
real model are far from the worst case of the analysis. Expect ε̂ = 0 for any sound pipeline, and a
detection only for gross failures (unlearning skipped, noise far too small). The worst-case-start game
(:mod:`certun.audit.game`) is the sharp test; this one checks the whole pipeline end to end.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats as _st

from certun.errors import InvalidParameterError

__all__ = [
    "CanaryResult",
    "binomial_tail",
    "canary_audit",
    "guess_membership",
    "one_run_eps_lower",
    "tiny_torch_pipeline",
]


def binomial_tail(correct: int, r: int) -> float:
    """``P[Binomial(r, ½) ≥ correct]`` (1 when ``r = 0``)."""
    if r == 0:
        return 1.0
    return float(_st.binom.sf(correct - 1, r, 0.5))


def one_run_eps_lower(correct: int, r: int, *, delta: float, confidence: float = 0.95) -> float:
    """The one-run lower bound ``ε̂ = max(0, ln((α − δ)/P[Binomial(r, ½) ≥ correct]))``.

    ``P[ε̂ > ε] ≤ 1 − confidence`` for any (ε, δ)-unlearning pipeline (module docstring).

    Raises:
        InvalidParameterError: counts out of range, or ``δ ≥ α`` (no ε can then be refuted).
    """
    for name, value in (("correct", correct), ("r", r)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise InvalidParameterError(name, value, "an integer >= 0")
    if correct > r:
        raise InvalidParameterError("correct", correct, f"<= r={r}")
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0 < confidence < 1:
        raise InvalidParameterError("confidence", confidence, "a number in (0, 1)")
    alpha = 1.0 - confidence
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not 0 <= delta < alpha:
        raise InvalidParameterError("delta", delta, f"in [0, 1 − confidence) = [0, {alpha:g})")
    tail = binomial_tail(int(correct), int(r))
    return max(0.0, math.log(alpha - delta) - math.log(tail))


def guess_membership(scores: np.ndarray, k_in: int, k_out: int) -> np.ndarray:
    """Guesses ``+1`` (in) for the ``k_in`` highest scores, ``−1`` (out) for the ``k_out`` lowest, else 0.

    Ties are broken by position (a stable sort), which does not depend on the membership bits.
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    m = scores.size
    for name, k in (("k_in", k_in), ("k_out", k_out)):
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise InvalidParameterError(name, k, "an integer >= 0")
    if k_in + k_out > m:
        raise InvalidParameterError("k_in + k_out", k_in + k_out, f"<= the number of canaries m={m}")
    if not np.all(np.isfinite(scores)):
        raise InvalidParameterError("scores", "<non-finite score>", "finite scores only")
    order = np.argsort(scores, kind="stable")
    guesses = np.zeros(m, dtype=np.int8)
    if k_out:
        guesses[order[:k_out]] = -1
    if k_in:
        guesses[order[m - k_in:]] = 1
    return guesses


@dataclass(frozen=True)
class CanaryResult:
    """The outcome of a one-run canary audit.

    Attributes:
        m: canaries drawn; ``included``: how many were trained on (and then unlearned).
        r: guesses made (not abstained); ``correct``: how many were right.
        tail: ``P[Binomial(r, ½) ≥ correct]``, the p-value against perfect unlearning (ε = δ = 0).
        eps_lower: ε̂ from :func:`one_run_eps_lower`; ``confidence``, ``delta`` as used.
        claimed_eps: the ε the pipeline claims (``None`` if not given); ``seed``: the audit's seed.
    """

    m: int
    included: int
    r: int
    correct: int
    tail: float
    eps_lower: float
    confidence: float
    delta: float
    claimed_eps: float | None
    seed: int

    @property
    def detected(self) -> bool:
        """True when ε̂ exceeds the claimed ε (False when no claim was given)."""
        return self.claimed_eps is not None and self.eps_lower > self.claimed_eps

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {**{k: getattr(self, k) for k in self.__dataclass_fields__}, "detected": self.detected}


def canary_audit(
    pipeline: Callable[[np.ndarray, int], np.ndarray],
    m: int,
    *,
    k_in: int,
    k_out: int,
    delta: float,
    confidence: float = 0.95,
    claimed_eps: float | None = None,
    seed: int | None = None,
) -> CanaryResult:
    """Run ``pipeline`` once on a random canary inclusion and test its membership guesses.

    Args:
        pipeline: ``pipeline(included, seed) -> scores``: train on the retain data plus the canaries
            whose ``included`` entry is true, unlearn exactly those canaries with the certified
            procedure, and return one membership score per canary (length ``m``; higher means "more
            likely trained on", e.g. minus the canary's loss). It must not look at ``included``
            after unlearning (the scores are what a black-box attacker sees).
        m: number of canaries.
        k_in, k_out: how many top/bottom scores become "in"/"out" guesses (fixed before the run).
        delta, confidence: as in :func:`one_run_eps_lower`.
        claimed_eps: the pipeline's claimed ε, for :attr:`CanaryResult.detected`.
        seed: seeds the inclusion bits and is passed on to the pipeline (fresh when ``None``).
    """
    from certun.audit.game import resolve_seed

    if isinstance(m, bool) or not isinstance(m, int) or m < 1:
        raise InvalidParameterError("m", m, "an integer >= 1")
    seed = resolve_seed(seed)
    included = np.random.default_rng(seed).random(m) < 0.5
    scores = np.asarray(pipeline(included.copy(), seed), dtype=np.float64).ravel()
    if scores.size != m:
        raise InvalidParameterError("pipeline scores", f"<{scores.size} scores>", f"one score per canary (m={m})")
    guesses = guess_membership(scores, k_in, k_out)
    made = guesses != 0
    truth = np.where(included, 1, -1)
    r, correct = int(made.sum()), int((guesses[made] == truth[made]).sum())
    return CanaryResult(m=m, included=int(included.sum()), r=r, correct=correct, tail=binomial_tail(correct, r),
                        eps_lower=one_run_eps_lower(correct, r, delta=delta, confidence=confidence),
                        confidence=float(confidence), delta=float(delta), claimed_eps=claimed_eps, seed=seed)


# ------------------------------------------------------------------------------------ a tiny end-to-end pipeline
def _train_linear(x_train: Any, y_train: Any, dim: int, seed: int, train_steps: int, train_lr: float) -> Any:
    """``nn.Linear(dim, 2)``, initialised from ``seed`` and trained by full-batch gradient descent."""
    import torch
    from torch import nn
    from torch.nn import functional

    torch_gen = torch.Generator().manual_seed(seed % (2**63))
    model = nn.Linear(dim, 2)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.01 * torch.randn(p.shape, generator=torch_gen))
    for _ in range(train_steps):
        model.zero_grad()
        functional.cross_entropy(model(x_train), y_train).backward()
        with torch.no_grad():
            for p in model.parameters():
                p.sub_(train_lr * p.grad)
    return model


def tiny_torch_pipeline(
    schedule,
    *,
    dim: int = 300,
    n_retain: int = 200,
    m: int = 64,
    train_steps: int = 300,
    train_lr: float = 0.5,
    unlearn: bool = True,
    clip: str = "per_sample",
    device: str | None = None,
) -> Callable[[np.ndarray, int], np.ndarray]:
    """A small train-then-unlearn pipeline on synthetic data, for :func:`canary_audit`.

    Retain data: ``n_retain`` Gaussian points in ``R^dim`` labelled by a fixed linear teacher.
    Canaries: ``m`` Gaussian points with labels *against* the teacher, which a linear model must
    memorise to fit. The model (``nn.Linear(dim, 2)``) is trained by full-batch gradient descent on
    the retain data plus the included canaries, then unlearned with ``get_backend("torch").unlearn``
    on the retain data and ``schedule``; ``unlearn=False`` skips that step (a gross failure the
    audit must catch). The score of a canary is the unlearned model's logit margin for its label.
    Data depend only on a fixed data seed; the run's seed drives training order and the noise.
    """
    import torch
    from torch.nn import functional

    from certun.audit.game import derive_seed
    from certun.backends import get_backend

    data_gen = torch.Generator().manual_seed(20231)
    teacher = torch.randn(dim, generator=data_gen)
    x_retain = torch.randn(n_retain, dim, generator=data_gen)
    y_retain = (x_retain @ teacher > 0).long()
    x_canary = torch.randn(m, dim, generator=data_gen)
    y_canary = 1 - (x_canary @ teacher > 0).long()

    def pipeline(included: np.ndarray, seed: int) -> np.ndarray:
        mask = torch.as_tensor(np.asarray(included, dtype=bool))
        x_train = torch.cat([x_retain, x_canary[mask]])
        y_train = torch.cat([y_retain, y_canary[mask]])
        model = _train_linear(x_train, y_train, dim, derive_seed(seed, 0), train_steps, train_lr)
        if unlearn:
            loader = [(x_retain[i:i + 50], y_retain[i:i + 50]) for i in range(0, n_retain, 50)]
            result = get_backend("torch").unlearn(model, loader, schedule, loss_fn=functional.cross_entropy,
                                                  seed=derive_seed(seed, 1), clip=clip, progress=False,
                                                  device=device, retain_ids=list(range(n_retain)))
            model = result.model
        with torch.no_grad():
            logits = model.to("cpu")(x_canary)
            margin = logits.gather(1, y_canary[:, None]).squeeze(1) - logits.gather(1, 1 - y_canary[:, None]).squeeze(1)
        return margin.numpy().astype(np.float64)

    return pipeline
