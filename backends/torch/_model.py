"""Which parameters a torch run unlearns, whether the model can be unlearned soundly, and the flat vector.

* :func:`select_parameters` splits the model's parameters into the unlearned ``x`` (default: every
  trainable parameter) and the frozen rest (docs/theory.md#soundness-rules: frozen parameters must be independent of D).
* :func:`check_model` gathers *every* problem (module path, reason, remedy) into one
  :class:`~certun.errors.UnsupportedModelError`, as Opacus' validators do; it never changes a layer.
* :class:`FlatParameters` makes the unlearned parameters views into one flat buffer, so that every
  step of docs/theory.md is one vector operation and the noise is one ``randn(d)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from certun.errors import InvalidParameterError, UnsupportedModelError

__all__ = [
    "FlatParameters",
    "ModelParts",
    "check_center",
    "check_model",
    "flat_center",
    "norm_modules",
    "select_parameters",
]

_WIDE_DTYPES = (torch.float32, torch.float64)


@dataclass
class ModelParts:
    """The unlearned parameters (in order), the frozen ones, and the model's buffers by kind."""

    names: tuple[str, ...]
    params: list[nn.Parameter]
    frozen: dict[str, nn.Parameter]
    norms: list[tuple[str, nn.Module]]
    buffers: dict[str, torch.Tensor]  # buffers outside running-statistics norm layers


