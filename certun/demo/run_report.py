"""The one-page report of ``certun demo``: a text summary table, ``report.md`` and ``report.png``.

Everything here formats numbers the demo measured; nothing is computed about privacy. Files are
written atomically (temporary file in the same folder, then rename), so an interrupted run never
leaves a half-written report. The figure is drawn with matplotlib's object API (``Figure``), never
``pyplot``, so no global plotting state is touched.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from certun.errors import InvalidParameterError

__all__ = ["Phase", "atomic_write_bytes", "markdown_report", "phase_table", "plot_report", "write_report"]

_KINDS = ("original", "noisy", "finetune", "retrain")


@dataclass(frozen=True, kw_only=True)
class Phase:
    """Accuracies of one model of the demo on the retain set, the forget set and the test set.

    ``kind`` is ``"original"`` (trained on D), ``"noisy"`` (right after the noisy phase and the
    projection), ``"finetune"`` (after a noiseless fine-tuning epoch) or ``"retrain"`` (retrained
    from scratch on the retain data: the exact-unlearning baseline). ``forget`` is ``None`` (shown as
    "not reported") for the original model: its accuracy on D_f is not covered by the guarantee (a
    membership signal about D_f) and is never published.
    """

    label: str
    kind: str
    retain: float
    forget: float | None
    test: float

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise InvalidParameterError("kind", self.kind, "one of " + ", ".join(_KINDS))
        if self.forget is None and self.kind != "original":
            raise InvalidParameterError("forget", None, "an accuracy in [0, 1] (only the original model's forget "
                                        "accuracy is left out of the report)")
        for name in ("retain", "forget", "test"):
            value = getattr(self, name)
            if value is None and name == "forget":
                continue
            if not 0.0 <= value <= 1.0:
                raise InvalidParameterError(name, value, "an accuracy in [0, 1]")


def phase_table(phases: Sequence[Phase]) -> str:
    """A fixed-width text table: one row per phase, accuracies on retain / forget / test."""
    width = max([len("model"), *(len(p.label) for p in phases)])
    fw = max([7, *(len(_NOT_REPORTED) for p in phases if p.forget is None)])
    lines = [f"{'model':<{width}}  {'retain':>7}  {'forget':>{fw}}  {'test':>7}",
             f"{'-' * width}  {'-' * 7}  {'-' * fw}  {'-' * 7}"]
    lines += [f"{p.label:<{width}}  {p.retain:>7.4f}  {_forget(p):>{fw}}  {p.test:>7.4f}" for p in phases]
    return "\n".join(lines)


_NOT_REPORTED = "not reported"


def _forget(phase: Phase) -> str:
    return _NOT_REPORTED if phase.forget is None else f"{phase.forget:.4f}"


def _markdown_table(phases: Sequence[Phase]) -> str:
    rows = ["| model | retain acc. | forget acc. | test acc. |", "|---|---:|---:|---:|"]
    rows += [f"| {p.label} | {p.retain:.4f} | {_forget(p)} | {p.test:.4f} |" for p in phases]
    if any(p.forget is None for p in phases):
        rows += ["", "The original model's forget-set accuracy is not reported: it is not covered by the "
                 "guarantee (docs/theory.md#what-a-certificate-records)."]
    if any(p.kind == "original" for p in phases):
        rows += ["", "**Private:** the row of the original model holds statistics of the model trained on D, "
                 "computed before any noise. They are for the model's owner: publishing them with the "
                 "certificate is not covered by the guarantee (docs/theory.md#soundness-rules)."]
    return "\n".join(rows)


def markdown_report(*, title: str, phases: Sequence[Phase], facts: Sequence[tuple[str, str]],
                    verification: str, notes: Sequence[str], image: str | None = "report.png") -> str:
    """The report's markdown: facts about the run, the accuracy table, the figure, verification, notes."""
    parts = [f"# {title}", ""]
    if facts:
        parts += ["| | |", "|---|---|"]
        parts += [f"| {key} | {value} |" for key, value in facts]
        parts.append("")
    parts += ["## Accuracy over the phases", "", _markdown_table(phases), ""]
    if image is not None:
        parts += [f"![accuracy over the phases]({image})", ""]
    parts += ["## Certificate verification (`certun.certificates.verify`)", "", "```", verification.rstrip(), "```",
              ""]
    if notes:
        parts += ["## Reading the numbers", ""]
        parts += [f"- {note}" for note in notes]
        parts.append("")
    return "\n".join(parts)


