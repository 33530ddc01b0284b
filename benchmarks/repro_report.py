"""Tables (markdown) and plots (PNG) from the reproduction benchmark's JSON results.

Every number is a summary of rows in ``results.json``: means over seeds with their sample standard
deviation (``±``; none with one seed). Compute is in per-sample gradient evaluations, shown as
*epoch equivalents*: gradient evaluations divided by the size of the retain set.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from repro_methods import METHODS

__all__ = ["command_line", "markdown_report", "plot_anchored", "plot_tradeoff"]


def fmt(x: Any, digits: int = 3) -> str:
    """A number for a table; ``-`` for missing values."""
    if x is None:
        return "-"
    if isinstance(x, str):
        return x
    if isinstance(x, float) and (abs(x) >= 1e4 or (0 < abs(x) < 1e-3)):
        return f"{x:.3g}"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def mean_std(values: Sequence[float | None], digits: int = 3) -> str:
    """``mean ± std`` over seeds (sample std), or ``-`` when a value is missing."""
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals or len(vals) < len(values):
        return "-" if not vals else f"{mean_std(vals, digits)} ({len(vals)}/{len(values)})"
    if len(vals) == 1:
        return f"{vals[0]:.{digits}f}"
    return f"{statistics.fmean(vals):.{digits}f} ± {statistics.stdev(vals):.{digits}f}"


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table."""
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(fmt(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def grads_to(curve: dict[str, list], key: str, threshold: float) -> int | None:
    """Gradient evaluations at the first recorded point whose ``key`` accuracy is ≥ ``threshold``."""
    for g, a in zip(curve["grads"], curve["acc"], strict=True):
        if a.get(key, -1.0) >= threshold:
            return g
    return None


def smoothed_final(curve: dict[str, list], key: str = "test", last: int = 3) -> float:
    """Mean accuracy over the last ``last`` epochs: the "final accuracy" thresholds are based on.

    Plain constant-step SGD moves the last epoch's test accuracy by a few points from epoch to epoch;
    a threshold on one epoch would measure that jitter, not the method.
    """
    values = [a[key] for a in curve["acc"][1:][-last:]] or [curve["acc"][-1][key]]
    return statistics.fmean(values)


def seconds_to(curve: dict[str, list], key: str, threshold: float) -> float | None:
    """Seconds (compute only, evaluation excluded) at the first point whose accuracy is ≥ ``threshold``."""
    for t, a in zip(curve["seconds"], curve["acc"], strict=True):
        if a.get(key, -1.0) >= threshold:
            return t
    return None


def _acc(curve: dict[str, list], i: int, key: str = "test") -> float | None:
    acc = curve["acc"]
    if -len(acc) <= i < len(acc):
        return acc[i].get(key)
    return None


def _label(method: str, eps: float | None = None) -> str:
    return METHODS.get(method, method)


# ------------------------------------------------------------------------------------------ tables
def sigma_table(rows: list[dict[str, Any]]) -> str:
    """σ per ε for C0 = 1 (σ scales linearly with C0)."""
    headers = ["ε", "GC σ exact", "GC σ closed form", "GC σ authors' accounting", "its true ε", "MC σ",
               "OP σ0 exact", "OP σ0 classic (ε<1)", "GC noise norm / C0", "OP noise norm / C0"]
    body = [[r["eps"], r["gc_sigma"], r["gc_sigma_closed_form"], r["gc_sigma_authors"], r["authors_true_eps"],
             r["mc_sigma"], r["op_sigma0"], r["op_sigma0_classic"], r["gc_noise_norm_over_C0"],
             r["op_noise_norm_over_C0"]] for r in rows]
    return md_table(headers, body)


def tune_tables(tune: dict[str, Any], *, chosen_only: bool = False) -> str:
    """Learning-rate selection and the noisy-phase sweep (validation accuracy); optionally its chosen rows only."""
    lr = md_table(["lr", "val acc, mean of last 3 epochs (from scratch)", "val acc, last epoch"],
                  [[r["lr"], r["val_acc"], r.get("val_acc_last")] for r in tune["lr_rows"]])
    sweep = md_table(["method", "ε", "C0 / init norm", "T", "σ or σ0", "val after noisy phase",
                      "mean val over the first fine-tuning epochs", "noisy grads", "chosen"],
                     [[_label(r["method"]), r["eps"], r["C0_factor"], r["T"], r["sigma"] or r["sigma0"],
                       r["val_after_noise"], r["val_mean_ft"], r["noisy_grads"],
                       "yes" if r.get("chosen") else ""] for r in tune["sweep"]
                      if r.get("chosen") or not chosen_only])
    note = ("\n\n(Only the chosen rows of the sweep are shown; the command's own `results.md` prints all of them.)"
            if chosen_only else "")
    return f"Learning rate (chosen: {tune['lr']}):\n\n{lr}\n\nNoisy phase:\n\n{sweep}{note}"


def main_tables(main: dict[str, Any]) -> str:
    """Per scenario: accuracy after the noisy phase and fine-tuning, compute to the retrained accuracy."""
    out = []
    retrain = defaultdict(dict)
    for r in main["retrain"]:
        retrain[r["scenario"]][r["seed"]] = r
    groups: dict[tuple[str, str, float], list[dict[str, Any]]] = defaultdict(list)
    for r in main["rows"]:
        groups[(r["scenario"], r["method"], r["eps"])].append(r)
    for scenario in dict.fromkeys(r["scenario"] for r in main["retrain"]):
        seeds = sorted(retrain[scenario])
        rt = [retrain[scenario][s] for s in seeds]
        n_ret = rt[0]["n_retain"]
        final = {s: smoothed_final(retrain[scenario][s]["curve"]) for s in seeds}
        rt_to = {s: grads_to(retrain[scenario][s]["curve"], "test", final[s]) for s in seeds}
        rt_to98 = {s: grads_to(retrain[scenario][s]["curve"], "test", 0.98 * final[s]) for s in seeds}
        headers = ["method", "ε (true)", "σ / σ0", "cos(x−c, x̂−c)", "test after noisy phase", "test after 1 ft epoch",
                   "test final", "retain final", "forget final", "epochs-eq. to 98% of retrain final",
                   "epochs-eq. to retrain final (mean of its last 3 epochs)", "saving vs retrain (to 98%)",
                   "CPU s to 98%"]
        body = []
        epochs = len(rt[0]["curve"]["acc"]) - 1
        body.append(["retrain from scratch", "0 (exact)", "-", "-", mean_std([_acc(r["curve"], 0) for r in rt]),
                     mean_std([_acc(r["curve"], 1) for r in rt]), mean_std([_acc(r["curve"], -1) for r in rt]),
                     mean_std([_acc(r["curve"], -1, "retain") for r in rt]),
                     mean_std([_acc(r["curve"], -1, "forget") for r in rt]),
                     mean_std([_eq(rt_to98[s], n_ret) for s in seeds], 2),
                     mean_std([_eq(rt_to[s], n_ret) for s in seeds], 2), "0",
                     mean_std([seconds_to(retrain[scenario][s]["curve"], "test", 0.98 * final[s]) for s in seeds], 1)])
        first = next(r for r in main["rows"] if r["scenario"] == scenario)
        orig = [r for r in main["rows"] if r["scenario"] == scenario and r is not None]
        by_seed_orig = {r["seed"]: r["original_acc"] for r in orig if r["original_acc"] is not None}
        body.append(["original (trained on all of train)", "-", "-", "1", "-", "-",
                     mean_std([by_seed_orig[s]["test"] for s in seeds]),
                     mean_std([by_seed_orig[s]["retain"] for s in seeds]),
                     mean_std([by_seed_orig[s]["forget"] for s in seeds]), "-", "-", "-", "-"])
        keys = sorted((k for k in groups if k[0] == scenario), key=lambda k: (list(METHODS).index(k[1]), k[2]))
        for key in keys:
            rs = sorted(groups[key], key=lambda r: r["seed"])
            info0 = rs[0]["info"]
            to98 = [grads_to(r["curve"], "test", 0.98 * final[r["seed"]]) for r in rs]
            to100 = [grads_to(r["curve"], "test", final[r["seed"]]) for r in rs]
            savings = [None if (g is None or rt_to98[r["seed"]] in (None, 0)) else 1 - g / rt_to98[r["seed"]]
                       for g, r in zip(to98, rs, strict=True)]
            eps_label = f"{key[2]:g}"
            if key[1] == "gc_authors":
                eps_label = f"claimed {key[2]:g}, true {info0['eps_true']:.2f}"
            elif key[1] == "retrain_isotropic":
                eps_label = "0 (exact)"
            body.append([_label(key[1]), eps_label, info0["sigma"] or info0["sigma0"],
                         mean_std([r["info"]["cos_to_original"] for r in rs], 4) if info0["cos_to_original"] is not None
                         else "-",
                         mean_std([_acc(r["curve"], 0) for r in rs]), mean_std([_acc(r["curve"], 1) for r in rs]),
                         mean_std([_acc(r["curve"], -1) for r in rs]),
                         mean_std([_acc(r["curve"], -1, "retain") for r in rs]),
                         mean_std([_acc(r["curve"], -1, "forget") for r in rs]),
                         mean_std([_eq(g, n_ret) for g in to98], 2), mean_std([_eq(g, n_ret) for g in to100], 2),
                         mean_std(savings, 2),
                         mean_std([seconds_to(r["curve"], "test", 0.98 * final[r["seed"]]) for r in rs], 1)])
        out.append(f"#### Forget set: {scenario} ({first['forget'] if scenario == 'random10' else 'one whole class'}"
                   f"; {len(seeds)} seeds; {epochs} epochs of retraining / fine-tuning; |retain| = {n_ret})\n\n"
                   + md_table(headers, body))
    return "\n\n".join(out)


def _eq(grads: int | None, n: int) -> float | None:
    return None if grads is None else grads / n


def lambda_tables(lam: dict[str, Any]) -> str:
    """σ required per λ and ε (accountant) and accuracy at the fixed ε."""
    eps_keys = [k for k in lam["sigma"][0] if k != "lam"]
    sig = md_table(["λ"] + [f"σ at ε={k}" for k in eps_keys],
                   [[r["lam"]] + [r[k] for k in eps_keys] for r in lam["sigma"]])
    groups = defaultdict(list)
    for r in lam["rows"]:
        groups[r["lam"]].append(r)
    acc = md_table(["λ", "σ", "test after noisy phase", "test after 1 ft epoch", "test final"],
                   [[k, rs[0]["info"]["sigma"], mean_std([_acc(r["curve"], 0) for r in rs]),
                     mean_std([_acc(r["curve"], 1) for r in rs]), mean_std([_acc(r["curve"], -1) for r in rs])]
                    for k, rs in groups.items()])
    return (f"T = {lam['T']}, γ = {lam['gamma']}, C0 = {lam['C0']:.3f} (fresh-init norm), C1 = 1\n\n{sig}\n\n"
            f"Accuracy at ε = {lam['eps']}:\n\n{acc}")


def postprocess_table(pp: dict[str, Any]) -> str:
    """Fine-tuning from the raw noisy iterate vs the projected / rescaled one."""
    groups = defaultdict(list)
    for r in pp["rows"]:
        groups[(r["eps"], r["postprocess"])].append(r)
    body = []
    for (eps, name), rs in groups.items():
        diverged = sum(1 for r in rs if r["info"]["diverged"])
        body.append([eps, name, mean_std([r["info"]["norm_after_noisy_phase"] for r in rs], 1),
                     mean_std([_acc(r["curve"], 0) for r in rs]), mean_std([_acc(r["curve"], 1) for r in rs]),
                     mean_std([_acc(r["curve"], 3) for r in rs]), mean_std([_acc(r["curve"], -1) for r in rs]),
                     f"{diverged}/{len(rs)}"])
    return md_table(["ε", "post-processing", "‖x‖ before fine-tuning", "test after noisy phase",
                     "after 1 ft epoch", "after 3", "final", "SGD diverged"], body)


def anchored_table(anc: dict[str, Any]) -> str:
    """Transfer scenario: anchored ball vs centre 0 vs retraining from the public weights or from scratch."""
    rows = anc["rows"]
    seeds = sorted({r["seed"] for r in rows})
    n_ret = rows[0]["n_retain"]
    final_scratch = {r["seed"]: smoothed_final(r["curve"]) for r in rows if r["method"] == "retrain from scratch"}
    final_public = {r["seed"]: smoothed_final(r["curve"]) for r in rows if r["method"] == "retrain from public weights"}
    groups = defaultdict(list)
    for r in rows:
        groups[(r["method"], r["eps"])].append(r)
    first = {s: next(r for r in rows if r["seed"] == s) for s in seeds}
    body = [["public model (centre c)", "-", "-", "-", mean_std([first[s]["public_acc"]["test"] for s in seeds]),
             "-", "-", "-", "-"],
            ["original (c trained on private)", "-", "-", "1",
             mean_std([first[s]["original_acc"]["test"] for s in seeds]),
             "-", "-", "-", "-"]]
    for (method, eps), rs in groups.items():
        info = rs[0].get("info", {})
        body.append([method, "-" if eps is None else eps, info.get("sigma"),
                     mean_std([r["info"]["cos_to_original"] for r in rs], 4) if "info" in rs[0] else "-",
                     mean_std([_acc(r["curve"], 0) for r in rs]), mean_std([_acc(r["curve"], 1) for r in rs]),
                     mean_std([_acc(r["curve"], -1) for r in rs]),
                     mean_std([_eq(grads_to(r["curve"], "test", 0.98 * final_scratch[r["seed"]]), n_ret)
                               for r in rs], 2),
                     mean_std([_eq(grads_to(r["curve"], "test", 0.98 * final_public[r["seed"]]), n_ret)
                               for r in rs], 2)])
    dist = mean_std([r["original_dist_from_center"] for r in rows if r["method"] == "retrain from scratch"], 2)
    head = (f"public split {anc['n_public']} samples, private {anc['n_private']}, forget 10% of private; "
            f"‖original − c‖ = {dist}\n\n")
    return head + md_table(["method", "ε", "σ", "cos(x−c, x̂−c)", "test (at start / as is)", "after 1 ft epoch", "final",
                            "epochs-eq. to 98% of scratch-retrain final",
                            "epochs-eq. to 98% of public-retrain final"], body)


def markdown_report(results: dict[str, Any], images: dict[str, str], *, chosen_only: bool = False) -> str:
    """All tables of one run, with the plots linked (the tuning sweep cut to its chosen rows if asked)."""
    s = results["settings"]
    parts = [f"## {s['data']} / {s['arch']} (d = {results['d']}, init norm {results['init_norm']:.3f}, "
             f"lr {results['lr']}, batch {s['batch_size']}, δ = {s['delta']:g})",
             f"train/val/test = {results['n']['train']}/{results['n']['val']}/{results['n']['test']}; "
             f"seeds {s['seeds']}"]
    if "sigma" in results:
        parts += [f"### σ per ε (accountant only; C0 = 1, C1 = 1, γ = {s['gamma']:g}, "
                  f"T = {results['sigma'][0]['T']})", sigma_table(results["sigma"])]
    if "tune" in results:
        parts += [f"### Hyperparameters chosen on validation (seed {s['tune_seed']}, not reported below)",
                  tune_tables(results["tune"], chosen_only=chosen_only)]
    if "main" in results:
        parts += ["### Experiments (1) and (3): certified unlearning against retraining", main_tables(results["main"])]
    if "tradeoff" in images:
        parts.append(f"![accuracy against compute]({images['tradeoff']})")
    if "lambda" in results:
        parts += ["### Experiment (2): λ ablation", lambda_tables(results["lambda"])]
    if "postprocess" in results:
        parts += ["### Post-processing before fine-tuning (gradient clipping)",
                  postprocess_table(results["postprocess"])]
    if "anchored" in results:
        parts += ["### Anchored ball (transfer)", anchored_table(results["anchored"])]
    if "anchored" in images:
        parts.append(f"![anchored]({images['anchored']})")
    return "\n\n".join(parts) + "\n"


def command_line(results: dict[str, Any]) -> str:
    """The line naming the command that produced ``results``, its wall-clock time and the machine."""
    env = results["environment"]
    return (f"Command: `{results['command']}`; {results['total_seconds']:.0f} s on {env['cpu']}, "
            f"{env['torch_threads']} torch thread(s), device {env.get('device', 'cpu')} ({env['gpu']}).")


# ------------------------------------------------------------------------------------------- plots
def _mean_curve(curves: list[dict[str, list]], n: int) -> tuple[list[float], list[float]]:
    length = min(len(c["grads"]) for c in curves)
    xs = [statistics.fmean(c["grads"][i] for c in curves) / n for i in range(length)]
    ys = [statistics.fmean(c["acc"][i]["test"] for c in curves) for i in range(length)]
    return xs, ys


def _zoom(axes) -> None:
    """Zoom the y axis onto the fine-tuning curves; points right after the noisy phase (≈ chance) fall below."""
    low = min(min(line.get_ydata()[1:], default=1.0) for ax in axes for line in ax.get_lines())
    high = max(max(line.get_ydata(), default=0.0) for ax in axes for line in ax.get_lines())
    for ax in axes:
        ax.set_ylim(max(0.0, low - 0.03), min(1.0, high + 0.02))
    axes[0].annotate("starts below (chance) after a noisy phase centred at 0", xy=(0.02, 0.02),
                     xycoords="axes fraction", fontsize=6, color="0.4")


def plot_tradeoff(main: dict[str, Any], eps_panels: Sequence[float], path: Path, *, title: str) -> Path | None:
    """Experiment (3): mean test accuracy against compute, one panel per ε (random-10% forget set)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = [r["scenario"] for r in main["retrain"]]
    scenario = "random10" if "random10" in scenarios else scenarios[0]
    rt = [r for r in main["retrain"] if r["scenario"] == scenario]
    n = rt[0]["n_retain"]
    panels = [e for e in eps_panels if any(r["eps"] == e for r in main["rows"])]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.0), sharey=True, squeeze=False)
    for ax, eps in zip(axes[0], panels, strict=True):
        xs, ys = _mean_curve([r["curve"] for r in rt], n)
        ax.plot(xs, ys, "k-o", ms=2.5, lw=1.4, label="retrain from scratch")
        for method, style in (("retrain_isotropic", "C7-"), ("gc", "C0-"), ("mc", "C1--"), ("op", "C2:"),
                              ("gc_authors", "C3-.")):
            rs = [r for r in main["rows"] if r["scenario"] == scenario and r["method"] == method
                  and (r["eps"] == eps or method == "retrain_isotropic")]
            if rs:
                xs, ys = _mean_curve([r["curve"] for r in rs], n)
                label = METHODS[method] if method != "retrain_isotropic" else "retrain, isotropic init"
                if method == "gc_authors":
                    label = f"GC, authors' ε (true {rs[0]['info']['eps_true']:.1f})"
                ax.plot(xs, ys, style, lw=1.2, label=label)
        ax.set_title(f"ε = {eps:g}, δ = 1e-5", fontsize=9)
        ax.set_xlabel("gradient evaluations / |retain|", fontsize=8)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    return _finish_accuracy_panels(fig, axes, title, path)


def _finish_accuracy_panels(fig, axes, title: str, path: Path) -> Path:
    """Shared finish of the accuracy-against-compute figures: zoom, labels, legend, save, close."""
    import matplotlib.pyplot as plt

    _zoom(axes[0])
    axes[0][0].set_ylabel("test accuracy", fontsize=8)
    axes[0][-1].legend(fontsize=6, loc="lower right")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_anchored(anc: dict[str, Any], path: Path, *, title: str) -> Path | None:
    """Anchored ball vs centre 0 vs retraining: mean test accuracy against compute, one panel per ε."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = anc["rows"]
    n = rows[0]["n_retain"]
    eps_values = sorted({r["eps"] for r in rows if r["eps"] is not None})
    if not eps_values:
        return None
    fig, axes = plt.subplots(1, len(eps_values), figsize=(3.8 * len(eps_values), 3.0), sharey=True, squeeze=False)
    for ax, eps in zip(axes[0], eps_values, strict=True):
        for method, style in (("retrain from scratch", "k-o"), ("retrain from public weights", "k--s")):
            xs, ys = _mean_curve([r["curve"] for r in rows if r["method"] == method], n)
            ax.plot(xs, ys, style, ms=2.5, lw=1.2, label=method)
        names = sorted({r["method"] for r in rows if r["eps"] == eps})
        for i, name in enumerate(names):
            xs, ys = _mean_curve([r["curve"] for r in rows if r["method"] == name and r["eps"] == eps], n)
            ax.plot(xs, ys, f"C{i}-", lw=1.2, label=name)
        ax.set_title(f"ε = {eps:g}", fontsize=9)
        ax.set_xlabel("gradient evaluations / |retain|", fontsize=8)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    return _finish_accuracy_panels(fig, axes, title, path)