def norm_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Normalisation layers that keep running statistics (BatchNorm, tracked InstanceNorm), by path."""
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats]


def select_parameters(model: nn.Module, params: Iterable[Any] | None) -> ModelParts:
    """Split ``model``'s parameters into unlearned and frozen.

    Args:
        model: the trained model.
        params: ``None`` for every parameter with ``requires_grad``; otherwise parameter names (as in
            ``named_parameters()``) or the parameter objects themselves. Either way the unlearned
            parameters are kept in ``named_parameters()`` order (the order of the flat vector ``x``).

    Raises:
        InvalidParameterError: an unknown name or object, or an empty selection.
    """
    named = list(model.named_parameters())
    if isinstance(params, str):
        raise InvalidParameterError("params", params, "an iterable of names or parameters, e.g. [" + repr(params)
                                    + "], not a single string")
    if params is None:
        chosen = [(n, p) for n, p in named if p.requires_grad]
    else:
        by_name = dict(named)
        by_id = {id(p): n for n, p in named}
        wanted: list[str] = []
        unknown: list[str] = []
        for item in params:
            if isinstance(item, str):
                (wanted if item in by_name else unknown).append(item)
            elif id(item) in by_id:
                wanted.append(by_id[id(item)])
            else:
                unknown.append(f"<{type(item).__name__} not in model>")
        if unknown:
            raise InvalidParameterError("params", unknown[:5], "names from model.named_parameters() or its parameters")
        keep = set(wanted)
        chosen = [(n, p) for n, p in named if n in keep]
    if not chosen:
        raise InvalidParameterError("params", [] if params is None else list(params)[:5],
                                    "a non-empty set of parameters (the model has none trainable?)")
    chosen_names = {n for n, _ in chosen}
    norms = norm_modules(model)
    norm_buffer_names = {f"{path}.{b}" if path else b for path, m in norms for b, _ in m.named_buffers(recurse=False)}
    return ModelParts(
        names=tuple(n for n, _ in chosen),
        params=[p for _, p in chosen],
        frozen={n: p for n, p in named if n not in chosen_names},
        norms=norms,
        buffers={n: b for n, b in model.named_buffers() if n not in norm_buffer_names},
    )


def check_model(model: nn.Module, parts: ModelParts, *, hooks: bool, buffers: str,
                attributes: str = "reject") -> None:
    """Refuse a model that cannot be unlearned soundly as asked, listing every problem at once.

    Args:
        model: the model (already on its device).
        parts: from :func:`select_parameters`.
        hooks: whether per-sample gradients are needed (``clip="per_sample"`` or ``"ghost"``).
        buffers: ``"reject"`` (no data-dependent buffers allowed), ``"recompute"`` (running statistics
            of norm layers are reset, then recomputed from retain data) or ``"public"`` (the user asserts
            that the non-norm buffers are independent of D; their digests are recorded and checked).
        attributes: ``"reject"`` (no tensors or arrays kept as plain module attributes) or ``"public"``
            (the user asserts they are independent of D; their digests are recorded and checked).

    Raises:
        UnsupportedModelError: with one ``(path, reason, remedy)`` per problem.
    """
    problems: list[tuple[str, str, str]] = []
    for name, p in zip(parts.names, parts.params, strict=True):
        if p.dtype not in _WIDE_DTYPES:
            problems.append((name, f"parameter dtype is {str(p.dtype).replace('torch.', '')}; the noisy phase keeps "
                             "the unlearned parameters and the noise in float32 or wider",
                             "convert the model with model.float() (autocast of the forward pass is fine)"))
        if p.is_sparse:
            problems.append((name, "sparse parameters are not supported", "use a dense parameter"))
    dtypes = {p.dtype for p in parts.params if p.dtype in _WIDE_DTYPES}
    if len(dtypes) > 1:
        problems.append(("<model>", "unlearned parameters mix float32 and float64",
                         "convert the model to one dtype (model.float() or model.double())"))
    problems.extend(_norm_problems(parts, hooks, buffers))
    if hooks:
        problems.extend(_per_sample_problems(model))
    if parts.buffers and buffers != "public":
        for name in parts.buffers:
            problems.append((name, "buffer may depend on the training data and is not among the unlearned "
                             "parameters", "if it is independent of the training data pass buffers='public' "
                             "(its digest is recorded and checked unchanged); otherwise make it a parameter"))
    if attributes != "public":
        from certun.backends.torch._attributes import unregistered_arrays

        for path in unregistered_arrays(model):
            problems.append((path, "array kept as a plain attribute, outside the parameters and buffers: if it "
                             "was computed from the training data the released model still carries D "
                             "(docs/theory.md#definition)", "register it as a parameter (to unlearn it) or a buffer, "
                             "or, if it is independent of the training data, pass attributes='public' (its digest "
                             "is recorded and checked unchanged)"))
    if problems:
        raise UnsupportedModelError(problems)


def _norm_problems(parts: ModelParts, hooks: bool, buffers: str) -> list[tuple[str, str, str]]:
    """The norm layers whose running statistics per-sample clipping cannot run or nothing recomputes."""
    problems: list[tuple[str, str, str]] = []
    for path, module in parts.norms:
        if hooks:
            problems.append((path, f"{type(module).__name__} keeps running statistics computed from the training "
                             "data, and per-sample clipping cannot run it (it mixes the samples of a batch)",
                             "use clip='batch' with buffers='recompute', or replace it with GroupNorm/LayerNorm "
                             "before training (never swapped silently in a trained model)"))
        elif buffers != "recompute":
            problems.append((path, f"{type(module).__name__} running statistics were computed from the training "
                             "data, including the forget set, and are not part of the unlearned parameters",
                             "pass buffers='recompute' to reset them and recompute them from retain data, or "
                             "replace the layer with GroupNorm/LayerNorm before training"))
    return problems


def _per_sample_problems(model: nn.Module) -> list[tuple[str, str, str]]:
    """The modules whose per-sample gradients are undefined (batch-mixing BatchNorm) or unreliable (RNNs)."""
    problems: list[tuple[str, str, str]] = []
    for path, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not module.track_running_stats:
            problems.append((path, "BatchNorm in training mode mixes the samples of a batch, so per-sample "
                             "gradients (and per-sample clipping) are undefined", "use clip='batch'"))
    # Opacus' other refusals (attention, custom layers) fall back to torch.func; recurrent layers do not
    # vectorise reliably there (their flattened weights), so they keep Opacus' refusal and remedy
    problems.extend(p for p in opacus_problems(model) if isinstance(model.get_submodule(p[0]), nn.RNNBase))
    return problems


def check_center(center: Any, parts: ModelParts) -> None:
    """Refuse a centre equal to the starting model, whole or in any one non-constant tensor.

    The certificate publishes the centre's plain digest, and the guarantee needs a centre independent
    of D (docs/theory.md#anchored-balls): the trained parameters as the centre publish the model the
    run is meant to hide. A constant tensor (an untouched zero bias) is exempt: it says nothing of D.

    Raises:
        InvalidParameterError: naming the tensors equal to the starting model's.
    """
    if center is None:
        return
    flat = flat_center(center, parts, device=torch.device("cpu"), dtype=parts.params[0].dtype)
    assert flat is not None
    pieces = torch.split(flat, [p.numel() for p in parts.params])
    same = []
    for name, p, piece in zip(parts.names, parts.params, pieces, strict=True):
        start = p.detach().reshape(-1).to("cpu")
        if torch.equal(piece, start) and not (start.numel() > 0 and bool((start == start[0]).all())):
            same.append(name)
    if same:
        raise InvalidParameterError(
            "center", f"<equal to the starting model in {same[:5]}{' ...' if len(same) > 5 else ''}>",
            "independent of the training data (docs/theory.md#anchored-balls): the certificate publishes the "
            "centre's digest, so the trained parameters as the centre would publish the model the run hides",
            hint="use public pretrained weights, the initialisation drawn before training, or the origin "
                 "(center=None); a tensor never trained on D belongs in the frozen part (params=..., frozen='public')")


def opacus_problems(model: nn.Module) -> list[tuple[str, str, str]]:
    """Opacus' own per-module validators (LSTM/GRU/attention need Opacus' DP layers), with module paths.

    Not a refusal: the gradient computer falls back to ``torch.func`` for such models.
    """
    from opacus.validators import ModuleValidator

    out = []
    for path, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            continue  # reported above with certun's remedy
        if not any(p.requires_grad for p in module.parameters(recurse=False)):
            continue
        validator = ModuleValidator.VALIDATORS.get(type(module))
        for error in (validator(module) if validator else ()):
            out.append((path, f"Opacus cannot compute per-sample gradients here: {error}",
                        "build the model with Opacus' DP layer (e.g. opacus.layers.DPLSTM) before training, "
                        "or use clip='batch'"))
    return out


def flat_center(center: Any, parts: ModelParts, *, device: torch.device, dtype: torch.dtype) -> torch.Tensor | None:
    """The ball centre as a flat vector matching the unlearned parameters, or ``None`` for the origin.

    Accepts a mapping ``name -> tensor/array`` holding every unlearned parameter (extra entries, e.g.
    buffers of a public state dict, are ignored) or a flat vector of length ``d``.

    Raises:
        InvalidParameterError: a missing name, a wrong shape or length, or a non-finite value.
    """
    if center is None:
        return None
    d = sum(p.numel() for p in parts.params)
    if isinstance(center, Mapping):
        missing = [n for n in parts.names if n not in center]
        if missing:
            raise InvalidParameterError("center", f"<state dict missing {missing[:5]}>",
                                        "a mapping holding every unlearned parameter")
        pieces = []
        for name, p in zip(parts.names, parts.params, strict=True):
            value = torch.as_tensor(center[name])
            if tuple(value.shape) != tuple(p.shape):
                raise InvalidParameterError(f"center[{name!r}]", f"<shape {tuple(value.shape)}>",
                                            f"shape {tuple(p.shape)}")
            pieces.append(value.detach().reshape(-1).to(device=device, dtype=dtype))
        flat = torch.cat(pieces)
    else:
        flat = torch.as_tensor(center).detach().reshape(-1).to(device=device, dtype=dtype)
        if torch.as_tensor(center).dim() != 1 or flat.numel() != d:
            raise InvalidParameterError("center", f"<tensor of shape {tuple(torch.as_tensor(center).shape)}>",
                                        f"a state dict or a flat vector of length d={d}")
    if not bool(torch.isfinite(flat).all()):
        raise InvalidParameterError("center", "<non-finite values>", "finite everywhere")
    return flat


class FlatParameters:
    """The unlearned parameters as views into one flat vector ``x``, and a flat gradient buffer ``g``.

    After construction each parameter's storage *is* a slice of ``x``: updating ``x`` in place
    updates the model. :meth:`point_grads` makes each ``p.grad`` a slice of ``g`` so that backward
    accumulates straight into it; :meth:`gather_grads` falls back to copying if autograd ever
    replaced a gradient. :meth:`release` gives every parameter its own storage again.
    """

    def __init__(self, names: tuple[str, ...], params: list[nn.Parameter], *, device: torch.device,
                 dtype: torch.dtype) -> None:
        self.names = names
        self.params = params
        self.sizes = [p.numel() for p in params]
        self.d = sum(self.sizes)
        self.x = torch.empty(self.d, device=device, dtype=dtype)
        self.g = torch.zeros(self.d, device=device, dtype=dtype)
        self.x_views: list[torch.Tensor] = []
        self.g_views: list[torch.Tensor] = []
        offset = 0
        with torch.no_grad():
            for p, n in zip(params, self.sizes, strict=True):
                view = self.x[offset:offset + n].view_as(p)
                view.copy_(p.detach())
                p.data = view
                self.x_views.append(view)
                self.g_views.append(self.g[offset:offset + n].view_as(p))
                offset += n

    def named_views(self) -> dict[str, torch.Tensor]:
        """``name -> view of x`` (for digests and callbacks)."""
        return dict(zip(self.names, self.x_views, strict=True))

    def point_grads(self) -> None:
        """Zero ``g`` and make every ``p.grad`` the matching slice of it."""
        self.g.zero_()
        for p, view in zip(self.params, self.g_views, strict=True):
            if p.grad is None or p.grad.data_ptr() != view.data_ptr():
                p.grad = view

    def gather_grads(self, into: torch.Tensor | None = None) -> torch.Tensor:
        """``g`` holding the current gradients (copying any that autograd did not write in place).

        ``into``: a vector of length ``d`` (the float64 step buffer) to write instead of ``g``, from
        gradients autograd allocated afresh: ``0 + grad`` per coordinate, the value accumulating into a
        zeroed ``g`` gives (``−0`` becomes ``+0``), so the step sees the same bits either way.
        """
        if into is not None:
            for p, view in zip(self.params, torch.split(into, self.sizes), strict=True):
                if p.grad is None:
                    view.zero_()
                elif p.grad.layout != torch.strided:  # a sparse gradient (Embedding(sparse=True)): as accumulated
                    view.copy_(torch.zeros_like(p).add_(p.grad).reshape(-1))
                else:
                    view.copy_(p.grad.add_(0.0).reshape(-1))
            return into
        for p, view in zip(self.params, self.g_views, strict=True):
            grad = p.grad
            if grad is None:
                view.zero_()
            elif grad.data_ptr() != view.data_ptr():
                view.copy_(grad)
        return self.g

    def grad_pieces(self) -> list[torch.Tensor]:
        """Each parameter's gradient as autograd left it, flat (a view where it can be; zeros for no gradient,
        a sparse one made dense), in the order of ``x``."""
        pieces = []
        for p in self.params:
            grad = p.grad
            if grad is None:
                pieces.append(torch.zeros(p.numel(), dtype=p.dtype, device=p.device))
            elif grad.layout != torch.strided:  # a sparse gradient (Embedding(sparse=True)): as accumulated
                pieces.append(torch.zeros_like(p).add_(grad).reshape(-1))
            else:
                pieces.append(grad.reshape(-1))
        return pieces

    def clear_grads(self) -> None:
        """Drop every ``p.grad`` (no gradient state survives a phase)."""
        for p in self.params:
            p.grad = None

    def release(self) -> None:
        """Give every parameter its own storage again and drop gradients."""
        with torch.no_grad():
            for p, view in zip(self.params, self.x_views, strict=True):
                p.data = view.clone()
                p.grad = None
