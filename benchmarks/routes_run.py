"""The deletion routes of docs/choosing.md, each run end to end on one seed and forget set.

Every route ends in a certificate checked by :func:`certun.verify` against the released model (its
state dict): the noisy routes through ``certun.unlearn`` with their fine-tuning inside the call (so the
certificate covers the released model), retraining through ``variant="retrain"`` (from a fresh
initialisation, or from public weights with ``center=``), SISA through :meth:`Sisa.certify`.

Compute is counted in per-sample gradient evaluations (:mod:`repro_train`) and process CPU seconds of
the call that serves the request (certificate included). The accuracy after each epoch comes from a
replay that is never released: the same starting point and data order, trained here with the same
plain-SGD loop, compared with the released model (``replay_diff``, max |Δ| over the parameters).
"""

from __future__ import annotations

import copy
import hashlib
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from repro_data import Split, forget_mask
from repro_experiments import Bench
from repro_methods import NoisyConfig, make_schedule
from repro_models import make_model
from repro_train import accuracy, train_curve
from torch import nn
from torch.nn import functional as F  # noqa: N812 (the conventional name)

import certun
from certun.backends.sisa import Sisa, SisaConfig

__all__ = ["DELTA", "EPS", "NOISY", "Case", "RouteResult", "fit_sisa", "make_case", "noisy_route", "public_model",
           "retrain_route", "sisa_route", "verified"]

#: The (ε, δ) target of every certificate (the exact routes achieve (0, 0) within it).
EPS, DELTA = 1.0, 1e-5
#: The noisy routes' method keys (repro_methods) and their radius C0 in units of the fresh-init norm: the
#: ε = 1 choices of docs/results.md's validation tuning (T = 1 noisy step, C1 = 1, γ = 0.05).
NOISY = {"gc": "gradient clipping", "mc": "model clipping", "op": "output perturbation"}
C0_FACTOR = 4.0


@dataclass(frozen=True)
class Case:
    """One seed and forget set: the retain split and the records' identifiers (positions in train)."""

    bench: Bench
    seed: int
    scenario: str
    retain: Split
    retain_ids: list[int]
    forget_ids: list[int]

    def ids(self) -> dict[str, list[int]]:
        """The identifier options of ``certun.unlearn``: one per retain record, and the forget set."""
        return {"retain_ids": self.retain_ids, "forget_ids": self.forget_ids}


@dataclass
class RouteResult:
    """What serving one request by one route cost and gave, and whether its certificate verified."""

    route: str
    scenario: str
    seed: int
    eps: float
    delta: float
    grads: int
    cpu_s: float
    n_retain: int
    acc_final: float
    verified: bool
    acc_start: float | None = None
    curve_grads: list[int] = field(default_factory=list)
    curve_acc: list[float] = field(default_factory=list)
    replay_diff: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def make_case(bench: Bench, seed: int, scenario: str) -> Case:
    """``random10``: a random 10 % of train (docs/results.md's forget set); ``one``: a single random record."""
    train = bench.splits.train
    fraction = 0.1 if scenario == "random10" else 1.0 / len(train)
    mask, _ = forget_mask(train.y, "random10", seed, fraction=fraction)
    return Case(bench, seed, scenario, train.subset(~mask), [int(i) for i in np.flatnonzero(~mask)],
                [int(i) for i in np.flatnonzero(mask)])


def verified(certificate: dict[str, Any] | None, model: nn.Module) -> bool:
    """Whether ``certificate`` verifies against ``model``'s state dict within the (ε, δ) target."""
    if certificate is None:
        return False
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return certun.verify(certificate, model=state, max_eps=EPS, max_delta=DELTA).ok


def _test_acc(bench: Bench):
    return lambda model: {"test": accuracy(model, bench.splits.test)}


