"""The experiments of the reproduction benchmark, each returning JSON-ready rows.

- ``sigma``: accountant only: σ per ε for every method, the closed forms, and the authors' accounting.
- ``tune``: learning rate and noisy-phase hyperparameters chosen on the validation split.
- ``main``: experiments (1) and (3): every method and ε against retraining, per forget scenario, with
  accuracy after the noisy phase and after each fine-tuning epoch, and compute to a threshold.
- ``lambda``: experiment (2): the λ ablation (σ required and accuracy).
- ``postprocess``: what to do with the noisy iterate before fine-tuning.
- ``anchored``: balls centred at public pretrained weights against centre 0 and retraining.

Protocol details and their reasons are in docs/results.md.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from repro_data import Split, Splits, forget_mask, make_splits
from repro_methods import NoisyConfig, authors_sigma, make_schedule, noise_summary, run_noisy
from repro_models import init_norms, make_model, param_norm
from repro_train import Curve, evaluate, loader, train_curve
from torch import nn

from certun.accountant import plan
from certun.errors import InvalidParameterError

__all__ = ["EXPERIMENTS", "Bench", "Settings", "run_experiments"]

EXPERIMENTS = ("sigma", "tune", "main", "lambda", "postprocess", "anchored")


@dataclass(frozen=True)
class Settings:
    """One benchmark configuration (``--quick`` shrinks every size)."""

    data: str = "fashion-mnist"
    arch: str = "mlp"
    seeds: tuple[int, ...] = (0, 1, 2)
    eps_list: tuple[float, ...] = (0.1, 0.5, 1.0, 2.0, 4.0, 8.0, 10.0)
    tradeoff_eps: tuple[float, ...] = (0.1, 1.0, 10.0)
    delta: float = 1e-5
    scenarios: tuple[str, ...] = ("random10", "class")
    methods: tuple[str, ...] = ("gc", "mc", "op")
    authors_eps: tuple[float, ...] = (1.0,)
    batch_size: int = 64
    epochs: int = 20
    lr_grid: tuple[float, ...] = (0.03, 0.1, 0.3)
    tune_seed: int = 100
    tune_eps: tuple[float, ...] = (0.1, 1.0, 10.0)
    tune_ft_epochs: int = 3
    tune_tol: float = 0.01
    sweep_T: tuple[int, ...] = (1, 10, 100)
    sweep_C0f: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0)
    gamma: float = 0.05
    C1: float = 1.0
    lam_grid: tuple[float, ...] = (0.0, 1.0, 10.0, 50.0, 100.0)
    lam_eps: float = 1.0
    lam_T: int = 100
    lam_gamma: float = 0.005
    postprocess_eps: tuple[float, ...] = (1.0,)
    anchored_eps: tuple[float, ...] = (1.0, 10.0)
    anchored_C0f: tuple[float, ...] = (0.1, 1.0)
    n_train: int | None = None
    n_val: int | None = None
    n_test: int | None = None
    n_public: int = 0
    device: str = "cpu"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


def quick_settings(data: str = "digits", arch: str = "mlp") -> Settings:
    """A configuration that runs in seconds (CI smoke test): tiny data, few epochs, one seed, ε = 1."""
    small = dict(n_train=300, n_val=100, n_test=100) if data == "digits" else dict(n_train=600, n_val=200,
                                                                                    n_test=200)
    return Settings(data=data, arch=arch, seeds=(0,), eps_list=(1.0,), tradeoff_eps=(1.0,), scenarios=("random10",),
                    epochs=2, lr_grid=(0.1,), tune_eps=(1.0,), tune_ft_epochs=1, sweep_T=(1,), sweep_C0f=(1.0,),
                    lam_grid=(0.0, 10.0), lam_T=5, postprocess_eps=(1.0,), anchored_eps=(1.0,),
                    anchored_C0f=(1.0,), **small)


@dataclass
class Bench:
    """Data, models and caches shared by the experiments of one run."""

    settings: Settings
    splits: Splits = field(init=False)
    init_norm: float = field(init=False)
    init_tensor_norms: dict[str, float] = field(init=False)
    lr: float = field(init=False)
    d: int = field(init=False)
    _originals: dict[int, nn.Module] = field(default_factory=dict, init=False)
    _retrains: dict[tuple[int, str, str, float | None], Curve] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        s = self.settings
        self.splits = make_splits(s.data, n_train=s.n_train, n_val=s.n_val, n_test=s.n_test,
                                  n_public=s.n_public)
        self.init_norm, self.init_tensor_norms = init_norms(s.arch, self.splits.input_shape, self.splits.n_classes)
        self.lr = s.lr_grid[len(s.lr_grid) // 2]
        self.d = sum(p.numel() for p in self.fresh(0).parameters())

    # ---------------------------------------------------------------------------- building blocks
    def fresh(self, seed: int) -> nn.Module:
        """A freshly initialised model (seed ``1000 + seed``; seed 0 is the public norm reference)."""
        model = make_model(self.settings.arch, self.splits.input_shape, self.splits.n_classes, seed=1000 + seed)
        return model.to(self.settings.device)

    def loader(self, split: Split, seed: int) -> torch.utils.data.DataLoader:
        """Shuffled minibatches of ``split`` with the benchmark's batch size."""
        return loader(split, batch_size=self.settings.batch_size, seed=seed)

    def scenario(self, seed: int, scenario: str, train: Split | None = None) -> tuple[Split, Split, str]:
        """Retain split, forget split and a description for one seed and forget scenario."""
        train = self.splits.train if train is None else train
        mask, desc = forget_mask(train.y, scenario, seed)
        return train.subset(~mask), train.subset(mask), desc

    def eval_fn(self, retain: Split, forget: Split):
        """Accuracy on test, retain and forget (train accuracy on the forget set)."""
        parts = {"test": self.splits.test, "retain": retain, "forget": forget}
        return lambda model: evaluate(model, parts)

    def original(self, seed: int) -> nn.Module:
        """The trained model (all of train, ``epochs`` epochs, the chosen learning rate), cached per seed."""
        if seed not in self._originals:
            model = self.fresh(seed)
            train_curve(model, self.loader(self.splits.train, seed), epochs=self.settings.epochs, lr=self.lr,
                        eval_fn=lambda m: {})
            self._originals[seed] = model
        return self._originals[seed]

    def retrain(self, seed: int, scenario: str, init: str = "default", norm: float | None = None) -> Curve:
        """Retraining from scratch on the retain data (the exact baseline), cached per seed and scenario.

        ``init="default"``: PyTorch's initialisation. ``init="isotropic"``: every parameter drawn
        i.i.d. Gaussian and the whole vector scaled to ``norm`` (default the fresh-init norm), i.e. the
        starting point output perturbation with unbounded noise followed by projection onto the C0
        ball would give.
        """
        key = (seed, scenario, init, norm)
        if key not in self._retrains:
            retain, forget, _ = self.scenario(seed, scenario)
            model = self.fresh(10_000 + seed)  # an initialisation the original never had
            if init == "isotropic":
                isotropic_(model, norm or self.init_norm, seed=10_000 + seed)
            self._retrains[key] = train_curve(model, self.loader(retain, seed), epochs=self.settings.epochs,
                                              lr=self.lr, eval_fn=self.eval_fn(retain, forget))
        return self._retrains[key]

    def certified(self, model: nn.Module, retain: Split, cfg: NoisyConfig, *, seed: int, eval_fn,
                  epochs: int, center: dict[str, torch.Tensor] | None = None) -> tuple[dict[str, Any], Curve]:
        """Noisy phase on the backend, then ``epochs`` epochs of noiseless fine-tuning; info and curve."""
        data = self.loader(retain, seed)
        out, info = run_noisy(model, data, cfg, seed=seed, center=center, init_norms=self.init_tensor_norms,
                              device=self.settings.device)
        info["norm_after_noisy_phase"] = param_norm(out, center)
        curve = Curve()
        try:
            train_curve(out, data, epochs=epochs, lr=self.lr, eval_fn=eval_fn, start_grads=info["noisy_grads"],
                        start_seconds=info["unlearn_seconds"], curve=curve)
            info["diverged"] = False
        except FloatingPointError as exc:
            info["diverged"] = str(exc)
        return info, curve

    def default_config(self, method: str, eps: float) -> NoisyConfig:
        """The data-independent rule of docs/results.md: C0 = fresh-init norm, T = 1, γ, C1 fixed."""
        s = self.settings
        return NoisyConfig(method=method, eps=eps, delta=s.delta, C0=self.init_norm, T=0 if method == "op" else 1,
                           C1=s.C1, gamma=s.gamma)


