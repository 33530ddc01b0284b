"""One run skeleton for every backend: options, provenance, the noise source, the phases, history and record.

A backend supplies only its array operations, as the methods of a :class:`Hooks` object; :func:`run`
does the rest, in the same order for every backend:

1. ``prepare``: the backend's own checks and the model it works on (:class:`Prepared`);
2. identifiers, digests, the starting-model commitment, the tail check and the run key;
3. inside ``session(key)``: ``start`` gives the float64 master ``x``; then the variant's noisy phase
   (output perturbation, or the projection, model clipping's σ0 draw and ``T`` noisy steps on retain
   batches, each step's draw keyed by the batches read so far); ``release`` rounds ``x`` into the model
   (and projects it back onto the C0 ball when asked); ``finetune``;
4. ``finish``: the released tensors and the backend's record extras; the
   :class:`~certun.certificates.RunRecord` and the :class:`~certun.backends.RunResult`.

The noise comes from one :class:`NoiseSource` (fresh from the run key, reused for audit controls, or
injected by a test hook). Nothing here issues a certificate: :func:`certun.unlearn` does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from certun.accountant import Mode, Schedule, Variant
from certun.backends import _resume
from certun.backends._options import RunOptions, opening_secret
from certun.backends.base import RunResult
from certun.backends.run_key import (
    RETAIN_PREFIX_START,
    RunKey,
    chain_batch,
    check_tail,
    draw_index,
    noise_record,
    run_context,
    run_key,
)
from certun.certificates import RunRecord, provenance
from certun.errors import UnlearningRunError

__all__ = ["HISTORY_KEYS", "Finished", "Hooks", "NoiseSource", "Prepared", "check_seed", "cycle", "mc_mode", "run"]

#: The per-step lists of a run's history (docs/backends.md).
HISTORY_KEYS = ("step", "loss", "sigma", "gamma", "grad_norm", "dist", "time_s", "ft_step", "ft_loss")


@dataclass
class Prepared:
    """What a backend's ``prepare`` hook hands the skeleton: the model it runs on and what the record needs."""

    model: Any
    names: tuple[str, ...]
    d: int
    #: name -> tensor/array of the unlearned parameters before the run, and of the centre (``None``: origin)
    before: Mapping[str, Any]
    center: Mapping[str, Any] | None
    #: the gradient clipping actually run (``None`` where the variant does not clip)
    clipping: str | None
    #: backend options that enter the noise key besides clip, postprocess and noise mode
    key_options: Mapping[str, Any]
    dtype: str
    device: str


@dataclass
class Finished:
    """What a backend's ``finish`` hook hands back: the released model, its tensors and the record's extras."""

    model: Any
    after: Mapping[str, Any]
    extra: Mapping[str, Any]
    record: Mapping[str, Any] = field(default_factory=dict)


