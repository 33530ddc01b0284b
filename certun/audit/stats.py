"""Statistics of the audit: one-sided Clopper–Pearson bounds and an ε lower bound from two samples.

An (ε, δ) guarantee between two output distributions P (runs from start a) and Q (runs from start b)
says ``P(S) ≤ e^ε·Q(S) + δ`` and ``Q(S) ≤ e^ε·P(S) + δ`` for every set of outcomes S (docs/theory.md#definition).
Any scoring of the outputs is post-processing, so the same holds for sets of scores. For a threshold t
and ``S = {score > t}`` the first inequality gives ``ε ≥ ln((P(S) − δ) / Q(S))``, and the second on the
complement ``S^c = {score ≤ t}`` gives ``ε ≥ ln((1 − Q(S) − δ) / (1 − P(S)))``. Both need only a *lower*
bound on ``p = P(S)`` and an *upper* bound on ``q = Q(S)``, which Clopper–Pearson intervals give from
independent runs. The confidence statement is exact (conservative), never asymptotic:

    With probability at least ``confidence`` over the runs, the returned ``eps_lower`` is at most the
    smallest ε for which the two score distributions satisfy (ε, δ) in both directions; hence at most
    the ε of the mechanism on this pair of inputs. A correct (ε, δ) implementation therefore produces
    ``eps_lower > ε`` with probability at most ``1 − confidence`` (the false-alarm rate).

The threshold is either chosen on a held-out part of the runs (``select="holdout"``: the bound is then
computed once, on the other part, at level ``1 − α``) or taken from a grid fixed *before* the runs with
a Bonferroni correction (``select="bonferroni"``: ``K`` thresholds, 2 bounds each, each at ``α/(2K)``).
Choosing the best threshold on the same runs without a correction would not be a valid bound.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats as _st

from certun.errors import InvalidParameterError, NumericalError

__all__ = [
    "EpsilonBound",
    "clopper_pearson_lower",
    "clopper_pearson_upper",
    "eps_bounds_at",
    "eps_lower_bound",
    "SELECTIONS",
]

#: Threshold-selection rules :func:`eps_lower_bound` accepts.
SELECTIONS = ("holdout", "bonferroni")


def _check_confidence(confidence: float, name: str = "confidence") -> float:
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0 < confidence < 1:
        raise InvalidParameterError(name, confidence, "a number in (0, 1)")
    return float(confidence)


def _check_counts(k, n) -> tuple[np.ndarray, np.ndarray]:
    k_arr, n_arr = np.asarray(k), np.asarray(n)
    if not (np.issubdtype(k_arr.dtype, np.integer) and np.issubdtype(n_arr.dtype, np.integer)):
        raise InvalidParameterError("k, n", (k, n), "integers")
    if np.any(n_arr < 1) or np.any(k_arr < 0) or np.any(k_arr > n_arr):
        raise InvalidParameterError("k, n", (k, n), "integers with 0 <= k <= n and n >= 1")
    return k_arr.astype(np.float64), n_arr.astype(np.float64)


def clopper_pearson_lower(k, n, confidence: float):
    """One-sided lower Clopper–Pearson bound: ``P[p ≥ bound] ≥ confidence`` for ``k ~ Binomial(n, p)``.

    The bound is the ``1 − confidence`` quantile of ``Beta(k, n − k + 1)`` (0 when ``k = 0``); it is the
    smallest p that a one-sided exact binomial test at level ``1 − confidence`` does not reject, so
    its coverage is at least ``confidence`` for every p. Vectorised over ``k`` and ``n``.
    """
    confidence = _check_confidence(confidence)
    k_f, n_f = _check_counts(k, n)
    with np.errstate(invalid="ignore"):
        out = _st.beta.ppf(1.0 - confidence, k_f, n_f - k_f + 1.0)
    out = np.where(k_f == 0, 0.0, out)
    return _finite(out, "clopper_pearson_lower")


def clopper_pearson_upper(k, n, confidence: float):
    """One-sided upper Clopper–Pearson bound: ``P[p ≤ bound] ≥ confidence`` for ``k ~ Binomial(n, p)``.

    The ``confidence`` quantile of ``Beta(k + 1, n − k)`` (1 when ``k = n``). Vectorised.
    """
    confidence = _check_confidence(confidence)
    k_f, n_f = _check_counts(k, n)
    with np.errstate(invalid="ignore"):
        out = _st.beta.ppf(confidence, k_f + 1.0, n_f - k_f)
    out = np.where(k_f == n_f, 1.0, out)
    return _finite(out, "clopper_pearson_upper")


def _finite(out: np.ndarray, where: str):
    if np.any(np.isnan(out)):
        raise NumericalError(f"{where} produced NaN")
    return float(out) if out.ndim == 0 else out


def _log_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """ln(num/den) where num > 0, else −inf (no evidence); den > 0 always holds for CP bounds."""
    out = np.full(np.shape(num), -np.inf)
    ok = (num > 0) & (den > 0)
    out[ok] = np.log(num[ok]) - np.log(den[ok])
    return out


def eps_bounds_at(scores_a, scores_b, thresholds, *, delta: float, level: float) -> tuple[np.ndarray, ...]:
    """The two ε lower bounds at each threshold, each from CP bounds at one-sided level ``level``.

    Returns ``(eps_upper_tail, eps_lower_tail, p_lower, q_upper, p_hat, q_hat)``, arrays over
    ``thresholds``: ``p = P_a(score > t)``, ``q = P_b(score > t)``; ``eps_upper_tail =
    ln((p_lower − δ)/q_upper)`` and ``eps_lower_tail = ln((1 − q_upper − δ)/(1 − p_lower))``
    (−inf where the numerator is ≤ 0). Both bounds hold together when the two CP bounds do, which
    happens with probability ≥ ``1 − 2(1 − level)``.
    """
    a = np.sort(np.asarray(scores_a, dtype=np.float64))
    b = np.sort(np.asarray(scores_b, dtype=np.float64))
    t = np.atleast_1d(np.asarray(thresholds, dtype=np.float64))
    n_a, n_b = a.size, b.size
    k_a = n_a - np.searchsorted(a, t, side="right")  # #{a > t}
    k_b = n_b - np.searchsorted(b, t, side="right")
    p_lo = np.atleast_1d(clopper_pearson_lower(k_a, np.full_like(k_a, n_a), level))
    q_up = np.atleast_1d(clopper_pearson_upper(k_b, np.full_like(k_b, n_b), level))
    upper_tail = _log_ratio(p_lo - delta, q_up)
    lower_tail = _log_ratio(1.0 - q_up - delta, 1.0 - p_lo)
    return upper_tail, lower_tail, p_lo, q_up, k_a / n_a, k_b / n_b


@dataclass(frozen=True)
class EpsilonBound:
    """An ε lower bound from two score samples, and how it was obtained.

    Attributes:
        eps_lower: the lower bound ε̂ (≥ 0; 0 means no evidence of any leakage).
        confidence: ``P[eps_lower ≤ ε of the mechanism] ≥ confidence`` (see module docstring).
        delta: the δ the bound accounts for.
        threshold: the score threshold t of the best test.
        tail: ``"upper"`` (``S = {score > t}``, a-runs over b-runs) or ``"lower"`` (``S^c``, b over a).
        p_hat, q_hat: empirical ``P_a(score > t)`` and ``P_b(score > t)`` on the evaluation runs.
        p_lower, q_upper: their Clopper–Pearson bounds.
        n_a, n_b: runs used for the bound (after a hold-out split).
        n_tests: thresholds the confidence was split over (1 for hold-out).
        selection: ``"holdout"`` or ``"bonferroni"``.
    """

    eps_lower: float
    confidence: float
    delta: float
    threshold: float
    tail: str
    p_hat: float
    q_hat: float
    p_lower: float
    q_upper: float
    n_a: int
    n_b: int
    n_tests: int
    selection: str

    def to_dict(self) -> dict:
        """A JSON-ready dict of every field."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def _best(scores_a, scores_b, thresholds, *, delta: float, level: float):
    up, lo, p_lo, q_up, p_hat, q_hat = eps_bounds_at(scores_a, scores_b, thresholds, delta=delta, level=level)
    i_up, i_lo = int(np.argmax(up)), int(np.argmax(lo))
    if up[i_up] >= lo[i_lo]:
        i, tail, value = i_up, "upper", up[i_up]
    else:
        i, tail, value = i_lo, "lower", lo[i_lo]
    t = float(np.atleast_1d(thresholds)[i])
    return float(value), t, tail, float(p_hat[i]), float(q_hat[i]), float(p_lo[i]), float(q_up[i])


