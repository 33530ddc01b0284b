"""``certun demo``: train a model, delete 10% of its training data with a certificate, compare, verify.

The whole product on real data in a few minutes on a laptop CPU (GPU when present):

1. load Fashion-MNIST (Debian package ``dataset-fashion-mnist``; scikit-learn's digits otherwise) and
   split it with a seed (:mod:`certun.demo.data`); the forget set is a random 10% of train (or one class);
2. train the *original* model on all of D for a few epochs (:func:`certun.demo.models.fit`);
3. plan the noisy phase with :func:`certun.plan` at (ε, δ) from hyperparameters fixed in advance
   (:func:`default_hyperparameters`; they depend on the architecture, never on the data);
4. unlearn with ``certun.unlearn(..., backend="torch")``: the noisy phase, projection back onto the C0
   ball, noiseless fine-tuning on retain data; it issues and writes ``certificate.json``, then the demo
   writes ``unlearned.pt``;
5. retrain from scratch on the retain data with the same fine-tuning budget (exact unlearning);
6. verify the certificate against ``unlearned.pt`` with :func:`certun.certificates.verify`, write
   ``report.md`` and ``report.png`` (:mod:`certun.demo.run_report`) and print a summary table.

The accuracy after each fine-tuning epoch is measured on a replay: a second backend call with the
same noise seed and the same data order and no fine-tuning, then the same SGD epochs run here; its
last epoch is compared with the released model, and the difference is printed. The numbers are honest:
at ε = 1 the noisy phase erases what the model learned (docs/theory.md#utility-limit), and the utility comes from the
fine-tuning, which is post-processing on retain data (docs/theory.md#definition). See docs/tutorial.md.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from certun.demo import findings
from certun.demo.config import QUICK_MAX_TEST, QUICK_MAX_TRAIN, DemoConfig, default_hyperparameters, plan_schedule
from certun.demo.findings import noisy_label as _noisy_label
from certun.errors import InvalidParameterError, UnlearningRunError

__all__ = ["OUTPUTS", "DemoResult", "prepare_out_dir", "run_demo"]

#: Seed of the architecture-only initialisation whose norm sets C0 (a public constant).
_C0_REFERENCE_SEED = 0


@dataclass(frozen=True, kw_only=True)
class DemoResult:
    """What a demo run produced: the phases' accuracies, the schedule, the verification, the files."""

    out_dir: Path
    data_name: str
    data_source: str
    phases: tuple[Any, ...]
    schedule: Any
    verification: Any
    files: dict[str, Path]
    replay_max_abs_diff: float
    seconds: float
    facts: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    #: which route ran (``noisy``, ``retrain-public`` or ``sisa``; :data:`certun.demo.ROUTES`).
    route: str = "noisy"
    #: Diagnostics not covered by the guarantee (the original model's forget-set accuracy): kept here,
    #: never written to the report or printed. See :attr:`private_note`.
    private: dict[str, float] = field(default_factory=dict)

    @property
    def private_note(self) -> str:
        """What :attr:`private` is and why it stays private."""
        return ("private diagnostics: computed from the original model and the forget set, not covered by the "
                "guarantee (a membership signal about D_f); for the operator only, never publish them")


def _resolve_device(name: str) -> Any:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InvalidParameterError("device", name, "cpu or auto: CUDA is not available on this machine")
    return torch.device(name)


#: The files the demo writes into its output folder.
OUTPUTS = ("unlearned.pt", "certificate.json", "report.md", "report.png")