def plot_report(phases: Sequence[Phase], *, title: str, finetune_loss: Sequence[float] = (),
                retrain_loss: Sequence[float] = (), retrain_label: str = "retraining from scratch") -> bytes:
    """PNG bytes: accuracy on retain / forget / test over the phases, and the fine-tuning losses.

    Left panel: one line per data split across the phases of the unlearned model (original, after
    the noisy phase, after each fine-tuning epoch); the retrained baseline is drawn as dashed
    horizontal lines of the same colours. Right panel (when losses are given): the training loss
    per step of the noiseless fine-tuning and of the retraining, which ran the same budget
    (``retrain_label`` names the retraining's start in the legend).
    """
    from matplotlib.figure import Figure

    path_phases = [p for p in phases if p.kind != "retrain"]
    baselines = [p for p in phases if p.kind == "retrain"]
    with_loss = bool(finetune_loss) or bool(retrain_loss)
    fig = Figure(figsize=(11.0 if with_loss else 7.0, 4.2), layout="constrained")
    axes = fig.subplots(1, 2 if with_loss else 1, squeeze=False)[0]
    ax = axes[0]
    xs = list(range(len(path_phases)))
    colours = {"retain": "tab:blue", "forget": "tab:red", "test": "tab:green"}
    for split, colour in colours.items():
        ys = [float("nan") if getattr(p, split) is None else getattr(p, split) for p in path_phases]
        ax.plot(xs, ys, marker="o", color=colour, label=f"{split} (unlearned)")
        for base in baselines:
            ax.axhline(getattr(base, split), color=colour, linestyle="--", linewidth=1,
                       label=f"{split} ({base.label})")
    ax.set_xticks(xs, [p.label for p in path_phases], rotation=25, ha="right", fontsize=8)
    ax.set_ylim(0.0, 1.0)
    ax.set_ylabel("accuracy")
    ax.set_title("accuracy over the phases", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center right", framealpha=0.9)
    if with_loss:
        lx = axes[1]
        if finetune_loss:
            lx.plot(range(1, len(finetune_loss) + 1), finetune_loss, color="tab:purple", linewidth=0.8,
                    label="fine-tuning after the noisy phase")
        if retrain_loss:
            lx.plot(range(1, len(retrain_loss) + 1), retrain_loss, color="tab:gray", linewidth=0.8,
                    label=retrain_label)
        lx.set_xlabel("SGD step on retain data")
        lx.set_ylabel("training loss (minibatch mean)")
        lx.set_title("same noiseless budget", fontsize=10)
        lx.grid(alpha=0.3)
        lx.legend(fontsize=7)
    fig.suptitle(title, fontsize=11)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a report is meant to be read
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_report(out_dir: str | os.PathLike[str], *, title: str, phases: Sequence[Phase],
                 facts: Sequence[tuple[str, str]], verification: str, notes: Sequence[str],
                 finetune_loss: Sequence[float] = (), retrain_loss: Sequence[float] = (),
                 retrain_label: str = "retraining from scratch") -> tuple[Path, Path]:
    """Write ``report.png`` and ``report.md`` into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    png = atomic_write_bytes(out / "report.png", plot_report(phases, title=title, finetune_loss=finetune_loss,
                                                             retrain_loss=retrain_loss, retrain_label=retrain_label))
    text = markdown_report(title=title, phases=phases, facts=facts, verification=verification, notes=notes,
                           image=png.name)
    md = atomic_write_bytes(out / "report.md", text.encode("utf-8"))
    return md, png