def _candidate_thresholds(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Every distinct split of the pooled scores (midpoints), plus one below all of them."""
    pooled = np.unique(np.concatenate([a, b]))
    if pooled.size == 1:
        return pooled - 1.0
    return np.concatenate([[pooled[0] - 1.0], 0.5 * (pooled[1:] + pooled[:-1])])

def _check_scores(name: str, s: np.ndarray) -> None:
    """Raise unless ``s`` holds at least 2 scores, all finite."""
    if s.size < 2:
        raise InvalidParameterError(name, f"<{s.size} scores>", "at least 2 scores")
    if not np.all(np.isfinite(s)):
        raise InvalidParameterError(name, "<non-finite score>", "finite scores only")


def _bonferroni(a: np.ndarray, b: np.ndarray, thresholds: Sequence[float] | np.ndarray | None, delta: float,
                alpha: float) -> tuple[Any, ...]:
    """The best of the ``2K`` tests on a fixed grid, each CP bound at ``1 − α/(2K)``, and the sample sizes."""
    if thresholds is None:
        raise InvalidParameterError("thresholds", None, "a grid fixed before the runs, for select='bonferroni'")
    grid = np.unique(np.asarray(thresholds, dtype=np.float64).ravel())
    if grid.size == 0 or not np.all(np.isfinite(grid)):
        raise InvalidParameterError("thresholds", "<grid>", "a non-empty grid of finite values")
    level = 1.0 - alpha / (2 * grid.size)
    value, t, tail, p_hat, q_hat, p_lo, q_up = _best(a, b, grid, delta=delta, level=level)
    return value, t, tail, p_hat, q_hat, p_lo, q_up, a.size, b.size, int(grid.size)


def _holdout(a: np.ndarray, b: np.ndarray, thresholds: Sequence[float] | np.ndarray | None, delta: float,
             alpha: float, holdout_fraction: float) -> tuple[Any, ...]:
    """The test selected on the first share of each sample, evaluated on the rest at ``1 − α/2``."""
    if not (isinstance(holdout_fraction, (int, float)) and 0 < holdout_fraction < 1):
        raise InvalidParameterError("holdout_fraction", holdout_fraction, "a number in (0, 1)")
    m_a, m_b = int(a.size * holdout_fraction), int(b.size * holdout_fraction)
    if min(m_a, m_b) < 1 or min(a.size - m_a, b.size - m_b) < 1:
        raise InvalidParameterError("holdout_fraction", holdout_fraction,
                                    "a share leaving at least one score on each side of the split")
    sel_a, sel_b, ev_a, ev_b = a[:m_a], b[:m_b], a[m_a:], b[m_b:]
    grid = (_candidate_thresholds(sel_a, sel_b) if thresholds is None
            else np.unique(np.asarray(thresholds, dtype=np.float64).ravel()))
    level = 1.0 - alpha / 2
    _, t, tail, *_ = _best(sel_a, sel_b, grid, delta=delta, level=level)
    up, lo, p_lo_arr, q_up_arr, p_arr, q_arr = eps_bounds_at(ev_a, ev_b, [t], delta=delta, level=level)
    value = float(up[0] if tail == "upper" else lo[0])
    p_hat, q_hat, p_lo, q_up = float(p_arr[0]), float(q_arr[0]), float(p_lo_arr[0]), float(q_up_arr[0])
    return value, t, tail, p_hat, q_hat, p_lo, q_up, ev_a.size, ev_b.size, 1


def eps_lower_bound(
    scores_a: Sequence[float] | np.ndarray,
    scores_b: Sequence[float] | np.ndarray,
    *,
    delta: float,
    confidence: float = 0.95,
    select: str = "holdout",
    thresholds: Sequence[float] | np.ndarray | None = None,
    holdout_fraction: float = 0.5,
) -> EpsilonBound:
    """A lower bound on ε from i.i.d. scores of runs from two inputs, valid at ``confidence``.

    ``scores_a`` should tend to be *larger* than ``scores_b`` (orient the score before calling:
    only the upper tail of a against b and the lower tail of b against a are tested, as in the audit
    game, where the score is the projection on ``x_a − x_b``).

    Args:
        scores_a, scores_b: scores of independent runs from start a and from start b.
        delta: the δ of the claimed guarantee, subtracted before taking the ratio.
        confidence: ``1 − α``; see the module docstring for the exact statement.
        select: ``"holdout"``: pick the threshold and tail that maximise the bound on the first
            ``holdout_fraction`` of each sample (runs are i.i.d., so a fixed split is as good as a
            random one) and evaluate only that test on the rest, each CP bound at ``1 − α/2``.
            ``"bonferroni"``: ``thresholds`` is a grid fixed before the runs (``K`` values); all
            ``2K`` CP bounds are taken at ``1 − α/(2K)`` and the best test is reported.
        thresholds: the grid for ``"bonferroni"`` (required there); for ``"holdout"``, optional
            candidates (default: every split of the selection part's pooled scores).
        holdout_fraction: share of each sample used for selection, in (0, 1).

    Returns:
        An :class:`EpsilonBound`; ``eps_lower`` is clamped at 0 (no evidence is not negative ε).

    Raises:
        InvalidParameterError: bad confidence, δ, selection rule, grid or sample sizes.
    """
    confidence = _check_confidence(confidence)
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not 0 <= delta < 1:
        raise InvalidParameterError("delta", delta, "a number in [0, 1)")
    a = np.asarray(scores_a, dtype=np.float64).ravel()
    b = np.asarray(scores_b, dtype=np.float64).ravel()
    for name, s in (("scores_a", a), ("scores_b", b)):
        _check_scores(name, s)
    alpha = 1.0 - confidence
    if select == "bonferroni":
        value, t, tail, p_hat, q_hat, p_lo, q_up, n_a, n_b, n_tests = _bonferroni(a, b, thresholds, delta, alpha)
    elif select == "holdout":
        value, t, tail, p_hat, q_hat, p_lo, q_up, n_a, n_b, n_tests = _holdout(
            a, b, thresholds, delta, alpha, holdout_fraction)
    else:
        raise InvalidParameterError("select", select, f"one of {', '.join(map(repr, SELECTIONS))}")
    eps_hat = max(0.0, value)  # −inf (no usable test) and negative values both mean "no evidence"
    return EpsilonBound(eps_lower=eps_hat, confidence=confidence, delta=float(delta), threshold=t, tail=tail,
                        p_hat=p_hat, q_hat=q_hat, p_lower=p_lo, q_upper=q_up, n_a=int(n_a), n_b=int(n_b),
                        n_tests=n_tests, selection=select)