def isotropic_(model: nn.Module, norm: float, *, seed: int) -> None:
    """Overwrite all parameters with one i.i.d. Gaussian vector scaled to global L2 norm ``norm``."""
    gen = torch.Generator().manual_seed(seed)
    params = list(model.parameters())
    z = torch.randn(sum(p.numel() for p in params), generator=gen, dtype=torch.float64)
    z *= norm / float(z.norm())
    with torch.no_grad():
        for p, piece in zip(params, torch.split(z, [p.numel() for p in params]), strict=True):
            p.copy_(piece.view_as(p).to(device=p.device, dtype=p.dtype))


# -------------------------------------------------------------------------------------------- sigma
def exp_sigma(bench: Bench) -> list[dict[str, Any]]:
    """σ per ε (accountant only) for the default noisy phases, in units of C0, with the closed forms."""
    s = bench.settings
    rows = []
    T_ref = max(s.sweep_T)
    for eps in sorted(set(s.eps_list) | set(s.tradeoff_eps) | set(s.authors_eps)):
        C0 = 1.0
        gc_exact = plan(eps, s.delta, C0=C0, C1=s.C1, gamma=s.gamma, T=T_ref)
        try:
            gc_closed = plan(eps, s.delta, C0=C0, C1=s.C1, gamma=s.gamma, T=T_ref, method="closed_form").sigma
        except InvalidParameterError:  # the closed form is valid only for ε ≤ ln(1/δ)/4
            gc_closed = None
        gc_authors = authors_sigma(eps, C0=C0, C1=s.C1, gamma=s.gamma, T=T_ref)
        authors_true = make_schedule(NoisyConfig("gc_authors", eps, s.delta, C0=C0, T=T_ref, C1=s.C1,
                                                 gamma=s.gamma)).achieved.eps
        mc = plan(eps, s.delta, C0=C0, C2=C0, T=T_ref, gamma=s.gamma, variant="model_clipping")
        op = plan(eps, s.delta, C0=C0, variant="output_perturbation")
        op_classic = 2 * C0 * math.sqrt(2 * math.log(1.25 / s.delta)) / eps
        rows.append({
            "eps": eps, "T": T_ref, "gc_sigma": gc_exact.sigma, "gc_sigma_closed_form": gc_closed,
            "gc_sigma_authors": gc_authors, "authors_true_eps": authors_true, "mc_sigma": mc.sigma,
            "op_sigma0": op.sigma0, "op_sigma0_classic": op_classic if eps < 1 else None,
            "gc_noise_norm_over_C0": noise_summary(gc_exact, bench.d)["noise_norm_over_C0"],
            "op_noise_norm_over_C0": noise_summary(op, bench.d)["noise_norm_over_C0"],
        })
    return rows


