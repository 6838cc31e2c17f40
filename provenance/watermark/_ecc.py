"""Channel code of the watermark payload: a 16-bit check code + terminated convolutional code with soft Viterbi.

The 64-bit payload and its check code (80 bits) are encoded with the rate-1/3, constraint-length-7
convolutional code of LTE (generators 133, 171, 165 octal), terminated with 6 zero bits: 258 coded bits. A
soft-decision Viterbi decoder recovers them; the check code (the low 16 bits of a domain-separated CRC-32 of the
payload) then tells a correct decoding from a wrong one: for an unmarked image the decoded word is uniform (see
the package docstring), so it passes with probability 2**-16, which the detector multiplies into its
false-alarm probability. 16 bits rather than 32 leave more chips to each coded bit; the synchronisation
statistic supplies the rest of the 1e-9."""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["CODED_BITS", "INFO_BITS", "PAYLOAD_BITS", "decode", "encode"]

PAYLOAD_BITS = 64
CRC_BITS = 16
INFO_BITS = PAYLOAD_BITS + CRC_BITS
_K = 7
_GENERATORS = (0o133, 0o171, 0o165)
_RATE = len(_GENERATORS)
CODED_BITS = (INFO_BITS + _K - 1) * _RATE
_STATES = 1 << (_K - 1)
_CRC_DOMAIN = b"medverify-wm-v2"


def _parity(values: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    out = np.zeros_like(values)
    v = values.copy()
    while np.any(v):
        out ^= v & 1
        v >>= 1
    return out


# Trellis: register = (input bit << 6) | state, state = the 6 previous bits (newest in the high bit).
_REG = np.arange(1 << _K, dtype=np.int64)
_OUT = np.stack([_parity(_REG & g) for g in _GENERATORS], axis=1)  # (128, 3) coded bits per register
_NEXT = _REG >> 1  # next state of each register value
# For each next state: its two predecessor registers (input bit is the new state's top bit).
_PRED = np.stack([np.flatnonzero(_NEXT == s) for s in range(_STATES)])  # (64, 2) register values
_PRED_SIGNS = 1.0 - 2.0 * _OUT[_PRED]  # (64, 2, 3): +1 for coded 0, -1 for coded 1


def _crc(payload: int) -> int:
    return zlib.crc32(_CRC_DOMAIN + payload.to_bytes(8, "big")) & ((1 << CRC_BITS) - 1)


def _to_bits(value: int, n: int) -> list[int]:
    return [(value >> (n - 1 - i)) & 1 for i in range(n)]


def encode(payload: int) -> npt.NDArray[np.int8]:
    """The coded bits (0/1) of a 64-bit payload."""
    bits = _to_bits(payload, PAYLOAD_BITS) + _to_bits(_crc(payload), CRC_BITS) + [0] * (_K - 1)
    state = 0
    out = np.empty((len(bits), _RATE), dtype=np.int8)
    for i, bit in enumerate(bits):
        reg = (bit << (_K - 1)) | state
        out[i] = _OUT[reg]
        state = reg >> 1
    return out.reshape(-1)


def decode(soft: npt.NDArray[Any]) -> int | None:
    """Soft-decision Viterbi decoding; ``soft`` > 0 means coded bit 0. Returns the payload or None if the CRC fails."""
    if soft.shape != (CODED_BITS,):
        raise ValueError(f"expected {CODED_BITS} soft values, got {soft.shape}")
    symbols = soft.reshape(-1, _RATE)
    steps = symbols.shape[0]
    metric = np.full(_STATES, -np.inf)
    metric[0] = 0.0
    choice = np.empty((steps, _STATES), dtype=np.int8)
    prev_state = _PRED & (_STATES - 1)  # (64, 2) predecessor states
    for t in range(steps):
        branch = _PRED_SIGNS @ symbols[t]  # (64, 2)
        cand = metric[prev_state] + branch
        pick = np.argmax(cand, axis=1)
        choice[t] = pick
        metric = cand[np.arange(_STATES), pick]
    state = 0  # terminated code ends in state 0
    bits = np.empty(steps, dtype=np.int64)
    for t in range(steps - 1, -1, -1):
        reg = int(_PRED[state, choice[t, state]])
        bits[t] = reg >> (_K - 1)
        state = reg & (_STATES - 1)
    value = 0
    for b in bits[:INFO_BITS]:
        value = (value << 1) | int(b)
    payload, crc = value >> CRC_BITS, value & ((1 << CRC_BITS) - 1)
    return payload if crc == _crc(payload) else None