class Hooks:
    """A backend's array operations; the skeleton calls them in the order of the module docstring.

    ``x`` is the backend's own float64 master vector (numpy array, torch tensor); ``z`` a float64
    standard-normal vector of the same shape, from :meth:`as_noise`.
    """

    name = "hooks"
    packages: tuple[str, ...] = ()
    #: whether this process writes and deletes the run's checkpoints (``False``: it only reads them)
    checkpoint_writer = True

    def prepare(self) -> Prepared:
        """Check the model and options, and set up the model the run works on."""
        raise NotImplementedError

    @contextlib.contextmanager
    def session(self, key: RunKey) -> Iterator[None]:
        """Around the phases (the torch backend seeds its auxiliary RNG from ``key`` and restores state)."""
        yield

    def identifiers(self, data: Any, retain_ids: Any, forget_ids: Any) -> provenance.Identifiers:
        """The run's retain and forget identifier trees (a distributed run builds them over every rank's)."""
        return provenance.identifiers(data, retain_ids, forget_ids)

    def check_retain_count(self, ids: provenance.Identifiers, data: Any) -> bool:
        """Refuse retain identifiers that cannot describe ``data``; whether to count samples after a pass."""
        return provenance.check_retain_count(ids, data)

    def run_key(self, seed: Any, context: bytes) -> RunKey:
        """The run's noise key (a distributed run takes rank 0's secret, broadcast to every rank)."""
        return run_key(seed, context)

    def checkpoints(self, opts: RunOptions, seed: Any, context: bytes, previous: Mapping[str, Any] | None, *,
                    versions: Mapping[str, str], device: str) -> tuple[RunKey, _resume.Resume | None]:
        """The run key and the run's checkpoints (a distributed run: this rank's, once every rank agrees)."""
        return _resume.begin(opts, seed, context, previous, writer=self.checkpoint_writer, versions=versions,
                             device=device, new_key=self.run_key)

    def start(self) -> Any:
        """The float64 master vector the noisy phase starts from (retraining re-initialises first)."""
        raise NotImplementedError

    def normal(self, generator: Any, index: int, d: int) -> Any:
        """Draw ``index`` of ``generator``: ``d`` float64 standard normals."""
        raise NotImplementedError

    def as_noise(self, z: Any, d: int) -> Any:
        """An injected draw as a float64 vector of length ``d`` (refusing another shape)."""
        raise NotImplementedError

    def project(self, x: Any) -> Any:
        """``x`` projected onto the C0 ball around the centre (in place where the backend can)."""
        raise NotImplementedError

    def add_noise(self, x: Any, sigma: float, z: Any) -> Any:
        """``x + sigma * z``."""
        raise NotImplementedError

    def output_perturbation(self, x: Any, z: Any) -> Any:
        """Output perturbation's release from ``x`` with the draw ``z``."""
        raise NotImplementedError

    def batches(self, on_pass: Callable[[int], None] | None) -> Iterator[tuple[Any, Any]]:
        """Endless ``(batch, raw)`` retain batches for the noisy steps (``raw`` keys the step's draw)."""
        raise NotImplementedError

    def progress(self, steps: range, desc: str) -> Iterable[int]:
        """``steps``, wrapped in a progress bar where the backend shows one."""
        return steps

    def noisy_steps(self) -> contextlib.AbstractContextManager[Any]:
        """Around the noisy steps (the torch backend's gradient computer lives there)."""
        return contextlib.nullcontext()

    def noisy_step(self, x: Any, t: int, batch: Any, draw: Callable[[], Any]) -> tuple[Any, tuple[Any, Any, Any]]:
        """Noisy step ``t`` on ``batch``: the gradient at ``x``, then ``draw()`` and the variant's update.

        Returns the new ``x`` (the same object when updated in place) and the step's statistics
        ``(loss, norm of the gradient term used, ‖x − c‖)``, in the backend's own scalars.
        """
        raise NotImplementedError

    def check_steps(self, stats: list[tuple[Any, Any, Any]], start: int, upto: int) -> None:
        """Refuse a non-finite statistic among steps ``start..upto-1``, naming the step (no value)."""

    def values(self, stats: list[tuple[Any, Any, Any]]) -> list[tuple[float, float, float]]:
        """The step statistics as Python floats."""
        return [(float(a), float(b), float(c)) for a, b, c in stats]

    def release(self, x: Any, *, project: bool) -> None:
        """Round the master into the model (projecting back onto the C0 ball when ``project``); refuse NaN."""
        raise NotImplementedError

    def finetune(self, history: dict[str, list[Any]], on_pass: Callable[[int], None] | None) -> int:
        """Noiseless fine-tuning on retain data (post-processing); fills ``ft_*``; returns the steps."""
        raise NotImplementedError

    def finish(self) -> Finished:
        """The released model, its unlearned tensors and the record extras (after the backend's own checks)."""
        raise NotImplementedError

    # a checkpoint (certun.backends._resume): the master on the host and back, the auxiliary RNG's state
    def to_host(self, x: Any) -> Any:
        """``x`` as a float64 numpy array on the host (what a checkpoint stores)."""
        import numpy as np

        return np.array(x, dtype=np.float64)

    def from_host(self, a: Any) -> Any:
        """A checkpoint's float64 numpy array as the backend's master vector."""
        return a.copy()

    def rng_state(self) -> bytes:
        """The state of the randomness a step uses besides the noise (dropout), for a checkpoint; none here."""
        return b""

    def set_rng_state(self, state: bytes) -> None:
        """Restore what :meth:`rng_state` returned, before the first step of a resumed run."""


class NoiseSource:
    """The run's standard-normal draws: fresh from the key, injected (``noise_source``), or reused (audit only).

    Noisy step ``t`` is draw ``t`` of the generator keyed by the retain batches read so far; the σ0
    draw is draw ``T`` of the run key's own generator (docs/theory.md#floating-point-and-randomness).
    """

    def __init__(self, hooks: Hooks, key: RunKey, schedule: Schedule, opts: RunOptions, d: int) -> None:
        self.hooks, self.key, self.schedule, self.opts, self.d = hooks, key, schedule, opts, d
        self.count = 0
        self.first: Any = None

    def draw(self, step: int | None, retain_prefix: bytes | None = None) -> Any:
        """The float64 draw of noisy step ``step`` (``None``: the σ0 draw)."""
        k, self.count = self.count, self.count + 1
        if self.opts.noise_source is not None:
            return self.hooks.as_noise(self.opts.noise_source(k, self.d), self.d)
        if self.opts.noise_mode != "fresh" and self.first is not None:
            return self.first
        z = self.hooks.normal(self._generator(step, retain_prefix), draw_index(self.schedule, step), self.d)
        if self.opts.noise_mode != "fresh":  # kept past its step: never a buffer the backend refills
            self.first = z.clone() if hasattr(z, "clone") else z.copy()
        return z

    def _generator(self, step: int | None, retain_prefix: bytes | None) -> Any:
        if step is None:
            return self.key.generator()
        return self.key.step_generator(RETAIN_PREFIX_START if retain_prefix is None else retain_prefix)