# --------------------------------------------------------------------------------------------- tune
def exp_tune(bench: Bench) -> dict[str, Any]:
    """Choose the learning rate and each method's (T, C0) on validation, with a seed not reported.

    Learning rate: best mean validation accuracy over the last three epochs of training from scratch
    (plain SGD's last epoch alone is too noisy). Noisy phase: mean validation accuracy over the first
    ``tune_ft_epochs`` fine-tuning epochs; among configurations within ``tune_tol`` of the best, the
    cheapest noisy phase wins, then the C0 closest to the default rule (C0 = fresh-init norm).
    """
    s = bench.settings
    seed = s.tune_seed
    lr_rows = []
    val = {"val": bench.splits.val}
    for lr in s.lr_grid:
        model = bench.fresh(seed)
        try:
            curve = train_curve(model, bench.loader(bench.splits.train, seed), epochs=s.epochs, lr=lr,
                                eval_fn=lambda m: evaluate(m, val))
            last = [a["val"] for a in curve.acc[1:][-3:]]
            lr_rows.append({"lr": lr, "val_acc": sum(last) / len(last), "val_acc_last": curve.acc[-1]["val"]})
        except FloatingPointError:
            lr_rows.append({"lr": lr, "val_acc": None, "diverged": True})
    ok = [r for r in lr_rows if r["val_acc"] is not None]
    bench.lr = max(ok, key=lambda r: r["val_acc"])["lr"]
    retain, _, _ = bench.scenario(seed, "random10")
    original = bench.original(seed)
    sweep, chosen = [], {}
    for method in s.methods:
        chosen[method] = {}
        for eps in s.tune_eps:
            cands = []
            for C0f in s.sweep_C0f:
                for T in ((0,) if method == "op" else s.sweep_T):
                    cfg = replace(bench.default_config(method, eps), C0=C0f * bench.init_norm, T=T)
                    info, curve = bench.certified(original, retain, cfg, seed=seed, epochs=s.tune_ft_epochs,
                                                  eval_fn=lambda m: evaluate(m, val))
                    scores = [a["val"] for a in curve.acc[1:]]
                    row = {"method": method, "eps": eps, "C0_factor": C0f, "T": T, "sigma": info["sigma"],
                           "sigma0": info["sigma0"], "noisy_grads": info["noisy_grads"],
                           "val_after_noise": curve.acc[0]["val"],
                           "val_mean_ft": sum(scores) / len(scores) if scores and not info["diverged"] else 0.0}
                    sweep.append(row)
                    cands.append((row, cfg))
            best = max(r["val_mean_ft"] for r, _ in cands)
            near = [(r, c) for r, c in cands if r["val_mean_ft"] >= best - s.tune_tol]
            row, cfg = min(near, key=lambda rc: (rc[0]["noisy_grads"], abs(math.log(rc[0]["C0_factor"])),
                                                 -rc[0]["val_mean_ft"]))
            row["chosen"] = True
            chosen[method][eps] = cfg
    return {"lr_rows": lr_rows, "lr": bench.lr, "sweep": sweep,
            "chosen": {m: {str(e): c.to_dict() for e, c in per.items()} for m, per in chosen.items()},
            "_configs": chosen}