def prepare_out_dir(out_dir: str | Path) -> Path:
    """Create ``out_dir`` (and its parents) and remove the files an earlier demo wrote there.

    An existing folder is reused: only ``unlearned.pt``, ``certificate.json``, ``report.md`` and
    ``report.png`` (the files the demo itself writes) are replaced; anything else in it is left alone.
    A path that is an existing file, lies under a file, or cannot be written is refused with
    :class:`InvalidParameterError` before any data is read or any model trained.
    """
    out = Path(out_dir)
    valid = "a folder that can be created and written (the demo writes " + ", ".join(OUTPUTS) + " into it)"
    if out.exists() and not out.is_dir():
        raise InvalidParameterError("out", str(out), valid, hint="it is an existing file; name a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".certun-write-probe"
        probe.write_bytes(b"")
        probe.unlink()
        for name in OUTPUTS:
            target = out / name
            if target.is_dir():
                raise InvalidParameterError("out", str(out), valid,
                                            hint=f"{target} is a folder where the demo writes a file")
            target.unlink(missing_ok=True)
    except OSError as exc:
        raise InvalidParameterError("out", str(out), valid, hint=f"{exc.strerror or exc}") from None
    return out


class _Scorer:
    """Accuracy of a model on the retain set, the forget set and the test set (tensors kept once)."""

    def __init__(self, data: Any, splits: Any, test_x: Any, test_y: Any, device: Any) -> None:
        import numpy as np
        import torch

        pool_x, pool_y = torch.from_numpy(data.pool_x), torch.from_numpy(data.pool_y)
        self.sets = {
            "retain": (pool_x[torch.from_numpy(splits.retain)], pool_y[torch.from_numpy(splits.retain)]),
            "forget": (pool_x[torch.from_numpy(splits.forget)], pool_y[torch.from_numpy(splits.forget)]),
            "test": (torch.from_numpy(np.ascontiguousarray(test_x)), torch.from_numpy(np.ascontiguousarray(test_y))),
            "validation": (pool_x[torch.from_numpy(splits.validation)], pool_y[torch.from_numpy(splits.validation)]),
        }
        self.device = device

    def accuracy(self, model: Any, name: str) -> float:
        from certun.demo.models import accuracy

        x, y = self.sets[name]
        return accuracy(model, x, y, device=self.device)

    def phase(self, model: Any, *, label: str, kind: str) -> Any:
        """The model's accuracies; the original model's forget accuracy is left out (private, not covered)."""
        from certun.demo.run_report import Phase

        scores = {name: self.accuracy(model, name) for name in ("retain", "test")}
        forget = None if kind == "original" else self.accuracy(model, "forget")
        return Phase(label=label, kind=kind, forget=forget, **scores)


def run_demo(config: DemoConfig, out_dir: str | Path, *, progress: bool = True,
             echo: Callable[[str], None] = print) -> DemoResult:
    """Run the whole demo (module docstring) and write its files into ``out_dir``.

    ``config.route`` other than ``"noisy"`` runs an exact route instead (:mod:`certun.demo.routes`),
    which writes the same four files.

    Args:
        config: what to run (validated on construction).
        out_dir: created if missing (:func:`prepare_out_dir`: an existing file or an unwritable path
            is refused before any work). Earlier outputs there are removed first, so that a failed run
            leaves none behind; ``unlearned.pt``, ``certificate.json``, ``report.md`` and
            ``report.png`` are then written atomically, the certificate only after the model file.
        progress: tqdm bars of the backend.
        echo: where progress lines go (``print`` by default).

    Returns:
        A :class:`DemoResult`; ``verification.ok`` says whether the certificate verified.

    Raises:
        InvalidParameterError, DatasetFormatError, UnlearningRunError: bad options, data or run.
    """
    if config.route != "noisy":  # the exact routes live apart; the noisy route is the paper's
        from certun.demo.routes import run_exact_route

        return run_exact_route(config, out_dir, progress=progress, echo=echo)
    return _run_noisy(config, out_dir, progress=progress, echo=echo)


def _run_noisy(config: DemoConfig, out_dir: str | Path, *, progress: bool, echo: Callable[[str], None]) -> DemoResult:
    """The noisy route of the paper: train, plan, unlearn, retrain, verify, report (:func:`run_demo`)."""
    from certun.certificates import verify

    started = time.perf_counter()
    device = _resolve_device(config.device)
    out = prepare_out_dir(out_dir)  # before any work: a bad --out must not cost a training run

    # 1. data and splits
    data, splits, test_x, test_y = _load(config, device, echo)
    scorer = _Scorer(data, splits, test_x, test_y, device)

    # 2. the centre and the original model; 3. the plan
    original, center_state, center_label, reference_norm = _train_original(config, data, splits, scorer, echo)
    phases = [scorer.phase(original, label="original (trained on D)", kind="original")]
    private = {"original model forget-set accuracy": scorer.accuracy(original, "forget")}
    hyper = default_hyperparameters(config, reference_norm)
    schedule = plan_schedule(config, hyper)
    _echo_plan(config, schedule, hyper, echo)

    # 4. unlearn (released run, then the per-epoch replay); 5. retrain
    runs = _unlearn(config, data, splits, schedule, original, center_state, scorer, out, progress, echo)
    phases += runs["phases"]
    retrained = _retrain(config, data, splits, original, center_state, runs["noise_seed"], progress, device)
    start_label = "a fresh initialisation" if center_state is None else "the centre"
    phases.append(scorer.phase(retrained.model, label=f"retrained from {start_label}", kind="retrain"))

    # 6. verify and report
    report = verify(runs["certificate"], model=runs["model"], max_eps=config.eps, max_delta=config.delta)
    seconds = time.perf_counter() - started
    d = sum(p.numel() for p in original.parameters())
    facts = findings.facts(config, data, splits, len(test_y), d, hyper, schedule, center_label, device,
                           noise_seed_given=config.noise_seed is not None, seconds=seconds,
                           unlearn_seconds=runs["seconds"])
    notes = findings.notes(config, data, phases, schedule, hyper, d, runs["replay_diff"])
    files = _write_report(config, out, data.name, schedule, phases, facts, notes, report, runs, retrained, echo)
    echo(f"\ncertificate {'verifies' if report.ok else 'DOES NOT verify'}: claims (eps, delta) = "
         f"({schedule.target.eps:g}, {schedule.target.delta:g}); files in {out}: {', '.join(OUTPUTS)} "
         f"({seconds:.0f} s in all)")
    return DemoResult(out_dir=out, data_name=data.name, data_source=data.source, phases=tuple(phases),
                      schedule=schedule, verification=report, files=files, replay_max_abs_diff=runs["replay_diff"],
                      seconds=seconds, facts=tuple(facts), private=private)


def _echo_plan(config: DemoConfig, schedule: Any, hyper: Any, echo: Callable[[str], None]) -> None:
    """Announce the planned schedule (variant, target, C0, T and γ, the noise, the achieved (ε, δ)) on ``echo``."""
    steps = "" if schedule.T == 0 else f", T = {schedule.T}, gamma = {hyper['gamma']:g}"
    echo(f"plan: {schedule.variant.value} at (eps, delta) = ({config.eps:g}, {config.delta:g}): C0 = {hyper['C0']:g}"
         f"{steps}, {findings.noise_description(schedule)}; achieved eps = {schedule.achieved.eps:.6g}, "
         f"delta = {schedule.achieved.delta:.3g}")


def _load(config: DemoConfig, device: Any, echo: Callable[[str], None]) -> tuple[Any, Any, Any, Any]:
    """The data set, its seeded splits and the test arrays (capped with ``--quick``), announced on ``echo``."""
    from certun.demo.data import load_data, make_splits

    data = load_data(config.data)
    if config.forget_class is not None and config.forget_class >= data.num_classes:
        raise InvalidParameterError("forget_class", config.forget_class, f"a label in 0..{data.num_classes - 1}")
    splits = make_splits(data.pool_y, seed=config.seed, has_test=data.test_x is not None,
                         forget_fraction=config.forget_fraction, forget_class=config.forget_class,
                         max_train=QUICK_MAX_TRAIN if config.quick else None)
    if data.test_x is not None:
        test_x, test_y = data.test_x, data.test_y
    else:
        test_x, test_y = data.pool_x[splits.test], data.pool_y[splits.test]
    if config.quick:
        test_x, test_y = test_x[:QUICK_MAX_TEST], test_y[:QUICK_MAX_TEST]
    echo(f"data: {data.source}")
    echo(f"splits (seed {config.seed}): train |D| = {splits.train.size} (retain {splits.retain.size}, forget "
         f"{splits.forget.size}{'' if config.forget_class is None else f' = class {config.forget_class}'}), "
         f"validation {splits.validation.size}, public {splits.public.size}"
         f"{' (used)' if config.center == 'public' else ' (unused)'}, test {len(test_y)}; device {device}")
    return data, splits, test_x, test_y


def _write_report(config: DemoConfig, out: Path, data_name: str, schedule: Any, phases: list[Any],
                  facts: list[tuple[str, str]], notes: list[str], report: Any, runs: dict[str, Any], retrained: Any,
                  echo: Callable[[str], None]) -> dict[str, Path]:
    """Write ``report.md`` and ``report.png``, print the phase table and the verification; the files written."""
    from certun.demo.run_report import phase_table, write_report

    title = (f"certun demo: {data_name}, {config.model.upper()}, {schedule.variant.value} at "
             f"(eps, delta) = ({config.eps:g}, {config.delta:g})")
    md_path, png_path = write_report(out, title=title, phases=phases, facts=facts, verification=str(report),
                                     notes=notes, finetune_loss=runs["released"].history.get("ft_loss", []),
                                     retrain_loss=retrained.history.get("ft_loss", []))
    echo("")
    echo(phase_table(phases))
    echo("")
    echo(str(report))
    return {"model": runs["model"], "certificate": runs["certificate"], "report_md": md_path,
            "report_png": png_path}


def _train_original(config: DemoConfig, data: Any, splits: Any, scorer: _Scorer,
                    echo: Callable[[str], None]) -> tuple[Any, Any, str, float]:
    """The centre (none, the initialisation, or public pretraining) and the original model trained on D.

    Returns ``(original model, centre state dict or None, centre description, reference norm)``; the
    reference norm is that of an initialisation with a public seed, from which C0 is set.
    """
    from certun.demo.data import make_loader
    from certun.demo.models import build_model, fit, parameter_norm

    device = scorer.device
    model = build_model(config.model, data.input_shape, data.num_classes, seed=config.seed)
    reference = build_model(config.model, data.input_shape, data.num_classes, seed=_C0_REFERENCE_SEED)
    center_state, center_label = None, "0 (the paper's setting)"
    if config.center == "init":
        center_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        center_label = f"the original model's initialisation (seed {config.seed}, drawn before any data was read)"
    elif config.center == "public":
        public_loader = make_loader(data.pool_x, data.pool_y, splits.public, batch_size=config.batch_size,
                                    shuffle=True, seed=config.seed + 3)
        fit(model, public_loader, epochs=config.public_epochs, lr=config.train_lr, device=device,
            on_epoch=lambda e, loss: echo(f"public pretraining epoch {e}/{config.public_epochs}: loss {loss:.4f}"))
        center_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        center_label = (f"weights pretrained on the public split ({splits.public.size} records, disjoint from D; "
                        f"{config.public_epochs} epochs; test accuracy {scorer.accuracy(model, 'test'):.4f})")

    def log_epoch(epoch: int, loss: float) -> None:
        val = f", validation accuracy {scorer.accuracy(model, 'validation'):.4f}" if splits.validation.size else ""
        echo(f"original model epoch {epoch}/{config.train_epochs}: loss {loss:.4f}{val}")

    train_loader = make_loader(data.pool_x, data.pool_y, splits.train, batch_size=config.batch_size, shuffle=True,
                               seed=config.seed + 1)
    fit(model, train_loader, epochs=config.train_epochs, lr=config.train_lr, device=device, on_epoch=log_epoch)
    return model, center_state, center_label, parameter_norm(reference)


def _retain_loader(config: DemoConfig, data: Any, splits: Any) -> Any:
    """A fresh loader over the retain set; every call gives the same batches in the same order."""
    from certun.demo.data import make_loader

    return make_loader(data.pool_x, data.pool_y, splits.retain, batch_size=config.batch_size, shuffle=True,
                       seed=config.seed + 2)


def _unlearn(config: DemoConfig, data: Any, splits: Any, schedule: Any, original: Any, center_state: Any,
             scorer: _Scorer, out: Path, progress: bool, echo: Callable[[str], None]) -> dict[str, Any]:
    """The certified run (written to ``out``) and a replay without fine-tuning to score each epoch."""
    import torch
    from torch.nn.functional import cross_entropy

    import certun
    from certun.backends import get_backend
    from certun.demo.run_report import atomic_write_bytes

    backend = get_backend("torch")
    common = dict(loss_fn=cross_entropy, center=center_state, clip=config.clip, finetune_lr=config.finetune_lr,
                  postprocess="project_C0", device=scorer.device, progress=progress, forget_ids=splits.forget.tolist())
    model_path, cert_path = out / "unlearned.pt", out / "certificate.json"
    t0 = time.perf_counter()
    # The released run's key is fresh from the OS (256 bits) unless --noise-seed asks for a reproducible demo;
    # certun.unlearn runs the backend, issues the certificate and writes it atomically.
    released = certun.unlearn(original, _retain_loader(config, data, splits), schedule, backend=backend,
                              certificate_path=cert_path, finetune_epochs=config.finetune_epochs,
                              seed=config.noise_seed, **common)
    seconds = time.perf_counter() - t0
    if released.certificate is None:
        raise UnlearningRunError("no certificate was issued for a fresh-noise run; nothing was written")
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in released.model.state_dict().items()}, buffer)
    atomic_write_bytes(model_path, buffer.getvalue())
    echo(f"unlearned in {seconds:.1f} s ({schedule.T} noisy steps + {config.finetune_epochs} fine-tuning "
         f"epochs); wrote {model_path} and {cert_path}")

    # The replay (private, never written): the released run's own key opening, same data order, no
    # fine-tuning; then the backend's SGD epochs here, scored after each epoch.
    replay_loader = _retain_loader(config, data, splits)
    replay = backend.unlearn(original, replay_loader, schedule, finetune_epochs=0, seed=released.seed_opening,
                             **common)
    phases = [scorer.phase(replay.model, label=_noisy_label(schedule), kind="noisy")]
    curve = replay.model
    for epoch in range(1, config.finetune_epochs + 1):
        _sgd_epoch(curve, replay_loader, lr=config.finetune_lr, device=scorer.device)
        if epoch < config.finetune_epochs:
            phases.append(scorer.phase(curve, label=f"fine-tune epoch {epoch}", kind="finetune"))
    phases.append(scorer.phase(released.model, label=f"fine-tune epoch {config.finetune_epochs} (released)",
                               kind="finetune"))
    return {"released": released, "phases": phases, "model": model_path, "certificate": cert_path,
            "seconds": seconds, "noise_seed": config.noise_seed, "replay_diff": _max_abs_diff(curve, released.model)}


