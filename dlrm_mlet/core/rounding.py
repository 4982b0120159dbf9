"""Stochastic rounding of float32 rows to fp16 or bf16: unbiased, and cheap on the CPU.

Half tables (``half.py``) store their rows in fp16 or bf16; each update is
computed in float32 and rounded up or down at random so that the stored value
is right on average (rounding to nearest would drop updates smaller than
half a step). The rounding is integer arithmetic on the float32 bits; on the
CPU fp16's runs as one compiled loop (``torch.compile``), the same bits as eager.
"""

import warnings
from typing import Callable, Dict, Optional

import torch

_FP16_SMALLEST_NORMAL = 2.0 ** -14
_SIGN_BIT = -(2 ** 31)  # float32's sign bit, as an int32


def stochastic_round(x: torch.Tensor, dtype: torch.dtype, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """``x`` (float32) rounded to ``dtype`` up or down at random, so that ``E[result] == x``.

    Between the two ``dtype`` neighbours ``lo <= |x| <= hi`` it picks ``hi``
    with probability ``(|x| - lo) / (hi - lo)``: uniform random bits are added
    to the float32 bits that ``dtype`` lacks (16 for bf16, 13 for fp16) and
    then cut off, so the carry into the kept bits happens with exactly that
    probability. fp16's subnormals (below 2^-14) have a fixed spacing of
    2^-24; they are shifted into the binade where fp16's spacing is 2^-24,
    rounded there and shifted back. Integer adds and masks only: on the CPU
    ``torch.where`` on these sizes costs 50x an add. Representable values
    and inf come back unchanged, NaN stays NaN. The random bits are
    ``_noise``'s. On the CPU fp16's elementwise part runs as one loop
    (``_FUSED``), the same bits as eager.
    """
    return _FUSED[dtype](x, _noise(x, generator))


def _round_bf16(x, noise):
    # bf16 has float32's exponent range: its subnormals cut like the rest
    return _cut(x, noise & 0xFFFF, 16).to(torch.bfloat16)


def _round_fp16(x, noise):
    magnitude = x.abs()
    # 2^-14 below the smallest normal, else 0 (NaN stays NaN): elementwise arithmetic, no select
    shift = (_FP16_SMALLEST_NORMAL - magnitude).clamp(min=0).sign().mul(_FP16_SMALLEST_NORMAL)
    rounded = _cut(magnitude + shift, noise & 0x1FFF, 13) - shift
    sign = x.view(torch.int32) & _SIGN_BIT
    return (rounded.view(torch.int32) | sign).view(torch.float32).to(torch.float16)


def _cut(x, noise, drop):
    """``x``'s float32 bits plus ``noise``, the low ``drop`` bits then cleared (a carry rounds the magnitude up)."""
    return ((x.view(torch.int32) + noise) & ~((1 << drop) - 1)).view(torch.float32)


class _Fused:
    """An elementwise function compiled by ``torch.compile`` into one CPU loop at its first call.

    Eager, the rounding is about ten passes over the rows, each a memory
    round trip; fused, one (``benchmarks/every_path.py`` measures what it
    saves). Where compiling fails (no C++ compiler), or off the CPU, or
    with ``TORCH_COMPILE_DISABLE=1``, the eager function runs: the same bits.
    """

    def __init__(self, function):
        self.function, self.compiled = function, None

    def __call__(self, *args):
        if args[0].device.type != "cpu":
            return self.function(*args)
        if self.compiled is None:
            try:
                compiled = torch.compile(self.function, dynamic=True)
                result = compiled(*args)
            except Exception as error:  # the compiler's failures have no common type
                warnings.warn(f"torch.compile failed ({type(error).__name__}); half tables round eagerly")
                self.compiled = self.function
                return self.function(*args)
            self.compiled = compiled
            return result
        return self.compiled(*args)


# bf16's rounding is three passes and gained nothing compiled (benchmarks/every_path.py): it stays eager
_FUSED: Dict[torch.dtype, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    torch.bfloat16: _round_bf16, torch.float16: _Fused(_round_fp16)}


_WEYL = 40503  # 2^16 / golden ratio, odd: j * _WEYL mod 2^16 spreads the columns evenly


def _noise(x, generator):
    """16 uniform random bits per element of ``x`` (int32), one generator draw per row.

    Element ``(i, j)`` gets ``(r_i + j * _WEYL) mod 2^16`` for a uniform
    ``r_i``: uniform for every element (so each rounding is unbiased), fresh
    every call, while the generator (mt19937 on the CPU, about 5 ns a draw,
    more than the rest of an update) is asked for one number per row of k
    rather than k. Within a row the offsets are a low-discrepancy sequence,
    as in dithering: of k equal fractions about the expected share round up.
    """
    rows = x.reshape(-1, x.shape[-1]) if x.dim() > 1 else x.reshape(-1, 1)
    start = torch.randint(0, 1 << 16, (rows.shape[0], 1), generator=generator, device=x.device, dtype=torch.int32)
    columns = torch.arange(rows.shape[1], device=x.device, dtype=torch.int32) * _WEYL
    return ((start + columns) & 0xFFFF).view(x.shape)