def pick_config(bench: Bench, chosen: dict[str, dict[float, NoisyConfig]] | None, method: str,
                eps: float) -> NoisyConfig:
    """The tuned configuration at the nearest tuned ε (in log scale), or the default rule."""
    if not chosen or method not in chosen:
        return bench.default_config(method, eps)
    tuned = chosen[method]
    nearest = min(tuned, key=lambda e: abs(math.log(e) - math.log(eps)))
    return replace(tuned[nearest], eps=eps)


# --------------------------------------------------------------------------------------------- main
def exp_main(bench: Bench, chosen) -> dict[str, Any]:
    """Experiments (1) and (3): each method and ε against retraining from scratch, per scenario and seed."""
    s = bench.settings
    rows, retrains = [], []
    for scenario in s.scenarios:
        for seed in s.seeds:
            retain, forget, desc = bench.scenario(seed, scenario)
            rcurve = bench.retrain(seed, scenario)
            retrains.append({"scenario": scenario, "seed": seed, "forget": desc, "n_retain": len(retain),
                             "n_forget": len(forget), "curve": rcurve.to_dict()})
            iso_norm = pick_config(bench, chosen, "gc", 1.0).C0  # the radius gradient clipping projects onto
            icurve = bench.retrain(seed, scenario, init="isotropic", norm=iso_norm)
            rows.append({"scenario": scenario, "seed": seed, "forget": desc, "n_retain": len(retain),
                         "method": "retrain_isotropic", "eps": 0.0, "config": {"C0": iso_norm},
                         "info": {"sigma": None, "sigma0": None, "cos_to_original": None, "eps_true": 0.0,
                                  "noisy_grads": 0, "certificate": None},
                         "original_acc": None, "curve": icurve.to_dict()})
            original = bench.original(seed)
            orig_acc = bench.eval_fn(retain, forget)(original)
            jobs = [(m, e) for e in s.eps_list for m in s.methods]
            jobs += [("gc_authors", e) for e in s.authors_eps]
            for method, eps in jobs:
                base = "gc" if method == "gc_authors" else method
                cfg = replace(pick_config(bench, chosen, base, eps), method=method)
                info, curve = bench.certified(original, retain, cfg, seed=seed, epochs=s.epochs,
                                              eval_fn=bench.eval_fn(retain, forget))
                info.pop("schedule")
                rows.append({"scenario": scenario, "seed": seed, "forget": desc, "n_retain": len(retain),
                             "method": method, "eps": eps, "config": cfg.to_dict(), "info": info,
                             "original_acc": orig_acc, "curve": curve.to_dict()})
    return {"rows": rows, "retrain": retrains}


