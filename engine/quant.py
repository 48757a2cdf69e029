"""Compressed document storage: int8 and float8 e4m3 rows with one float32 scale per row.

A stored vector is ``data`` ((n, d) ``torch.int8`` or ``torch.float8_e4m3fn``) and
``scales`` ((n,) ``torch.float32``); the value it stands for is
``data.float() * scales[:, None]`` (computed in float32, the product rounded once).

* int8: symmetric, ``scale = max|x| / 127``, ``q = round(x / scale)`` (half to even),
  so ``|x - q * scale| <= scale / 2`` per element.
* float8 e4m3 (4 exponent bits, 3 mantissa bits, largest finite 448):
  ``scale = max|x| / 448``, ``q = fp8(x / scale)`` (round to nearest even); a per-row
  scale puts a row's largest value at the top of fp8's range, keeping small embedding
  values out of its subnormals. The relative error of an element ``|x| >= 2^-6 * scale``
  is at most 2^-4; below that the absolute error is at most ``2^-10 * scale``.

An all-zero row has scale 0 (and zero data). Quantisation reads its input in blocks of
rows, so an 8.8M x 768 corpus in float16 is never held in float32.
"""

from __future__ import annotations

import numpy as np
import torch

# Storage names (the manifest's and the command line's) -> torch dtypes.
STORAGE_DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int8": torch.int8,
    "float8_e4m3": torch.float8_e4m3fn,
}
STORAGE_NAMES = {v: k for k, v in STORAGE_DTYPES.items()}
QUANTIZED_DTYPES = (torch.int8, torch.float8_e4m3fn)
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Largest stored magnitude: a row's max |x| maps onto it.
QMAX = {torch.int8: 127.0, torch.float8_e4m3fn: 448.0}
# Rows quantised at once: bounds the float32 working copy to about this many bytes.
_BLOCK_BYTES = 64 << 20


def is_quantized(dtype) -> bool:
    """Whether vectors of ``dtype`` need per-row scales (int8, float8 e4m3)."""
    return dtype in QUANTIZED_DTYPES


def storage_dtype(storage) -> torch.dtype:
    """The torch dtype of a storage name (``"float32"``, ``"float16"``, ``"bfloat16"``,
    ``"int8"``, ``"float8_e4m3"``) or of a dtype among them; ``ValueError`` / ``TypeError``
    otherwise."""
    if isinstance(storage, torch.dtype):
        if storage not in STORAGE_NAMES:
            raise TypeError(f"unsupported storage dtype {storage}; use one of {sorted(STORAGE_DTYPES)}")
        return storage
    if not isinstance(storage, str):
        raise TypeError(f"storage must be a str or torch.dtype, got {type(storage).__name__}")
    if storage not in STORAGE_DTYPES:
        raise ValueError(f"storage must be one of {list(STORAGE_DTYPES)}, got {storage!r}")
    return STORAGE_DTYPES[storage]