def cycle(data: Iterable[Any], pair: Callable[[Any], tuple[Any, int]],
          on_pass: Callable[[int], None] | None) -> Iterator[tuple[Any, Any]]:
    """Cycle through ``data`` pass after pass, yielding ``(pair(batch)[0], batch)`` for non-empty batches.

    Refuses empty data, tells a consumed one-shot iterator from empty data, and reports the samples
    of each completed pass to ``on_pass`` (the retain-identifier count check).
    """
    passes = 0
    while True:
        count = samples = 0
        for batch in data:
            item, size = pair(batch)
            if size == 0:
                continue
            count += 1
            samples += size
            yield item, batch
        if count == 0:
            if passes:
                raise UnlearningRunError(f"the retain data yielded no batch on pass {passes + 1}: a one-shot "
                                         "iterator or generator was consumed after one pass; pass a re-iterable "
                                         "(a DataLoader or a list of batches)")
            raise UnlearningRunError("the retain data is empty: no batch with at least one sample")
        passes += 1
        if on_pass is not None:
            on_pass(samples)


@dataclass
class _Context:
    schedule: Schedule
    opts: RunOptions
    previous: Mapping[str, Any] | None
    ids: provenance.Identifiers
    on_pass: Callable[[int], None] | None


def check_seed(seed: Any) -> None:
    """Refuse a bad seed or key opening before any work."""
    if isinstance(seed, Mapping):
        opening_secret(seed)
    elif seed is not None:
        provenance.resolve_seed(seed)


def run(hooks: Hooks, data: Any, schedule: Schedule, opts: RunOptions, *, seed: Any, previous: Any,
        retain_ids: Any, forget_ids: Any) -> RunResult:
    """Run ``hooks``' backend on ``data`` as ``schedule`` says and describe the run; see the module docstring."""
    prev = provenance.load_previous(previous)
    check_seed(seed)
    if isinstance(seed, Mapping):
        # a replay adds the noise of an earlier release again: never a second certificate
        # (docs/theory.md#soundness-rules)
        opts = dataclasses.replace(opts, replay=True)
    started = provenance.now_utc()
    prep = hooks.prepare()
    ids = hooks.identifiers(data, retain_ids, forget_ids)
    count_pass = hooks.check_retain_count(ids, data)
    ctx = _Context(schedule, opts, prev, ids, (lambda n: provenance.check_pass_count(ids, n)) if count_pass else None)
    before = provenance.model_digest(prep.before)
    center = None if prep.center is None else provenance.model_digest(prep.center)
    check_tail(schedule, prep.d)
    key, resume = hooks.checkpoints(opts, seed, run_context(
        model_before=before.root, center=None if center is None else center.root,
        retain_fingerprint=ids.retain_fingerprint, forget_fingerprint=ids.forget_fingerprint, schedule=schedule,
        options={"clip": prep.clipping, "postprocess": opts.postprocess, "noise_mode": opts.noise_mode,
                 **prep.key_options},
        unlearned_parameters=prep.names, dtype=prep.dtype, backend=hooks.name), prev,
        versions=provenance.versions(*hooks.packages), device=prep.device)
    history: dict[str, list[Any]] = {k: [] for k in HISTORY_KEYS}
    with _resume.owned(resume):  # the checkpoints go when the run ends or certun stops it; a crash keeps them
        started = started if resume is None else resume.began(started)  # a resumed run began in its first process
        with hooks.session(key):
            noisy, steps = _phases(hooks, ctx, NoiseSource(hooks, key, schedule, opts, prep.d), history, resume)
        done = hooks.finish()
    start_model = provenance.starting_model(before, prev)
    commitment, opening = provenance.key_commitment(key)
    fields: dict[str, Any] = dict(clipping=prep.clipping, extra={**done.extra, "noise_mode": opts.recorded_noise_mode})
    fields.update(done.record)
    record = RunRecord(
        backend=hooks.name, unlearned_parameters=prep.names, d=prep.d, noisy_steps=noisy,
        model_before=start_model.plain, model_before_commitment=start_model.commitment,
        model_after=provenance.model_digest(done.after), center=center, retain_root=ids.retain_root,
        forget_root=ids.forget_root, retain_count=None if ids.retain_tree is None else ids.retain_tree.size,
        forget_count=None if ids.forget_tree is None else ids.forget_tree.size, id_scheme=ids.id_scheme,
        seed_commitment=commitment,
        postprocess=opts.postprocess if schedule.variant is not Variant.RETRAIN else "none",
        finetune={"epochs": opts.finetune_epochs, "lr": opts.finetune_lr, "steps": steps}, device=prep.device,
        dtype=prep.dtype, started_at=started, finished_at=provenance.now_utc(),
        versions=provenance.versions(*hooks.packages), noise=noise_record(schedule, prep.d, key), **fields)
    return RunResult(model=done.model, history=history, record=record, seed=key.seed, seed_opening=opening,
                     retain_tree=ids.retain_tree, forget_tree=ids.forget_tree,
                     model_before_opening=start_model.opening,
                     resumed_from=None if resume is None else resume.resumed_from)


