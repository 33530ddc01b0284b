"""The torch backend's post-processing after the noisy phase: noiseless fine-tuning and BatchNorm statistics.

Both read only retain data and start from the released noisy iterate, so they are post-processing
(docs/theory.md#definition); for the retrain variant the same SGD is the training itself.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import torch

from certun.backends.torch._data import pair, to_device, tqdm_bar
from certun.backends.torch._grad import GradientComputer
from certun.errors import UnlearningRunError

__all__ = ["finetune"]


def finetune(run: Any, history: dict[str, list[Any]], on_pass: Callable[[int], None] | None) -> int:
    """Noiseless SGD on retain data for ``opts.finetune_epochs`` (filling ``ft_*`` in ``history``), then the
    norm layers' running statistics recomputed from retain data when ``opts.buffers == "recompute"``.
    Returns the SGD steps taken. ``run`` is the :class:`~certun.backends.torch._run.TorchRun`."""
    steps = 0
    if run.opts.finetune_epochs:
        steps = _sgd(run, history, on_pass)
    if run.opts.buffers == "recompute" and run.parts.norms:
        _recompute_running_stats(run)
    return steps


def _sgd(run: Any, history: dict[str, list[Any]], on_pass: Callable[[int], None] | None) -> int:
    """Plain SGD on the parameters' flat buffer, epoch by epoch over the retain data; the losses go to ``ft_loss``."""
    flat, epochs, lr = run.flat, run.opts.finetune_epochs, run.opts.finetune_lr
    computer = GradientComputer(run.model, flat, run.loss_fn, mode="batch")
    losses = []
    try:
        for epoch in tqdm_bar(range(epochs), total=epochs, desc="certun fine-tuning", enabled=run.opts.progress):
            count = samples = 0
            for batch in itertools.islice(run.data, run.epoch_batches):
                inputs, targets, size = pair(batch, batch_first=False)
                if size == 0:
                    continue
                loss = computer.compute(to_device(inputs, run.device), to_device(targets, run.device))
                with torch.no_grad():
                    flat.x.add_(flat.g, alpha=-lr)
                losses.append(loss)
                count += 1
                samples += size
            if count == 0:
                raise UnlearningRunError("the retain data is empty: nothing to fine-tune on")
            if epoch == 0 and on_pass is not None:
                on_pass(samples)
            if not bool(torch.isfinite(torch.stack(losses[-count:])).all()):
                raise UnlearningRunError(f"non-finite loss during fine-tuning epoch {epoch} "
                                         f"(lr={lr}); no certificate was issued")
    finally:
        computer.close()
        flat.clear_grads()
    history["ft_step"] = list(range(len(losses)))
    history["ft_loss"] = torch.stack(losses).cpu().tolist() if losses else []
    run._check_finite("after fine-tuning")
    return len(losses)


def _recompute_running_stats(run: Any) -> None:
    """Reset the norm layers' running statistics and recompute them over one pass of retain data."""
    momenta = {}
    for path, module in run.parts.norms:
        module.reset_running_stats()
        momenta[path] = module.momentum
        module.momentum = None  # cumulative average over the pass
    run.model.train()
    try:
        with torch.no_grad():
            for batch in itertools.islice(run.data, run.epoch_batches):
                inputs, _, size = pair(batch, batch_first=False)
                if size:
                    run.model(to_device(inputs, run.device))
    finally:
        for path, module in run.parts.norms:
            module.momentum = momenta[path]