def _block_rows(d: int) -> int:
    return max(1, _BLOCK_BYTES // max(1, 4 * d))


def quantize(x: torch.Tensor, dtype=torch.int8, *, block_rows: int | None = None):
    """Quantise ``x`` (n, d) float32/float16/bfloat16 (any device) to ``(data, scales)``.

    Args:
        x: finite float rows; read in blocks of ``block_rows`` rows (default: about 64 MiB
            of float32 each), so a memory-mapped corpus is never copied whole.
        dtype: ``torch.int8`` / ``"int8"`` or ``torch.float8_e4m3fn`` / ``"float8_e4m3"``.

    Returns:
        ``data`` (n, d) of ``dtype`` and ``scales`` (n,) float32, on ``x``'s device.

    Raises:
        TypeError: ``x`` is not a 2-D float tensor, or ``dtype`` is not int8/float8 e4m3.
        ValueError: ``x`` holds NaN or Inf (naming the first such row), or a row's scale
            would not be a normal float32.
    """
    dtype = storage_dtype(dtype)
    if dtype not in QUANTIZED_DTYPES:
        raise TypeError(f"quantize stores int8 or float8_e4m3, got {dtype}")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"vectors must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"vectors must be float32, float16 or bfloat16 to quantise, got {x.dtype}")
    if x.dim() != 2:
        raise ValueError(f"vectors must be 2-D (n, d), got shape {tuple(x.shape)}")
    n, d = x.shape
    step = block_rows or _block_rows(d)
    if isinstance(step, bool) or not isinstance(step, int) or step < 1:
        raise ValueError(f"block_rows must be a positive int, got {block_rows!r}")
    data = torch.empty((n, d), dtype=dtype, device=x.device)
    scales = torch.empty(n, dtype=torch.float32, device=x.device)
    qmax = QMAX[dtype]
    for s in range(0, n, step):
        b = x[s : s + step].detach().float()
        if not bool(torch.isfinite(b).all()):
            row = s + int((~torch.isfinite(b)).any(dim=1).nonzero()[0, 0])
            raise ValueError(f"vectors contain NaN or Inf (row {row}); they cannot be quantised")
        amax = b.abs().amax(dim=1) if d else torch.zeros(b.shape[0], device=b.device)
        sc = amax / qmax
        if bool((sc[amax > 0] < torch.finfo(torch.float32).tiny).any()):
            row = s + int(((amax > 0) & (sc < torch.finfo(torch.float32).tiny)).nonzero()[0, 0])
            raise ValueError(f"row {row}'s largest magnitude is too small for a float32 scale (below "
                             f"{qmax * torch.finfo(torch.float32).tiny:.3g}); rescale the vectors")
        inv = torch.where(sc > 0, 1.0 / sc.clamp_min(torch.finfo(torch.float32).tiny), torch.zeros_like(sc))
        y = (b * inv[:, None]).clamp_(-qmax, qmax)
        data[s : s + step] = torch.round(y).to(torch.int8) if dtype == torch.int8 else y.to(dtype)
        scales[s : s + step] = sc
    return data, scales


def has_nan_fp8(data: torch.Tensor, *, block_rows: int | None = None) -> bool:
    """Whether float8 e4m3fn ``data`` holds a NaN byte (S.1111.111), read in blocks."""
    flat = data.view(torch.uint8)
    step = block_rows or _block_rows(max(1, data.shape[-1]) // 4 or 1)
    for s in range(0, flat.shape[0], step):
        if bool(((flat[s : s + step] & 0x7F) == 0x7F).any()):
            return True
    return False


def dequantize(data: torch.Tensor, scales: torch.Tensor, rows=None) -> torch.Tensor:
    """``data.float() * scales[:, None]`` as float32, of all rows or of ``rows`` (a slice,
    an int index tensor / array). The torch reference of what every kernel computes."""
    if rows is not None:
        if isinstance(rows, np.ndarray):
            rows = torch.from_numpy(rows)
        if isinstance(rows, torch.Tensor):
            rows = rows.to(data.device).long()
        data, scales = data[rows], scales[rows]
    return data.float() * scales.float().unsqueeze(-1)


def check_scales(data: torch.Tensor, scales, *, name: str = "scales", check_values: bool = True):
    """``scales`` as the kernels read them for ``data`` (n, d): required (float32 (n,) on
    ``data``'s device) when ``data`` is int8/float8 e4m3, refused otherwise. With
    ``check_values``, every scale must be finite and non-negative.

    Raises ``ValueError`` (missing, refused, wrong shape/device, bad values) or
    ``TypeError`` (not a float32 tensor)."""
    if not is_quantized(data.dtype):
        if scales is not None:
            raise ValueError(f"{name} apply to int8 / float8_e4m3 vectors only; these are {data.dtype}")
        return None
    if scales is None:
        raise ValueError(f"{data.dtype} vectors need their per-row {name} (float32, shape ({data.shape[0]},))")
    if not isinstance(scales, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(scales).__name__}")
    if scales.dtype != torch.float32:
        raise TypeError(f"{name} must be float32, got {scales.dtype}")
    if scales.shape != (data.shape[0],):
        raise ValueError(f"{name} must have shape ({data.shape[0]},), got {tuple(scales.shape)}")
    if scales.device != data.device:
        raise ValueError(f"{name} are on {scales.device} but the vectors are on {data.device}")
    if scales.requires_grad:
        scales = scales.detach()
    if check_values and scales.numel() and not bool((torch.isfinite(scales) & (scales >= 0)).all()):
        raise ValueError(f"{name} must be finite and non-negative")
    return scales


class DequantizedRows:
    """A read-only float32 view of quantised rows for the offline passes (graph build,
    codes) that read a corpus in slices: ``view[rows]`` dequantises only those rows."""

    def __init__(self, data: torch.Tensor, scales: torch.Tensor):
        self.data, self.scales = data, scales

    @property
    def shape(self):
        return self.data.shape

    @property
    def device(self):
        return self.data.device

    dtype = torch.float32

    def dim(self) -> int:
        return 2

    def __len__(self) -> int:
        return int(self.data.shape[0])

    def __getitem__(self, rows) -> torch.Tensor:
        if isinstance(rows, int):
            return dequantize(self.data, self.scales, slice(rows, rows + 1))[0]
        return dequantize(self.data, self.scales, rows)

    def to(self, device=None, dtype=None, **kwargs) -> torch.Tensor:
        """All rows dequantised (float32, or ``dtype``) on ``device``: for small corpora."""
        return dequantize(self.data, self.scales).to(device=device, dtype=dtype or torch.float32)

    def float(self) -> torch.Tensor:
        return dequantize(self.data, self.scales)
