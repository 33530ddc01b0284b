"""The exact routes of ``certun demo``: retraining from public weights, and SISA.

Both end like the noisy route (:mod:`certun.demo.run`) in ``unlearned.pt``, ``certificate.json``
(claim variant ``retrain``, achieved (ε, δ) = (0, 0): the released model is what training without the
forget set gives, docs/theory.md#exact-routes), ``report.md`` and ``report.png``, and a verification:

* ``retrain-public``: pretrain on the public split (disjoint from D), train the original on D from
  there, then ``certun.unlearn(..., variant="retrain", center=<public weights>)`` retrains on the
  retain data from the public weights (docs/theory.md#retrain);
* ``sisa``: a :class:`certun.backends.sisa.Sisa` ensemble trained on D serves the forget set by
  retraining only the shards that held it, and reports the gradient evaluations it spent against a
  full retraining.
"""

from __future__ import annotations

import dataclasses
import io
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from certun.demo.config import DemoConfig
from certun.errors import UnlearningRunError

__all__ = ["run_exact_route"]


def run_exact_route(config: DemoConfig, out_dir: str | Path, *, progress: bool = True,
                    echo: Callable[[str], None] = print) -> Any:
    """Run ``config.route`` (``"retrain-public"`` or ``"sisa"``) end to end; a :class:`certun.demo.DemoResult`.

    The output folder is checked before any data is read, as on the noisy route. ``unlearned.pt`` is
    written before ``certificate.json``, so a failed run never leaves a certificate without its model.
    """
    from certun.accountant import plan
    from certun.demo.run import _load, _resolve_device, _Scorer, prepare_out_dir

    started = time.perf_counter()
    device = _resolve_device(config.device)
    out = prepare_out_dir(out_dir)
    # the public split is loaded (and announced as used) only by retrain-public
    load_config = dataclasses.replace(config, route="noisy",
                                      center="public" if config.route == "retrain-public" else "zero")
    data, splits, test_x, test_y = _load(load_config, device, echo)
    scorer = _Scorer(data, splits, test_x, test_y, device)
    schedule = plan(config.eps, config.delta, None, None, 0.0, variant="retrain")
    run = _ROUTES[config.route](config, load_config, data, splits, scorer, out, progress, echo)
    return _finish(config, out, data, schedule, run, started, echo)


def _retrain_public(config: DemoConfig, load_config: DemoConfig, data: Any, splits: Any, scorer: Any, out: Path,
                    progress: bool, echo: Callable[[str], None]) -> dict[str, Any]:
    """Public pretraining, the original on D, then exact retraining on the retain data from the public weights."""
    from torch.nn.functional import cross_entropy

    import certun
    from certun.demo.run import _retain_loader, _train_original

    original, center_state, center_label, _ = _train_original(load_config, data, splits, scorer, echo)
    phases = [scorer.phase(original, label="original (trained on D from the public weights)", kind="original")]
    private = {"original model forget-set accuracy": scorer.accuracy(original, "forget")}
    schedule = certun.plan(config.eps, config.delta, None, None, 0.0, variant="retrain")
    model_path, cert_path = out / "unlearned.pt", out / "certificate.json"
    t0 = time.perf_counter()
    released = certun.unlearn(original, _retain_loader(config, data, splits), schedule, backend="torch",
                              center=center_state, finetune_epochs=config.finetune_epochs,
                              finetune_lr=config.finetune_lr, loss_fn=cross_entropy, device=scorer.device,
                              progress=progress, forget_ids=splits.forget.tolist())
    if released.certificate is None:
        raise UnlearningRunError("no certificate was issued for the retraining; nothing was written")
    _save_state(released.model, model_path)
    _write_certificate(released.certificate, cert_path)
    seconds = time.perf_counter() - t0
    echo(f"retrained from the public weights in {seconds:.1f} s ({config.finetune_epochs} epochs on the retain "
         f"data); wrote {model_path} and {cert_path}")
    phases.append(scorer.phase(released.model, label="retrained from the public weights (released)",
                               kind="retrain"))
    facts = [("centre of the balls", center_label),
             ("retraining", f"{config.finetune_epochs} epochs of SGD (lr {config.finetune_lr:g}) on the retain "
              "data, from the public weights")]
    return {"phases": phases, "private": private, "facts": facts, "model": model_path, "certificate": cert_path,
            "loss": released.history.get("ft_loss", []), "loss_label": "retraining from the public weights",
            "notes": []}