def _max_abs_diff(a: nn.Module, b: nn.Module) -> float:
    with torch.no_grad():
        return max(float((p - q).abs().max()) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def _result(case: Case, route: str, released: Any, cpu: float, grads: int, curve: Any, replay: nn.Module,
            schedule: Any) -> RouteResult:
    model = released.model
    return RouteResult(route=route, scenario=case.scenario, seed=case.seed, eps=schedule.achieved.eps,
                       delta=schedule.achieved.delta, grads=grads, cpu_s=cpu, n_retain=len(case.retain),
                       acc_final=accuracy(model, case.bench.splits.test),
                       verified=verified(released.certificate, model), acc_start=curve.acc[0]["test"],
                       curve_grads=curve.grads, curve_acc=[a["test"] for a in curve.acc],
                       replay_diff=_max_abs_diff(replay, model))


def noisy_route(case: Case, method: str) -> RouteResult:
    """Noisy phase at (EPS, DELTA) from the trained model, projection onto the C0 ball, then the fine-tuning
    budget of retraining, all inside one ``certun.unlearn`` call; the replay gives the accuracy per epoch."""
    b, s = case.bench, case.bench.settings
    cfg = NoisyConfig(method, EPS, DELTA, C0=C0_FACTOR * b.init_norm, T=0 if method == "op" else 1, C1=s.C1,
                      gamma=s.gamma)
    schedule = make_schedule(cfg)
    common = dict(loss_fn=F.cross_entropy, clip=cfg.clip, postprocess="project_C0", finetune_lr=b.lr,
                  progress=False, device=s.device, **case.ids())
    original = b.original(case.seed)
    start = time.process_time()
    released = certun.unlearn(original, b.loader(case.retain, case.seed), schedule, backend="torch",
                              finetune_epochs=s.epochs, **common)
    cpu = time.process_time() - start
    noisy_grads = schedule.T * s.batch_size  # one batch per noisy step (T = 1 here, smaller than |retain|)
    replay_loader = b.loader(case.retain, case.seed)
    replay = certun.get_backend("torch").unlearn(original, replay_loader, schedule, finetune_epochs=0,
                                                 seed=released.seed_opening, **common).model
    curve = train_curve(replay, replay_loader, epochs=s.epochs, lr=b.lr, eval_fn=_test_acc(b), start_grads=noisy_grads)
    return _result(case, NOISY[method], released, cpu, noisy_grads + s.epochs * len(case.retain), curve, replay,
                   schedule)


def public_model(bench: Bench, seed: int) -> nn.Module:
    """Weights pretrained on the public split (disjoint from train, validation and test), same SGD budget."""
    model = bench.fresh(20_000 + seed)
    train_curve(model, bench.loader(bench.splits.public, seed), epochs=bench.settings.epochs, lr=bench.lr,
                eval_fn=lambda m: {})
    return model


def retrain_route(case: Case, start: nn.Module, *, public: bool) -> RouteResult:
    """Exact retraining on the retain data with retraining's budget, from ``start``: a fresh initialisation
    (``model_factory=``) or the public weights (``center=``); ``variant="retrain"`` issues the certificate."""
    b, s = case.bench, case.bench.settings
    schedule = certun.plan(EPS, DELTA, variant="retrain")
    where = ({"center": {n: p.detach().clone() for n, p in start.named_parameters()}} if public
             else {"model_factory": lambda: copy.deepcopy(start)})
    begin = time.process_time()
    released = certun.unlearn(b.original(case.seed), b.loader(case.retain, case.seed), schedule, backend="torch",
                              loss_fn=F.cross_entropy, finetune_epochs=s.epochs, finetune_lr=b.lr, progress=False,
                              device=s.device, **case.ids(), **where)
    cpu = time.process_time() - begin
    replay = copy.deepcopy(start)
    curve = train_curve(replay, b.loader(case.retain, case.seed), epochs=s.epochs, lr=b.lr, eval_fn=_test_acc(b))
    route = "retrain from public weights" if public else "retrain from scratch"
    return _result(case, route, released, cpu, s.epochs * len(case.retain), curve, replay, schedule)


def fit_sisa(bench: Bench, seed: int, shards: int, slices: int) -> tuple[Sisa, float]:
    """A SISA ensemble of the same MLP trained on train with the same plain SGD (no momentum, same lr and
    batch), each stage ``epochs`` epochs (cumulative stages); the ensemble and its training CPU seconds."""
    s, splits = bench.settings, bench.splits

    def factory() -> nn.Module:
        # Sisa seeds torch with its per-shard key first: each shard gets its own reproducible initialisation
        return make_model(s.arch, splits.input_shape, splits.n_classes, seed=int(torch.randint(0, 2**62, ())))

    config = SisaConfig(shards=shards, slices=slices, epochs_per_stage=s.epochs, lr=bench.lr, momentum=0.0,
                        batch_size=s.batch_size)
    salt = hashlib.sha256(f"benchmarks/routes.py salt {seed}".encode()).digest()  # fixed: runs reproduce
    sisa = Sisa(factory, config, salt=salt, seed=seed, device=s.device)
    train = splits.train
    start = time.process_time()
    sisa.fit(torch.from_numpy(train.x), torch.from_numpy(train.y), list(range(len(train))))
    return sisa, time.process_time() - start


def sisa_route(case: Case, trained: Sisa) -> RouteResult:
    """Serve the request on a copy of the trained ensemble: unlearn, certify, verify."""
    sisa = copy.deepcopy(trained)
    start = time.process_time()
    report = sisa.unlearn(case.forget_ids)
    issued = sisa.certify(report, case.forget_ids, eps=EPS, delta=DELTA)
    cpu = time.process_time() - start
    schedule = certun.plan(EPS, DELTA, variant="retrain")
    ensemble = sisa.ensemble
    return RouteResult(route="SISA", scenario=case.scenario, seed=case.seed, eps=schedule.achieved.eps,
                       delta=schedule.achieved.delta, grads=report.gradient_evaluations, cpu_s=cpu,
                       n_retain=len(case.retain), acc_final=accuracy(ensemble, case.bench.splits.test),
                       verified=verified(issued.certificate, ensemble),
                       extra={"retrained_shards": len(report.retrained_shards),
                              "full_sisa_grads": report.full_retraining_evaluations})
