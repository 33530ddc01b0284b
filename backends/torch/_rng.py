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
    """Restore what :func:`get_state` returned; refuses a state saved with another number of CUDA devices."""
    count, at, states = struct.unpack_from("<I", blob)[0], 4, []
    for _ in range(count):
        n = struct.unpack_from("<Q", blob, at)[0]
        states.append(torch.frombuffer(bytearray(blob[at + 8:at + 8 + n]), dtype=torch.uint8))
        at += 8 + n
    devices = _devices()
    if len(states) != 1 + len(devices):
        raise UnlearningRunError(f"the checkpoint was written with {len(states) - 1} CUDA devices and this process "
                                 f"sees {len(devices)}; resume where the run began (its dropout state is per device)")
    torch.set_rng_state(states[0])
    for i, state in zip(devices, states[1:], strict=True):
        torch.cuda.set_rng_state(state, i)