def _sisa(config: DemoConfig, load_config: DemoConfig, data: Any, splits: Any, scorer: Any, out: Path,
          progress: bool, echo: Callable[[str], None]) -> dict[str, Any]:
    """A SISA ensemble on D; the forget set served by retraining only the shards that held it."""
    import torch

    from certun.backends.sisa import Sisa, SisaConfig
    from certun.demo.models import build_model

    def factory() -> Any:
        # Sisa seeds torch with its per-shard key before calling this: draw the init seed from it, so
        # the shards start from different, reproducible initialisations
        return build_model(config.model, data.input_shape, data.num_classes,
                           seed=int(torch.randint(0, 2**62, ())))

    sisa_config = SisaConfig(shards=config.shards, slices=config.slices, lr=config.train_lr,
                             batch_size=config.batch_size, epochs_per_stage=config.train_epochs)
    train = torch.from_numpy(splits.train)
    x, y = torch.from_numpy(data.pool_x)[train], torch.from_numpy(data.pool_y)[train]
    sisa = Sisa(factory, sisa_config, seed=config.seed, device=scorer.device)  # the salt is fresh from the OS
    echo(f"SISA: training {config.shards} shards x {config.slices} slices on D ({len(train)} records)")
    sisa.fit(x, y, splits.train.tolist())
    trained_cost = sisa.gradient_evaluations
    phases = [scorer.phase(sisa.ensemble, label="SISA ensemble (trained on D)", kind="original")]
    private = {"original model forget-set accuracy": scorer.accuracy(sisa.ensemble, "forget")}
    forget_ids = splits.forget.tolist()
    model_path, cert_path = out / "unlearned.pt", out / "certificate.json"
    t0 = time.perf_counter()
    report = sisa.unlearn(forget_ids)
    _save_state(sisa.ensemble, model_path)
    sisa.certify(report, forget_ids, eps=config.eps, delta=config.delta, certificate_path=cert_path)
    seconds = time.perf_counter() - t0
    cost = (f"{report.gradient_evaluations} sample gradients against {report.full_retraining_evaluations} for a "
            f"full retraining ({report.cost_ratio:.0%}); {len(report.retrained_shards)} of {config.shards} shards "
            "retrained")
    echo(f"SISA deletion of {report.forgotten} records in {seconds:.1f} s: {cost}; wrote {model_path} and "
         f"{cert_path}")
    phases.append(scorer.phase(sisa.ensemble, label="SISA after the deletion (released)", kind="retrain"))
    facts = [("SISA", f"{config.shards} shards x {config.slices} slices, cumulative stages, "
              f"{sisa_config.epochs_per_stage} epochs per stage (lr {config.train_lr:g}); training on D cost "
              f"{trained_cost} sample gradients"),
             ("deletion cost", cost)]
    notes = [f"The deletion spent {report.gradient_evaluations} sample gradients, "
             f"{report.cost_ratio:.0%} of the {report.full_retraining_evaluations} a full SISA retraining on the "
             "retain data would spend; the result is bit-identical to that retraining (same salt and seed)."]
    if len(report.retrained_shards) == config.shards:
        notes.append("This forget set touched every shard, so SISA saved only the stages before each shard's "
                     "earliest deleted slice: it pays off for deletions that touch few shards.")
    return {"phases": phases, "private": private, "facts": facts, "model": model_path, "certificate": cert_path,
            "loss": [], "loss_label": "", "notes": notes, "sisa": report}


_ROUTES: dict[str, Callable[..., dict[str, Any]]] = {"retrain-public": _retrain_public, "sisa": _sisa}


def _save_state(model: Any, path: Path) -> None:
    """Write ``model``'s state dict (CPU tensors) atomically to ``path``."""
    import torch

    from certun.demo.run_report import atomic_write_bytes

    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def _write_certificate(certificate: dict[str, Any], path: Path) -> None:
    from certun.certificates import write_certificate

    write_certificate(certificate, path)


def _finish(config: DemoConfig, out: Path, data: Any, schedule: Any, run: dict[str, Any], started: float,
            echo: Callable[[str], None]) -> Any:
    """Verify the certificate against ``unlearned.pt``, write the report, print the summary; the result."""
    from certun.certificates import verify
    from certun.demo.run import OUTPUTS, DemoResult
    from certun.demo.run_report import phase_table, write_report

    report = verify(run["certificate"], model=run["model"], max_eps=config.eps, max_delta=config.delta)
    seconds = time.perf_counter() - started
    guarantee = (f"exact unlearning: achieved (eps, delta) = ({schedule.achieved.eps:g}, "
                 f"{schedule.achieved.delta:g}), within the target ({config.eps:g}, {config.delta:g})")
    facts = [("route", config.route), ("guarantee", guarantee), ("data", data.source), *run["facts"]]
    notes = [f"Route {config.route} is exact: the released model is what training without the forget set gives, "
             "so the certificate's (0, 0) holds with no noise (docs/theory.md#exact-routes).", *run["notes"]]
    title = f"certun demo: {data.name}, {config.model.upper()}, route {config.route}"
    md, png = write_report(out, title=title, phases=run["phases"], facts=facts, verification=str(report),
                           notes=notes, retrain_loss=run["loss"], retrain_label=run["loss_label"])
    echo("")
    echo(phase_table(run["phases"]))
    echo("")
    echo(str(report))
    echo(f"\nroute {config.route}: certificate {'verifies' if report.ok else 'DOES NOT verify'}: {guarantee}; "
         f"files in {out}: {', '.join(OUTPUTS)} ({seconds:.0f} s in all)")
    files = {"model": run["model"], "certificate": run["certificate"], "report_md": md, "report_png": png}
    return DemoResult(out_dir=out, data_name=data.name, data_source=data.source, phases=tuple(run["phases"]),
                      schedule=schedule, verification=report, files=files, replay_max_abs_diff=0.0,
                      seconds=seconds, facts=tuple(facts), private=run["private"], route=config.route)