# ------------------------------------------------------------------------------------------- lambda
def exp_lambda(bench: Bench) -> dict[str, Any]:
    """Experiment (2): λ ∈ grid with T, γ, C0, C1 fixed: σ required (every ε) and accuracy (at ``lam_eps``)."""
    s = bench.settings
    sigma_rows = []
    for lam in s.lam_grid:
        row = {"lam": lam}
        for eps in s.eps_list:
            row[str(eps)] = plan(eps, s.delta, C0=bench.init_norm, C1=s.C1, lam=lam, gamma=s.lam_gamma,
                                 T=s.lam_T).sigma
        sigma_rows.append(row)
    acc_rows = []
    for seed in s.seeds:
        retain, forget, _ = bench.scenario(seed, "random10")
        original = bench.original(seed)
        for lam in s.lam_grid:
            cfg = NoisyConfig("gc", s.lam_eps, s.delta, C0=bench.init_norm, T=s.lam_T, C1=s.C1, gamma=s.lam_gamma,
                              lam=lam)
            info, curve = bench.certified(original, retain, cfg, seed=seed, epochs=s.epochs,
                                          eval_fn=bench.eval_fn(retain, forget))
            info.pop("schedule")
            acc_rows.append({"seed": seed, "lam": lam, "info": info, "curve": curve.to_dict()})
    return {"sigma": sigma_rows, "rows": acc_rows, "T": s.lam_T, "gamma": s.lam_gamma, "eps": s.lam_eps,
            "C0": bench.init_norm}


# -------------------------------------------------------------------------------------- postprocess
def exp_postprocess(bench: Bench, chosen) -> dict[str, Any]:
    """Fine-tuning from the raw noisy iterate vs after projecting onto C0 vs after per-tensor rescaling."""
    s = bench.settings
    rows = []
    for seed in s.seeds:
        retain, forget, _ = bench.scenario(seed, "random10")
        original = bench.original(seed)
        for eps in s.postprocess_eps:
            for pp in ("none", "project_C0", "rescale_layers"):
                cfg = replace(pick_config(bench, chosen, "gc", eps), postprocess=pp)
                info, curve = bench.certified(original, retain, cfg, seed=seed, epochs=s.epochs,
                                              eval_fn=bench.eval_fn(retain, forget))
                info.pop("schedule")
                rows.append({"seed": seed, "eps": eps, "postprocess": pp, "config": cfg.to_dict(), "info": info,
                             "curve": curve.to_dict()})
    return {"rows": rows}


# ----------------------------------------------------------------------------------------- anchored
def public_private(splits: Splits) -> tuple[Split, Split]:
    """A disjoint half of train as the public split (fixed), the other half as the private data."""
    order = np.random.default_rng(1).permutation(len(splits.train))
    half = len(order) // 2
    return splits.train.subset(np.sort(order[:half])), splits.train.subset(np.sort(order[half:]))


