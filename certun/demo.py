"""``certun demo``: train a model, delete 10% of its training data with a certificate, compare, verify.

The whole product on real data in a few minutes on a laptop CPU (GPU when present):

1. load Fashion-MNIST (Debian package ``dataset-fashion-mnist``; scikit-learn's digits otherwise) and
   split it with a seed (:mod:`certun.data`); the forget set is a random 10% of train (or one class);
2. train the *original* model on all of D for a few epochs (:func:`certun.models.fit`);
3. plan the noisy phase with :func:`certun.plan` at (ε, δ) from hyperparameters fixed in advance
   (:func:`default_hyperparameters`; they depend on the architecture, never on the data);
4. unlearn with ``get_backend("torch").unlearn``: the noisy phase, projection back onto the C0 ball,
   noiseless fine-tuning on retain data; write ``unlearned.pt`` and ``certificate.json``;
5. retrain from scratch on the retain data with the same fine-tuning budget (exact unlearning);
6. verify the certificate against ``unlearned.pt`` with :func:`certun.certificates.verify`, write
   ``report.md`` and ``report.png`` (:mod:`certun.report`) and print a summary table.

The accuracy after each fine-tuning epoch is measured on a replay: a second backend call with the
same noise seed and the same data order and no fine-tuning, then the same SGD epochs run here; its
last epoch is compared with the released model, and the difference is printed. The numbers are honest:
at ε = 1 the noisy phase erases what the model learned (docs/theory.md#utility-limit), and the utility comes from the
fine-tuning, which is post-processing on retain data (docs/theory.md#definition). See docs/tutorial.md.
"""

from __future__ import annotations

import argparse
import io
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from certun.accountant.schedule import MAX_DELTA, MAX_EPS, MAX_SCALE, MIN_DELTA, MIN_SCALE, real_number
from certun.errors import InvalidParameterError, UnlearningRunError

__all__ = ["CENTERS", "DemoConfig", "DemoResult", "default_hyperparameters", "prepare_out_dir", "register",
           "run_demo"]

VARIANTS = ("gradient_clipping", "model_clipping", "output_perturbation")
CENTERS = ("zero", "init", "public")
DEVICES = ("auto", "cpu", "cuda")
CLIPS = ("per_sample", "ghost", "batch")
#: Noisy steps of the default and the ``--quick`` run (a compute budget, fixed in advance).
DEFAULT_T, QUICK_T = 200, 20
#: ``--quick``: at most this many training records and test records.
QUICK_MAX_TRAIN, QUICK_MAX_TEST = 2000, 1000
#: Seed of the architecture-only initialisation whose norm sets C0 (a public constant).
_C0_REFERENCE_SEED = 0


