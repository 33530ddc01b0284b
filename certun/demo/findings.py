"""What the demo's report says about a run: the facts table and the notes that explain the numbers.

Plain text from the configuration, the schedule and the measured phases; :mod:`certun.demo.run_report`
renders it. Nothing here reads the forget set or the data.
"""

from __future__ import annotations

import math
from typing import Any

from certun.demo.config import DemoConfig

__all__ = ["accumulated_noise", "facts", "noise_description", "noisy_label", "notes"]


def noise_description(schedule: Any) -> str:
    if schedule.T == 0:
        return f"sigma = {schedule.sigma0:.6g} (output noise)"
    return f"sigma = {schedule.sigma:.6g} per step"


def noisy_label(schedule: Any) -> str:
    if schedule.T == 0:
        return "after output noise + projection"
    return f"after {schedule.T} noisy steps + projection"


def accumulated_noise(schedule: Any) -> float:
    """Standard deviation per coordinate of all the noise the run adds (before any projection)."""
    if schedule.T == 0:
        return float(schedule.sigma0)
    extra = float(schedule.sigma0) ** 2 if schedule.sigma0 else 0.0
    return math.sqrt(sum(float(s) ** 2 for s in schedule.sigmas) + extra)


def facts(config: DemoConfig, data: Any, splits: Any, n_test: int, d: int, hyper: dict[str, Any], schedule: Any,
           center_label: str, device: Any, *, noise_seed_given: bool, seconds: float,
           unlearn_seconds: float) -> list[tuple[str, str]]:
    noise_label = noise_description(schedule)
    a = schedule.achieved
    facts = [
        ("data", data.source),
        ("splits", f"seed {config.seed}: train {splits.train.size} = retain {splits.retain.size} + forget "
                   f"{splits.forget.size}; validation {splits.validation.size}; test {n_test}"),
        ("forget set", f"class {config.forget_class} ({data.classes[config.forget_class]})"
         if config.forget_class is not None else f"random {config.forget_fraction:g} of train"),
        ("model", f"{config.model.upper()}, d = {d:,} unlearned parameters (all of them)"),
        ("original training", f"{config.train_epochs} epochs of SGD (lr {config.train_lr:g}, momentum 0.9, "
                              f"batch {config.batch_size}) on all of D"),
        ("variant", schedule.variant.value + (f" ({schedule.mode.value})" if schedule.mode is not None else "")),
        ("target (eps, delta)", f"({config.eps:g}, {config.delta:g})"),
        ("achieved (eps, delta)", f"({a.eps:.6g}, {a.delta:.3g})"),
        ("centre of the balls", center_label),
        ("C0", f"{hyper['C0']:g}"),
    ]
    if schedule.T:
        gc = schedule.variant.value == "gradient_clipping"
        facts += [("C1" if gc else "C2", f"{schedule.C1 if gc else schedule.C2:g}"),
                  ("lam, gamma, T", f"{hyper['lam']:g}, {hyper['gamma']:g}, {schedule.T}"),
                  ("clipping", config.clip if gc else "none (model clipping, noise after projection)")]
    facts += [
        ("noise", f"{noise_label}; accumulated std per coordinate {accumulated_noise(schedule):.4g}"),
        ("post-processing", f"projection onto the C0 ball, then {config.finetune_epochs} epochs of plain SGD "
                            f"(lr {config.finetune_lr:g}) on retain data"),
        ("noise seed", "given on the command line (reproducible; a known seed lets anyone remove the noise: demo only)"
         if noise_seed_given else "drawn from the OS's secure source; only a salted commitment is in the certificate"),
        ("device", str(device)),
        ("time", f"{seconds:.0f} s in all, of which the certified unlearning run {unlearn_seconds:.1f} s"),
    ]
    return facts


def notes(config: DemoConfig, data: Any, phases: list[Any], schedule: Any, hyper: dict[str, Any], d: int,
           replay_diff: float) -> list[str]:
    by_kind = {p.kind: p for p in phases}
    noisy, original, retrain = by_kind["noisy"], by_kind["original"], by_kind["retrain"]
    released = [p for p in phases if p.kind == "finetune"][-1]
    chance = 1.0 / data.num_classes
    notes = [
        f"Right after the noisy phase the test accuracy is {noisy.test:.3f} (chance is {chance:.2f}, the original "
        f"model had {original.test:.3f}). The noise must hide the difference between any two starting points of "
        f"the C0 ball (and the clipped steps' drift) in every direction: its accumulated standard deviation per "
        f"coordinate is {accumulated_noise(schedule):.3g}, while a model in the ball carries about C0/sqrt(d) = "
        f"{hyper['C0'] / math.sqrt(d):.3g} per coordinate (docs/theory.md#utility-limit).",
        f"The released model's accuracy comes from the noiseless fine-tuning on retain data, which is "
        f"post-processing and keeps the guarantee (docs/theory.md#definition): test {released.test:.3f} after "
        f"{config.finetune_epochs} epoch(s), against {retrain.test:.3f} for retraining with the same budget "
        f"({released.test - retrain.test:+.3f}).",
        f"Forget-set accuracy {released.forget:.3f} against retain {released.retain:.3f} and test "
        f"{released.test:.3f} (retrained: forget {retrain.forget:.3f}, test {retrain.test:.3f}). A forget "
        f"accuracy close to the test accuracy is what a model that never saw the forget set shows; the "
        f"certificate, not this number, is the guarantee. The original model's forget accuracy is not reported: "
        f"it is not covered by the guarantee.",
    ]
    if config.center == "zero":
        notes.append("The balls are centred at 0 because this demo has no public data by default. A centre "
                     "independent of D is the main utility lever (docs/theory.md#utility-limit): --center public "
                     "anchors them at "
                     "weights pretrained on a public split disjoint from D, which the noise then leaves intact.")
    notes.append("Hyperparameters (C0, C1, lam, gamma, T, the centre, the fine-tuning budget) were fixed from the "
                 "architecture and a compute budget before reading the data; none depends on the forget set "
                 "(docs/theory.md#definition; docs/tutorial.md).")
    notes.append(f"Per-epoch points were measured on a replay (same noise seed and data order, fine-tuned here); its "
                 f"last epoch differs from the released model by at most {replay_diff:.2e} per parameter. The row "
                 f"marked 'released' scores unlearned.pt itself, the model the certificate covers.")
    return notes
