"""``per_sample_loss`` reads a loss function's signature once, not on every step, and still refuses a loss
that takes no ``reduction`` on every call."""

from __future__ import annotations

import gc
import inspect
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

    reads = _counting(monkeypatch)
    for _ in range(3):
        assert per_sample_loss(loss, OUT, Y).shape == (4,)
    assert [f for f in reads if f is loss] == [loss]


def test_the_memo_keeps_no_loss_alive() -> None:
    def loss(output, target, reduction="mean"):
        return F.cross_entropy(output, target, reduction=reduction)

    per_sample_loss(loss, OUT, Y)
    ref = weakref.ref(loss)
    del loss
    gc.collect()
    assert ref() is None


def _counting(monkeypatch: pytest.MonkeyPatch) -> list:
    reads: list = []
    real = _loss.inspect.signature
    monkeypatch.setattr(_loss.inspect, "signature", lambda f: reads.append(f) or real(f))
    return reads


def test_losses_are_told_apart_by_identity_not_equality(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two losses that compare equal (and hash alike, or not at all) but take different arguments each get their
    own answer; a loss whose hash raises is not hashed."""
    class Equal:
        def __init__(self, takes_reduction: bool) -> None:
            self.takes = takes_reduction

        def __eq__(self, other: object) -> bool:
            return isinstance(other, Equal)

        def __hash__(self) -> int:
            raise RuntimeError("hash of a user object")

        @property
        def __signature__(self) -> inspect.Signature:
            names = ["output", "target"] + (["reduction"] if self.takes else [])
            return inspect.Signature([inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in names])

        def __call__(self, output, target, reduction="mean"):
            return F.cross_entropy(output, target, reduction=reduction)

    reads = _counting(monkeypatch)
    without, with_ = Equal(False), Equal(True)
    for _ in range(2):
        with pytest.raises(UnlearningRunError, match="takes no reduction argument"):
            per_sample_loss(without, OUT, Y)
        torch.testing.assert_close(per_sample_loss(with_, OUT, Y), F.cross_entropy(OUT, Y, reduction="none"))
    ours = [f for f in reads if f is without or f is with_]  # (torch may read other signatures meanwhile)
    assert len(ours) == 2 and ours[0] is without and ours[1] is with_  # one read each; then the memo answers


def test_a_loss_that_cannot_be_weakly_referenced_is_read_each_time(monkeypatch: pytest.MonkeyPatch) -> None:
    class Slotted:
        __slots__ = ()

        def __call__(self, output, target, reduction="mean"):
            return F.cross_entropy(output, target, reduction=reduction)

    reads, loss = _counting(monkeypatch), Slotted()
    for _ in range(2):
        torch.testing.assert_close(per_sample_loss(loss, OUT, Y), F.cross_entropy(OUT, Y, reduction="none"))
    assert [f for f in reads if f is loss] == [loss, loss]
