"""The torch backend's auxiliary RNG state (dropout, stochastic layers) as bytes, for a checkpoint.

A resumed run restores the CPU generator and every CUDA device's generator to their state at the
checkpoint, so dropout masks after a resume are those of a run never interrupted. The noise itself
never comes from these generators (docs/theory.md#floating-point-and-randomness).
"""

from __future__ import annotations

import struct

import torch

from certun.errors import UnlearningRunError

__all__ = ["get_state", "set_state"]


def _devices() -> list[int]:
    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []


def get_state() -> bytes:
    """The CPU generator's state, then each CUDA device's, each preceded by its length."""
    states = [torch.get_rng_state()] + [torch.cuda.get_rng_state(i) for i in _devices()]
    out = [struct.pack("<I", len(states))]
    for state in states:
        raw = state.cpu().numpy().tobytes()
        out += [struct.pack("<Q", len(raw)), raw]
    return b"".join(out)


def set_state(blob: bytes) -> None:
    """Restore what :func:`get_state` returned; refuses a state saved with another number of CUDA devices, and a
    truncated or wrong-sized one, before changing any generator."""
    states = _parse(bytes(blob))
    devices = _devices()
    if len(states) != 1 + len(devices):
        raise UnlearningRunError(f"the checkpoint was written with {len(states) - 1} CUDA devices and this process "
                                 f"sees {len(devices)}; resume where the run began (its dropout state is per device)")
    current = [torch.get_rng_state()] + [torch.cuda.get_rng_state(i) for i in devices]
    if any(new.numel() != now.numel() for new, now in zip(states, current, strict=True)):
        raise _malformed("a generator state of another size")
    torch.set_rng_state(states[0])
    for i, state in zip(devices, states[1:], strict=True):
        torch.cuda.set_rng_state(state, i)


def _parse(blob: bytes) -> list[torch.Tensor]:
    """The generator states in ``blob``, each checked to lie inside it, and nothing after the last."""
    if len(blob) < 4:
        raise _malformed("no generator count")
    count, at, states = struct.unpack_from("<I", blob)[0], 4, []
    for _ in range(count):
        if at + 8 > len(blob):
            raise _malformed("fewer generator states than it counts")
        n = struct.unpack_from("<Q", blob, at)[0]
        if at + 8 + n > len(blob):
            raise _malformed("a truncated generator state")
        states.append(torch.frombuffer(bytearray(blob[at + 8:at + 8 + n]), dtype=torch.uint8) if n else
                      torch.empty(0, dtype=torch.uint8))
        at += 8 + n
    if at != len(blob) or not states:
        raise _malformed("bytes after the last generator state" if states else "no generator state")
    return states


def _malformed(why: str) -> UnlearningRunError:
    return UnlearningRunError(f"the checkpoint's dropout RNG state is malformed ({why}); nothing was run. Delete "
                              "the checkpoint to start the run afresh")
