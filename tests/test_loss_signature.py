"""``per_sample_loss`` reads a loss function's signature once, not on every step, and still refuses a loss
that takes no ``reduction`` on every call."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
import torch.nn.functional as F  # noqa: N812 (the conventional name)

from certun.backends.torch import _loss
from certun.backends.torch._loss import per_sample_loss
from certun.errors import UnlearningRunError

OUT, Y = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])


def test_a_loss_without_reduction_is_refused_every_time() -> None:
    def mean_only(output, target):
        return F.cross_entropy(output, target)

    for _ in range(2):  # the second answer comes from the memo and must be the same refusal
        with pytest.raises(UnlearningRunError, match="mean_only takes no reduction argument"):
            per_sample_loss(mean_only, OUT, Y)


def test_the_signature_is_read_once_per_loss(monkeypatch: pytest.MonkeyPatch) -> None:
    def loss(output, target, **kwargs):
        return F.cross_entropy(output, target, **kwargs)

    reads = []
    real = _loss.inspect.signature
    monkeypatch.setattr(_loss.inspect, "signature", lambda f: reads.append(f) or real(f))
    for _ in range(3):
        assert per_sample_loss(loss, OUT, Y).shape == (4,)
    assert reads == [loss]


def test_the_memo_keeps_no_loss_alive() -> None:
    def loss(output, target, reduction="mean"):
        return F.cross_entropy(output, target, reduction=reduction)

    per_sample_loss(loss, OUT, Y)
    ref = weakref.ref(loss)
    del loss
    gc.collect()
    assert ref() is None


def test_an_unhashable_callable_is_read_each_time() -> None:
    class Loss:
        __hash__ = None  # type: ignore[assignment]

        def __eq__(self, other: object) -> bool:
            return isinstance(other, Loss)

        def __call__(self, output, target, reduction="mean"):
            return F.cross_entropy(output, target, reduction=reduction)

    for _ in range(2):
        torch.testing.assert_close(per_sample_loss(Loss(), OUT, Y), F.cross_entropy(OUT, Y, reduction="none"))
