"""Compressed document rows in the Triton kernels: their raw values as float32.

int8 rows convert directly. float8_e4m3fn rows arrive as their bytes (a torch.uint8 view)
and are decoded with integer operations: Triton refuses the fp8e4nv type below sm_89, so
one decoder serves sm_80 and sm_90 alike. The e4m3 sign, exponent and mantissa bits moved
into a float16's places (sign to bit 15, the other seven bits to bits 7..13) give a
float16 whose value is the e4m3 value times 2^-8 exactly, subnormals included (the two
exponent biases differ by 8); the float32 of that times 256 is exact. The NaN code 0x7f
decodes to 480: the stored data never holds one (per-row scales keep |x| <= 448).
"""

import triton
import triton.language as tl


@triton.jit
def decode_rows(v, FP8: tl.constexpr):
    """float32 of ``v``: int8 values, or e4m3 bytes (uint8) with ``FP8``."""
    if FP8:
        b = v.to(tl.int32) & 0xFF
        h = ((b & 0x80) << 8) | ((b & 0x7F) << 7)
        return h.to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32) * 256.0
    return v.to(tl.float32)
