"""The worst-case-start game: chain dynamics, the controls' detection and the correct schedules' passes.

All runs are batched on CPU with fixed seeds. A correct schedule's game raises a false alarm with
probability at most 1 − confidence (1% here) by the bound's construction; the controls are detected
with a wide margin (measured ε̂ ≈ 2.1-2.4 and ≈ 3.7 against a claim of 1 at these N).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from certun.accountant import Guarantee, Schedule, guarantee, plan
from certun.audit import audit
from certun.audit.game import backend_chains, default_thresholds, play, run_chains, under_noised
from certun.audit.suite import quick_cases
from certun.errors import InvalidParameterError

torch.set_num_threads(1)

GC = plan(1.0, 1e-5, 1.0, 1.0, gamma=0.1, T=10)
MC = plan(1.0, 1e-5, 1.0, variant="model_clipping", C2=1.0, sigma=0.5)
OP = plan(1.0, 1e-5, 1.0, variant="output_perturbation")


def _starts(n: int, C0: float, d: int = 1) -> torch.Tensor:
    x = torch.zeros((2 * n, d), dtype=torch.float64)
    x[:n, 0], x[n:, 0] = C0, -C0
    return x


def _schedule(variant: str, T: int, sigma: float, gamma: float, **kw) -> Schedule:
    g = Guarantee(1.0, 1e-5)
    return Schedule(variant=variant, T=T, sigmas=(sigma,) * T, gammas=(gamma,) * T, target=g, achieved=g, **kw)


def test_gc_chains_follow_the_worst_case_drift():
    """With negligible noise a GC chain from ±C0 moves by exactly ±γC1 per step (the map ρx + γC1·sign x)."""
    s = _schedule("gradient_clipping", 7, 1e-12, 0.1, C0=1.0, C1=0.5, lam=0.3)
    x = run_chains(s, _starts(3, 1.0, d=2), generator=torch.Generator().manual_seed(0))
    expected = 1.0
    for _ in range(7):
        expected = (1 - 0.1 * 0.3) * expected + 0.1 * 0.5
    assert x[:3, 0].numpy() == pytest.approx(expected, rel=1e-4)
    assert x[3:, 0].numpy() == pytest.approx(-expected, rel=1e-4)


def test_mc_chains_jump_to_the_boundary():
    """With negligible noise an MC chain sits at ±C2 after one step (the map x ↦ C2·sign x)."""
    s = _schedule("model_clipping", 3, 1e-12, 1e-3, C0=5.0, C2=0.7)
    x = run_chains(s, _starts(2, 5.0), generator=torch.Generator().manual_seed(0))
    assert x[:, 0].numpy() == pytest.approx([0.7, 0.7, -0.7, -0.7], rel=1e-4)


def test_fresh_and_reused_noise_have_the_predicted_spread():
    """Along u, fresh noise over T steps has variance Tσ², one reused draw has T²σ² (λ = 0, no crossings)."""
    T, sigma, n = 9, 0.01, 20_000
    s = _schedule("gradient_clipping", T, sigma, 0.1, C0=1.0, C1=1.0)
    fresh = run_chains(s, _starts(n, 1.0), generator=torch.Generator().manual_seed(1))[:n, 0].numpy()
    reused = run_chains(s, _starts(n, 1.0), noise_mode="reuse_first_draw_UNSAFE",
                        generator=torch.Generator().manual_seed(1))[:n, 0].numpy()
    # standard error of a sample variance ≈ var·sqrt(2/n) ≈ 1% here; 5% is > 4 standard errors
    assert np.var(fresh) == pytest.approx(T * sigma**2, rel=0.05)
    assert np.var(reused) == pytest.approx(T**2 * sigma**2, rel=0.05)


def test_under_noised_control_has_renyi_coefficient_equal_to_the_claim():
    """The control has ε_R equal to the claimed ε and keeps the claim; its true ε is ≈ 7.08
    (docs/theory.md#authors-code)."""
    bad = under_noised(GC)
    g = guarantee(bad)
    assert g.eps_renyi == pytest.approx(1.0, rel=1e-9)
    assert g.eps == pytest.approx(7.08, abs=0.01)
    assert bad.target == GC.target
    assert bad.sigma == pytest.approx(GC.sigma * math.sqrt(guarantee(GC).eps_renyi), rel=1e-12)


def test_under_noised_refuses_model_clipping():
    """The Rényi-conversion control only exists for gradient clipping."""
    with pytest.raises(InvalidParameterError, match="gradient_clipping"):
        under_noised(MC)


@pytest.mark.parametrize("schedule", [GC, MC, OP], ids=["gc", "mc", "op"])
def test_correct_schedules_pass(schedule):
    """A correct schedule run by the real step functions is not refuted (false-alarm rate ≤ 1% per case)."""
    result = play(schedule, n_runs=20_000, confidence=0.99, seed=123)
    assert not result.detected
    assert 0.0 <= result.bound.eps_lower <= schedule.target.eps


def test_under_noised_control_is_detected():
    """σ from ε_R = ε (the authors' bug) is refuted: ε̂ > 1 at 99% confidence with 20 000 runs per start."""
    result = play(under_noised(GC), n_runs=20_000, confidence=0.99, seed=123)
    assert result.detected and result.bound.eps_lower > 1.0


def test_reused_noise_control_is_detected():
    """Model clipping with one noise draw reused at every step is refuted at 99% confidence."""
    result = play(MC, n_runs=20_000, confidence=0.99, seed=123, noise_mode="reuse_first_draw_UNSAFE")
    assert result.detected and result.bound.eps_lower > 2.0


def test_holdout_selection_also_detects_the_controls():
    """The hold-out rule reaches the same verdicts as the Bonferroni grid at 50 000 runs per start."""
    assert play(under_noised(GC), n_runs=50_000, seed=7, select="holdout").detected
    assert play(MC, n_runs=50_000, seed=7, select="holdout", noise_mode="reuse_first_draw_UNSAFE").detected
    assert not play(GC, n_runs=50_000, seed=7, select="holdout").detected


def test_same_seed_same_scores():
    """The game is reproducible from its recorded seed."""
    r1, r2 = play(GC, n_runs=500, seed=9), play(GC, n_runs=500, seed=9)
    assert np.array_equal(r1.scores_a, r2.scores_a) and r1.seed == 9


def test_default_thresholds_are_fixed_by_the_schedule():
    """The Bonferroni grid depends on the schedule only: symmetric, 64 points, covering drift plus 4σ."""
    grid = default_thresholds(GC)
    assert grid.size == 64 and grid[0] == -grid[-1]
    assert grid[-1] == pytest.approx(1.0 + 10 * 0.1 * 1.0 + 4 * math.sqrt(10) * GC.sigma)


def test_quick_audit_verdicts():
    """The quick suite passes every correct case and detects both controls (exit code 0)."""
    report = audit(n_runs=20_000, seed=0)
    assert [r.case.label for r in report.results] == [c.label for c in quick_cases()]
    assert all(r.ok for r in report.results), [(r.case.label, r.result.bound.eps_lower) for r in report.results]
    assert report.exit_code == 0


def test_game_rejects_bad_input():
    """Unknown noise modes, retraining schedules and too few runs are refused with the value."""
    with pytest.raises(InvalidParameterError, match="noise_mode"):
        play(GC, n_runs=10, seed=0, noise_mode="stale")
    with pytest.raises(InvalidParameterError, match="retrain"):
        play(plan(1.0, 1e-5, variant="retrain"), n_runs=10, seed=0)
    with pytest.raises(InvalidParameterError, match="n_runs"):
        play(GC, n_runs=1, seed=0)


MC_CLIP = plan(1.0, 1e-5, 1.0, 0.5, 0.2, variant="model_clipping", C2=1.0, sigma=0.5,
               mode="clip_noise_before_projection", sigma0=2.0)
GC_LAM = plan(1.0, 1e-5, 1.0, 1.0, 0.5, gamma=0.1, T=10)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("noise_mode", ["fresh", "reuse_first_draw_UNSAFE"])
@pytest.mark.parametrize("schedule", [GC_LAM, MC, MC_CLIP, OP], ids=["gc", "mc", "mc-clip", "op"])
def test_batched_chains_equal_real_backend_runs(schedule, noise_mode):
    """A batched chain is bit-identical to ``get_backend("torch").unlearn`` on the canary model with the same seed.

    So the fast game audits exactly the computation of a real run (Opacus per-sample gradients,
    clipping, steps, generator, noise modes), not a re-implementation. In model clipping's clipped
    mode the backend clips each sample's gradient before adding λ(x − c) and clipping again; the
    batched chain clips once, so there the comparison uses ``clip="batch"`` (one clip, as in
    docs/theory.md#model-clipping).
    """
    starts = torch.tensor([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]], dtype=torch.float64)
    clip = "batch" if schedule is MC_CLIP else "per_sample"
    from certun.backends.run_key import RunKey

    per_run: dict[bytes, dict[str, list]] = {}  # run key -> its sigma0 generator and its step generators in order
    real_generator, real_step = RunKey.generator, RunKey.step_generator

    def spy_generator(self):  # the sigma0 draw: the run key's own generator
        g = real_generator(self)
        per_run.setdefault(self.key, {"sigma0": [], "steps": []})["sigma0"].append(g)
        return g

    def spy_step(self, prefix):  # noisy step t: keyed also by the retain batches read so far
        g = real_step(self, prefix)
        per_run.setdefault(self.key, {"sigma0": [], "steps": []})["steps"].append(g)
        return g

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(RunKey, "generator", spy_generator)
        mp.setattr(RunKey, "step_generator", spy_step)
        real = backend_chains(schedule, starts, noise_mode=noise_mode, seed=5, clip=clip)
    runs = list(per_run.values())
    assert len(runs) == 2  # one key per run, never shared
    for i in range(2):
        gens = runs[i]

        def draw(k, shape, gens=gens):
            gen = gens["sigma0"][0] if k == schedule.T else gens["steps"][k]
            return gen.normal_torch(k, shape[-1]).reshape(shape)

        batched = run_chains(schedule, starts[i:i + 1], noise_mode=noise_mode, draw=draw)
        assert torch.equal(batched[0], real[i])


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_backend_runner_detects_reused_noise():
    """End to end through the real backend, 150 runs per start already refute reused noise (99% confidence)."""
    result = play(MC, n_runs=150, confidence=0.99, seed=4, runner="backend", noise_mode="reuse_first_draw_UNSAFE")
    assert result.runner == "backend" and result.detected