def exp_anchored(bench: Bench, chosen) -> dict[str, Any]:
    """Transfer: pretrain on a public half, train on the private half, unlearn anchored vs centred at 0."""
    s = bench.settings
    public, private = public_private(bench.splits)
    rows = []
    for seed in s.seeds:
        pre = bench.fresh(20_000 + seed)
        train_curve(pre, bench.loader(public, seed), epochs=s.epochs, lr=bench.lr, eval_fn=lambda m: {})
        center = {n: p.detach().clone() for n, p in pre.named_parameters()}
        original = copy.deepcopy(pre)
        train_curve(original, bench.loader(private, seed), epochs=s.epochs, lr=bench.lr, eval_fn=lambda m: {})
        retain, forget, desc = bench.scenario(seed, "random10", train=private)
        ev = bench.eval_fn(retain, forget)
        base = {"seed": seed, "forget": desc, "n_retain": len(retain),
                "public_acc": ev(pre), "original_acc": ev(original),
                "original_dist_from_center": param_norm(original, center), "center_norm": param_norm(pre)}
        for name, start in (("retrain from scratch", bench.fresh(30_000 + seed)),
                            ("retrain from public weights", copy.deepcopy(pre))):
            curve = train_curve(start, bench.loader(retain, seed), epochs=s.epochs, lr=bench.lr, eval_fn=ev)
            rows.append({**base, "method": name, "eps": None, "curve": curve.to_dict()})
        for eps in s.anchored_eps:
            zero_cfg = pick_config(bench, chosen, "gc", eps)
            info, curve = bench.certified(original, retain, zero_cfg, seed=seed, epochs=s.epochs, eval_fn=ev)
            info.pop("schedule")
            rows.append({**base, "method": "gc, centre 0", "eps": eps, "config": zero_cfg.to_dict(), "info": info,
                         "curve": curve.to_dict()})
            for C0f in s.anchored_C0f:
                cfg = replace(zero_cfg, C0=C0f * bench.init_norm)
                info, curve = bench.certified(original, retain, cfg, seed=seed, epochs=s.epochs, eval_fn=ev,
                                              center=center)
                info.pop("schedule")
                rows.append({**base, "method": f"gc, anchored, C0={C0f:g}×init", "eps": eps,
                             "config": cfg.to_dict(), "info": info, "curve": curve.to_dict()})
    return {"rows": rows, "n_public": len(public), "n_private": len(private)}


# ------------------------------------------------------------------------------------------- driver
def run_experiments(settings: Settings, experiments: tuple[str, ...], log=print) -> dict[str, Any]:
    """Run the selected experiments in dependency order; return everything as one JSON-ready dict."""
    unknown = [e for e in experiments if e not in EXPERIMENTS]
    if unknown:
        raise ValueError(f"unknown experiments {unknown}; valid: {', '.join(EXPERIMENTS)}")
    bench = Bench(settings)
    out: dict[str, Any] = {"settings": settings.to_dict(), "d": bench.d, "init_norm": bench.init_norm,
                           "n": {"train": len(bench.splits.train), "val": len(bench.splits.val),
                                 "test": len(bench.splits.test)}}
    chosen = None
    for name in EXPERIMENTS:
        if name not in experiments:
            continue
        log(f"[{settings.data}/{settings.arch}] experiment {name} ...")
        if name == "sigma":
            out["sigma"] = exp_sigma(bench)
        elif name == "tune":
            tuned = exp_tune(bench)
            chosen = tuned.pop("_configs")
            out["tune"] = tuned
        elif name == "main":
            out["main"] = exp_main(bench, chosen)
        elif name == "lambda":
            out["lambda"] = exp_lambda(bench)
        elif name == "postprocess":
            out["postprocess"] = exp_postprocess(bench, chosen)
        elif name == "anchored":
            out["anchored"] = exp_anchored(bench, chosen)
    out["lr"] = bench.lr
    return out