def _retrain(config: DemoConfig, data: Any, splits: Any, original: Any, center_state: Any, noise_seed: int | None,
             progress: bool, device: Any) -> Any:
    """Exact unlearning: retrain on the retain set, from the centre or a fresh initialisation, same budget."""
    from torch.nn.functional import cross_entropy

    from certun.accountant import plan
    from certun.backends import get_backend
    from certun.demo.models import build_model

    def factory() -> Any:
        return build_model(config.model, data.input_shape, data.num_classes, seed=config.seed + 4)

    return get_backend("torch").unlearn(
        original, _retain_loader(config, data, splits), plan(config.eps, config.delta, variant="retrain"),
        loss_fn=cross_entropy, center=center_state, finetune_epochs=config.finetune_epochs,
        finetune_lr=config.finetune_lr, seed=noise_seed, device=device, progress=progress,
        forget_ids=splits.forget.tolist(), model_factory=factory if center_state is None else None)


def _sgd_epoch(model: Any, loader: Any, *, lr: float, device: Any) -> None:
    """One epoch of the backend's noiseless fine-tuning (:func:`certun.demo.models.sgd_epoch`; imported on
    call so that importing the demo does not import torch)."""
    from certun.demo.models import sgd_epoch

    sgd_epoch(model, loader, lr=lr, device=device)


def _max_abs_diff(a: Any, b: Any) -> float:
    import torch

    sa, sb = a.state_dict(), b.state_dict()
    with torch.no_grad():
        return max(float((sa[k].float() - sb[k].float().to(sa[k].device)).abs().max()) for k in sa)