def _phases(hooks: Hooks, ctx: _Context, noise: NoiseSource, history: dict[str, list[Any]],
            resume: _resume.Resume | None) -> tuple[int, int]:
    """The variant's phases on the master ``x``; returns ``(noisy steps run, fine-tuning steps)``."""
    s, noisy = ctx.schedule, 0
    x = hooks.start()
    if s.variant is Variant.OUTPUT_PERTURBATION:
        x = hooks.output_perturbation(x, noise.draw(None))
    elif s.variant is not Variant.RETRAIN:
        x = hooks.project(x)  # global over all unlearned parameters (docs/theory.md#anchored-balls)
        noised = s.variant is Variant.MODEL_CLIPPING and s.sigma0 is not None
        if noised:
            x = hooks.add_noise(x, s.sigma0, noise.draw(None))
        x, noisy = _noisy_steps(hooks, ctx, noise, x, history, noised=noised, resume=resume)
    hooks.release(x, project=s.variant is not Variant.RETRAIN and ctx.opts.postprocess == "project_C0")
    return noisy, hooks.finetune(history, ctx.on_pass)


_CHECK_EVERY = 25  # steps between finiteness checks (each one synchronises a GPU)


def _noisy_steps(hooks: Hooks, ctx: _Context, noise: NoiseSource, x: Any, history: dict[str, list[Any]], *,
                 noised: bool, resume: _resume.Resume | None) -> tuple[Any, int]:
    """``T`` noisy steps (from a checkpoint's, when resumed); the history keeps no statistic of the pre-noise
    start (step 0 unless σ0 came first)."""
    s = ctx.schedule
    batches = hooks.batches(ctx.on_pass)
    done, running, x, times = (0, RETAIN_PREFIX_START, x, []) if resume is None else \
        resume.restore(hooks, noise, batches, x, s.T)
    stats: list[Any] = [None] * done  # the restored steps' statistics are the checkpoint's
    start, checked = time.perf_counter() - (times[-1] if times else 0.0), done
    with hooks.noisy_steps():
        for t in hooks.progress(range(done, s.T), "certun noisy steps"):
            batch, raw = next(batches)
            running = chain_batch(running, raw)  # the batches read so far key this step's draw
            x, step_stats = hooks.noisy_step(x, t, batch, lambda t=t, prefix=running: noise.draw(t, prefix))
            stats.append(step_stats)
            times.append(time.perf_counter() - start)
            if ctx.opts.callback is not None:
                # a copy: the callback can read the iterate, never change it
                ctx.opts.callback(t, x.clone() if hasattr(x, "clone") else x.copy())
            saving = resume is not None and resume.due(t + 1)
            if (t + 1) % _CHECK_EVERY == 0 or t + 1 == s.T or saving:
                hooks.check_steps(stats, checked, t + 1)
                checked = t + 1
            if saving:
                resume.save(t + 1, hooks, x, running, stats, times, noise)
    values = hooks.values(stats) if resume is None else resume.all_values(hooks, stats)
    pre = 0 if noised else min(1, s.T)
    history.update(step=list(range(s.T)), sigma=list(s.sigmas), gamma=list(s.gammas), time_s=times,
                   loss=[None] * pre + [v[0] for v in values[pre:]],
                   grad_norm=[None] * pre + [v[1] for v in values[pre:]], dist=[v[2] for v in values])
    return x, s.T


def mc_mode(schedule: Schedule) -> str:
    """Model clipping's mode as the step functions name it."""
    return (schedule.mode or Mode.NOISE_AFTER_PROJECTION).value