@dataclass(frozen=True, kw_only=True)
class DemoConfig:
    """Everything ``certun demo`` does, fixed before any data is read.

    Hyperparameters left ``None`` (``C0``, ``T``) follow :func:`default_hyperparameters`. ``quick``
    also caps the data at :data:`QUICK_MAX_TRAIN` / :data:`QUICK_MAX_TEST` records; build it with
    :meth:`quick_defaults` to get the small epoch counts as well.
    """

    variant: str = "gradient_clipping"
    eps: float = 1.0
    delta: float = 1e-5
    forget_fraction: float = 0.1
    forget_class: int | None = None
    data: str = "auto"
    model: str = "mlp"
    center: str = "zero"
    clip: str = "per_sample"
    seed: int = 0
    noise_seed: int | None = None
    device: str = "auto"
    quick: bool = False
    C0: float | None = None
    C1: float = 1.0
    lam: float = 0.0
    T: int | None = None
    batch_size: int = 128
    train_epochs: int = 5
    train_lr: float = 0.05
    finetune_epochs: int = 3
    finetune_lr: float = 0.05
    public_epochs: int = 3

    @classmethod
    def quick_defaults(cls, **overrides: Any) -> DemoConfig:
        """The ``--quick`` configuration (CI smoke test, well under a minute on one CPU core)."""
        base = dict(quick=True, train_epochs=2, finetune_epochs=1, public_epochs=1)
        base.update(overrides)
        return cls(**base)

    def __post_init__(self) -> None:
        def choice(name: str, value: Any, valid: tuple[str, ...]) -> None:
            if value not in valid:
                raise InvalidParameterError(name, value, "one of " + ", ".join(valid))

        choice("variant", self.variant, VARIANTS)
        choice("center", self.center, CENTERS)
        choice("clip", self.clip, CLIPS)
        choice("model", self.model, ("mlp", "cnn"))
        choice("data", self.data, ("auto", "fashion-mnist", "digits"))
        if self.device not in DEVICES and not str(self.device).startswith("cuda:"):
            raise InvalidParameterError("device", self.device, "auto, cpu, cuda or cuda:N")
        # the accountant's own ranges, checked here so that a bad target fails before any training
        _in_range("eps", self.eps, 0.0, MAX_EPS, f"(0, {MAX_EPS:g}]", lower_open=True)
        _in_range("delta", self.delta, MIN_DELTA, MAX_DELTA, f"[{MIN_DELTA:g}, {MAX_DELTA:g}]")
        _in_range("C1", self.C1, MIN_SCALE, MAX_SCALE, f"[{MIN_SCALE:g}, {MAX_SCALE:g}]")
        if self.C0 is not None:
            _in_range("C0", self.C0, MIN_SCALE, MAX_SCALE, f"[{MIN_SCALE:g}, {MAX_SCALE:g}]")
        for name in ("train_lr", "finetune_lr"):
            _positive(name, getattr(self, name))
        _in_range("lam", self.lam, 0.0, MAX_SCALE, f"[0, {MAX_SCALE:g}]")
        _in_range("forget_fraction", self.forget_fraction, 0.0, 1.0, "(0, 1)", lower_open=True, upper_open=True)
        if self.forget_class is not None:
            _integer("forget_class", self.forget_class, 0)
        _integer("seed", self.seed, 0)
        if self.noise_seed is not None:
            _integer("noise_seed", self.noise_seed, 0)
            if self.noise_seed >= 2**63:
                raise InvalidParameterError("noise_seed", self.noise_seed, "in [0, 2**63)")
        if self.T is not None:
            _integer("T", self.T, 1)
            if self.variant == "output_perturbation":
                raise InvalidParameterError("T", self.T, "omitted for output_perturbation",
                                            hint="output perturbation is one noise draw, no noisy steps")
        _integer("batch_size", self.batch_size, 1)
        _integer("train_epochs", self.train_epochs, 1)
        _integer("finetune_epochs", self.finetune_epochs, 1)
        _integer("public_epochs", self.public_epochs, 1)


def _positive(name: str, value: Any) -> None:
    if not real_number(name, value, "a finite number > 0") > 0:
        raise InvalidParameterError(name, value, "a finite number > 0")


def _in_range(name: str, value: Any, lower: float, upper: float, text: str, *, lower_open: bool = False,
              upper_open: bool = False) -> None:
    """A real number (numpy scalars too) in ``text``'s interval, or a typed error quoting it."""
    x = real_number(name, value, f"a real number in {text}")
    if x < lower or x > upper or (lower_open and x == lower) or (upper_open and x == upper):
        raise InvalidParameterError(name, value, f"in {text}")


def _integer(name: str, value: Any, lower: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < lower:
        raise InvalidParameterError(name, value, f"an integer >= {lower}")


def default_hyperparameters(config: DemoConfig, reference_norm: float) -> dict[str, float | int]:
    """The demo's planning hyperparameters, chosen before training from public information only.

    * ``C0``: centred at 0, the L2 norm of a default PyTorch initialisation of the architecture
      (``reference_norm``, seed 0), rounded up: the noise then leaves, after the projection, a
      random point of the size of a fresh initialisation, a reasonable start for fine-tuning.
      Centred at a data-independent point (``init``, ``public``), a trust radius of a tenth of that
      norm: the projection keeps the centre's quality and the noise is ten times smaller.
    * ``C1 = 1`` (gradient clipping norm), ``lam = 0``, ``T = 200`` noisy steps (20 with ``--quick``).
    * ``gamma = C0 / (C1·T)``, so that ``T`` is the paper's optimal number of steps ``T* = C0/(γ C1)``
      for λ = 0 (docs/theory.md#gradient-clipping).
    * Model clipping: ``C2 = C0`` and the same γ and T. Output perturbation: only ``C0``.

    Nothing here looks at the data, let alone at the forget set (docs/theory.md#soundness-rules).
    """
    if config.C0 is not None:
        C0 = float(config.C0)
    elif config.center == "zero":
        C0 = float(math.ceil(reference_norm))
    else:
        C0 = math.ceil(reference_norm) / 10.0
    T = config.T if config.T is not None else (QUICK_T if config.quick else DEFAULT_T)
    return {"C0": C0, "C1": float(config.C1), "lam": float(config.lam), "T": int(T),
            "gamma": C0 / (float(config.C1) * T)}


def plan_schedule(config: DemoConfig, hyper: dict[str, float | int]) -> Any:
    """The :class:`~certun.Schedule` of the chosen variant at (ε, δ) (exact calibration of σ)."""
    from certun.accountant import plan

    if config.variant == "output_perturbation":
        return plan(config.eps, config.delta, hyper["C0"], variant="output_perturbation")
    if config.variant == "model_clipping":
        return plan(config.eps, config.delta, hyper["C0"], None, hyper["lam"], gamma=hyper["gamma"],
                    T=hyper["T"], variant="model_clipping", C2=hyper["C0"])
    return plan(config.eps, config.delta, hyper["C0"], hyper["C1"], hyper["lam"], gamma=hyper["gamma"],
                T=hyper["T"], variant="gradient_clipping")


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


_OUTPUTS = ("unlearned.pt", "certificate.json", "report.md", "report.png")


def prepare_out_dir(out_dir: str | Path) -> Path:
    """Create ``out_dir`` (and its parents) and remove the files an earlier demo wrote there.

    An existing folder is reused: only ``unlearned.pt``, ``certificate.json``, ``report.md`` and
    ``report.png`` (the files the demo itself writes) are replaced; anything else in it is left alone.
    A path that is an existing file, lies under a file, or cannot be written is refused with
    :class:`InvalidParameterError` before any data is read or any model trained.
    """
    out = Path(out_dir)
    valid = "a folder that can be created and written (the demo writes " + ", ".join(_OUTPUTS) + " into it)"
    if out.exists() and not out.is_dir():
        raise InvalidParameterError("out", str(out), valid, hint="it is an existing file; name a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".certun-write-probe"
        probe.write_bytes(b"")
        probe.unlink()
        for name in _OUTPUTS:
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
        from certun.models import accuracy

        x, y = self.sets[name]
        return accuracy(model, x, y, device=self.device)

    def phase(self, model: Any, *, label: str, kind: str) -> Any:
        """The model's accuracies; the original model's forget accuracy is left out (private, not covered)."""
        from certun.report import Phase

        scores = {name: self.accuracy(model, name) for name in ("retain", "test")}
        forget = None if kind == "original" else self.accuracy(model, "forget")
        return Phase(label=label, kind=kind, forget=forget, **scores)


def run_demo(config: DemoConfig, out_dir: str | Path, *, progress: bool = True,
             echo: Callable[[str], None] = print) -> DemoResult:
    """Run the whole demo (module docstring) and write its files into ``out_dir``.

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
    from certun.certificates import verify
    from certun.data import load_data, make_splits
    from certun.report import phase_table, write_report

    started = time.perf_counter()
    device = _resolve_device(config.device)
    out = prepare_out_dir(out_dir)  # before any work: a bad --out must not cost a training run

    # 1. data and splits
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
    scorer = _Scorer(data, splits, test_x, test_y, device)

    # 2. the centre and the original model; 3. the plan
    original, center_state, center_label, reference_norm = _train_original(config, data, splits, scorer, echo)
    phases = [scorer.phase(original, label="original (trained on D)", kind="original")]
    private = {"original model forget-set accuracy": scorer.accuracy(original, "forget")}
    hyper = default_hyperparameters(config, reference_norm)
    schedule = plan_schedule(config, hyper)
    steps = "" if schedule.T == 0 else f", T = {schedule.T}, gamma = {hyper['gamma']:g}"
    echo(f"plan: {schedule.variant.value} at (eps, delta) = ({config.eps:g}, {config.delta:g}): C0 = {hyper['C0']:g}"
         f"{steps}, {_noise_description(schedule)}; achieved eps = {schedule.achieved.eps:.6g}, "
         f"delta = {schedule.achieved.delta:.3g}")

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
    facts = _facts(config, data, splits, len(test_y), d, hyper, schedule, center_label, device,
                   noise_seed_given=config.noise_seed is not None, seconds=seconds,
                   unlearn_seconds=runs["seconds"])
    notes = _notes(config, data, phases, schedule, hyper, d, runs["replay_diff"])
    title = (f"certun demo: {data.name}, {config.model.upper()}, {schedule.variant.value} at "
             f"(eps, delta) = ({config.eps:g}, {config.delta:g})")
    md_path, png_path = write_report(out, title=title, phases=phases, facts=facts, verification=str(report),
                                     notes=notes, finetune_loss=runs["released"].history.get("ft_loss", []),
                                     retrain_loss=retrained.history.get("ft_loss", []))
    echo("")
    echo(phase_table(phases))
    echo("")
    echo(str(report))
    echo(f"\ncertificate {'verifies' if report.ok else 'DOES NOT verify'}: claims (eps, delta) = "
         f"({schedule.target.eps:g}, {schedule.target.delta:g}); files in {out}: {', '.join(_OUTPUTS)} "
         f"({seconds:.0f} s in all)")
    files = {"model": runs["model"], "certificate": runs["certificate"], "report_md": md_path,
             "report_png": png_path}
    return DemoResult(out_dir=out, data_name=data.name, data_source=data.source, phases=tuple(phases),
                      schedule=schedule, verification=report, files=files, replay_max_abs_diff=runs["replay_diff"],
                      seconds=seconds, facts=tuple(facts), private=private)


def _train_original(config: DemoConfig, data: Any, splits: Any, scorer: _Scorer,
                    echo: Callable[[str], None]) -> tuple[Any, Any, str, float]:
    """The centre (none, the initialisation, or public pretraining) and the original model trained on D.

    Returns ``(original model, centre state dict or None, centre description, reference norm)``; the
    reference norm is that of an initialisation with a public seed, from which C0 is set.
    """
    from certun.data import make_loader
    from certun.models import build_model, fit, parameter_norm

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
    from certun.data import make_loader

    return make_loader(data.pool_x, data.pool_y, splits.retain, batch_size=config.batch_size, shuffle=True,
                       seed=config.seed + 2)


def _unlearn(config: DemoConfig, data: Any, splits: Any, schedule: Any, original: Any, center_state: Any,
             scorer: _Scorer, out: Path, progress: bool, echo: Callable[[str], None]) -> dict[str, Any]:
    """The certified run (written to ``out``) and a replay without fine-tuning to score each epoch."""
    import torch
    from torch.nn.functional import cross_entropy

    from certun._unlearn import unlearn
    from certun.backends import get_backend
    from certun.models import sgd_epoch
    from certun.report import atomic_write_bytes

    backend = get_backend("torch")
    common = dict(loss_fn=cross_entropy, center=center_state, clip=config.clip, finetune_lr=config.finetune_lr,
                  postprocess="project_C0", device=scorer.device, progress=progress, forget_ids=splits.forget.tolist())
    model_path, cert_path = out / "unlearned.pt", out / "certificate.json"
    t0 = time.perf_counter()
    # The released run's key is fresh from the OS (256 bits) unless --noise-seed asks for a reproducible demo.
    released = unlearn(original, _retain_loader(config, data, splits), schedule, backend="torch",
                       certificate_path=cert_path, finetune_epochs=config.finetune_epochs, seed=config.noise_seed,
                       **common)
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
        sgd_epoch(curve, replay_loader, lr=config.finetune_lr, device=scorer.device)
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
    from certun.models import build_model

    def factory() -> Any:
        return build_model(config.model, data.input_shape, data.num_classes, seed=config.seed + 4)

    return get_backend("torch").unlearn(
        original, _retain_loader(config, data, splits), plan(config.eps, config.delta, variant="retrain"),
        loss_fn=cross_entropy, center=center_state, finetune_epochs=config.finetune_epochs,
        finetune_lr=config.finetune_lr, seed=noise_seed, device=device, progress=progress,
        forget_ids=splits.forget.tolist(), model_factory=factory if center_state is None else None)


def _max_abs_diff(a: Any, b: Any) -> float:
    import torch

    sa, sb = a.state_dict(), b.state_dict()
    with torch.no_grad():
        return max(float((sa[k].float() - sb[k].float().to(sa[k].device)).abs().max()) for k in sa)


def _noise_description(schedule: Any) -> str:
    if schedule.T == 0:
        return f"sigma = {schedule.sigma0:.6g} (output noise)"
    return f"sigma = {schedule.sigma:.6g} per step"


def _noisy_label(schedule: Any) -> str:
    if schedule.T == 0:
        return "after output noise + projection"
    return f"after {schedule.T} noisy steps + projection"


def _accumulated_noise(schedule: Any) -> float:
    """Standard deviation per coordinate of all the noise the run adds (before any projection)."""
    if schedule.T == 0:
        return float(schedule.sigma0)
    extra = float(schedule.sigma0) ** 2 if schedule.sigma0 else 0.0
    return math.sqrt(sum(float(s) ** 2 for s in schedule.sigmas) + extra)


def _facts(config: DemoConfig, data: Any, splits: Any, n_test: int, d: int, hyper: dict[str, Any], schedule: Any,
           center_label: str, device: Any, *, noise_seed_given: bool, seconds: float,
           unlearn_seconds: float) -> list[tuple[str, str]]:
    noise_label = _noise_description(schedule)
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
        ("noise", f"{noise_label}; accumulated std per coordinate {_accumulated_noise(schedule):.4g}"),
        ("post-processing", f"projection onto the C0 ball, then {config.finetune_epochs} epochs of plain SGD "
                            f"(lr {config.finetune_lr:g}) on retain data"),
        ("noise seed", "given on the command line (reproducible; a known seed lets anyone remove the noise: demo only)"
         if noise_seed_given else "drawn from the OS's secure source; only a salted commitment is in the certificate"),
        ("device", str(device)),
        ("time", f"{seconds:.0f} s in all, of which the certified unlearning run {unlearn_seconds:.1f} s"),
    ]
    return facts


def _notes(config: DemoConfig, data: Any, phases: list[Any], schedule: Any, hyper: dict[str, Any], d: int,
           replay_diff: float) -> list[str]:
    by_kind = {p.kind: p for p in phases}
    noisy, original, retrain = by_kind["noisy"], by_kind["original"], by_kind["retrain"]
    released = [p for p in phases if p.kind == "finetune"][-1]
    chance = 1.0 / data.num_classes
    notes = [
        f"Right after the noisy phase the test accuracy is {noisy.test:.3f} (chance is {chance:.2f}, the original "
        f"model had {original.test:.3f}). The noise must hide the difference between any two starting points of "
        f"the C0 ball (and the clipped steps' drift) in every direction: its accumulated standard deviation per "
        f"coordinate is {_accumulated_noise(schedule):.3g}, while a model in the ball carries about C0/sqrt(d) = "
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


# ------------------------------------------------------------------------------------------- CLI
def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``demo`` subcommand."""
    p = subparsers.add_parser(
        "demo",
        help="train a model on Fashion-MNIST, unlearn 10%% of its training data with a certificate, verify it",
        description="The main job end to end: train, plan at (eps, delta), unlearn with the torch backend, "
        "retrain from scratch for comparison, write unlearned.pt, certificate.json, report.md and report.png, "
        "verify the certificate and print a summary. See docs/tutorial.md.",
    )
    p.add_argument("--variant", choices=VARIANTS, default="gradient_clipping",
                   help="unlearning algorithm (default gradient_clipping)")
    p.add_argument("--eps", type=float, default=1.0, help=f"target epsilon, in (0, {MAX_EPS:g}] (default 1)")
    p.add_argument("--delta", type=float, default=1e-5,
                   help=f"target delta, in [{MIN_DELTA:g}, {MAX_DELTA:g}] (default 1e-5)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--forget-fraction", type=float, default=0.1, dest="forget_fraction",
                       help="share of the training set to forget, in (0, 1), chosen at random (default 0.1)")
    group.add_argument("--forget-class", type=int, dest="forget_class",
                       help="forget every training record of class K (a label >= 0)")
    p.add_argument("--out", default="certun-demo",
                   help="output folder (default ./certun-demo), created if missing; an existing folder is reused "
                   "and only the files the demo writes (" + ", ".join(_OUTPUTS) + ") are replaced; an existing "
                   "file or an unwritable path is refused before any work")
    p.add_argument("--quick", action="store_true", help="tiny subset and budget: a smoke test in seconds")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of splits, initialisation and data order, an integer >= 0 (default 0)")
    p.add_argument("--noise-seed", type=int, dest="noise_seed",
                   help="noise seed in [0, 2**63) (default: drawn from the OS; giving one makes the run "
                   "reproducible, demo only)")
    p.add_argument("--data", choices=("auto", "fashion-mnist", "digits"), default="auto",
                   help="auto: Fashion-MNIST if installed, else scikit-learn's digits")
    p.add_argument("--device", default="auto",
                   help="auto, cpu, cuda or cuda:N (default auto: CUDA when available)")
    p.add_argument("--model", choices=("mlp", "cnn"), default="mlp", help="small MLP (default) or CNN with GroupNorm")
    p.add_argument("--center", choices=CENTERS, default="zero",
                   help="centre of the balls: zero (default, the paper's), init (the original's initialisation), "
                   "public (weights pretrained on a public split disjoint from D)")
    p.add_argument("--clip", choices=CLIPS, default="per_sample",
                   help="gradient clipping granularity (default per_sample)")
    p.add_argument("--C0", type=float, help=f"override the starting-ball radius, in [{MIN_SCALE:g}, {MAX_SCALE:g}] "
                   "(default: see docs/tutorial.md)")
    p.add_argument("--T", type=int, help="override the number of noisy steps, an integer >= 1 (default 200; "
                   "--quick 20)")
    p.add_argument("--finetune-epochs", type=int, dest="finetune_epochs",
                   help="noiseless fine-tuning epochs, an integer >= 1, also the retraining budget (default 3; "
                   "--quick 1)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads, an integer >= 1 (default 1: these small models gain little from more, "
                   "and a busy "
                   "machine loses a lot to oversubscribed OpenMP threads)")
    p.add_argument("--no-progress", action="store_false", dest="progress", help="no progress bars")
    p.set_defaults(func=_run_cli)


def _run_cli(args: argparse.Namespace) -> int:
    """Build the configuration from the arguments, run the demo, exit 0 only if the certificate verifies."""
    options: dict[str, Any] = dict(variant=args.variant, eps=args.eps, delta=args.delta,
                                   forget_fraction=args.forget_fraction, forget_class=args.forget_class,
                                   data=args.data, model=args.model, center=args.center, clip=args.clip,
                                   seed=args.seed, noise_seed=args.noise_seed, device=args.device,
                                   C0=args.C0, T=args.T)
    if args.finetune_epochs is not None:
        options["finetune_epochs"] = args.finetune_epochs
    config = DemoConfig.quick_defaults(**options) if args.quick else DemoConfig(**options)
    if isinstance(args.threads, bool) or args.threads < 1:
        raise InvalidParameterError("threads", args.threads, "an integer >= 1")
    import torch

    torch.set_num_threads(args.threads)  # the CLI process's own setting; run_demo itself leaves it alone
    result = run_demo(config, args.out, progress=args.progress,
                      echo=lambda line: print(line, flush=True))
    return 0 if result.verification.ok else 1
