"""Deterministic synthetic data with the structure of real embeddings and trained q-nets.

Document vectors (compare the debian-minilm data set: all-MiniLM-L6-v2 vectors have
norm about 3, a shared mean of norm about 1.2 and a centred spectrum decaying from about
0.64 to 0.09 by the 200th direction) are drawn as::

    x = mean + R @ (s * (z_cluster * c + z_doc * w))

with a random rotation ``R``, a power-law spectrum ``s``, Zipf-sized clusters and a
shared mean direction. Generation goes chunk by chunk, each chunk seeded by
``(seed, chunk)``, so any size streams with one copy in memory (or none: see
:func:`write_index`) and the same seed always gives the same vectors.

Q-nets (:func:`qnets`) have the trained ones' scale (weight std about 0.7, first-bias std
about 3) and their structure: each query has an intent direction in document space, and
the score is a smooth, mostly monotone function of it (random Gaussian q-nets rank almost
without regard to where documents lie, unlike trained ones; see docs/search.md,
"Synthetic q-nets").
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch

from .devices import as_device
from .qnet import QNet
from .qnet_config import QNetConfig

CHUNK = 1 << 16  # rows per yielded chunk
_UNIT = 1 << 12  # rows per seeded unit: a corpus of n rows is a prefix of any larger one
_SPECTRUM_POWER = 0.45
_TRAINED_WEIGHT_STD = 0.7  # std of the debian-minilm checkpoint's hidden q-net weights  # fitted to the centred spectrum of the MiniLM vectors


class CorpusModel:
    """The fixed parameters of a synthetic corpus (mean, rotation, spectrum, clusters)."""

    def __init__(self, dim: int, seed: int = 0, num_clusters: int | None = None,
                 cluster_share: float = 0.4, norm: float = 3.0, mean_norm: float = 1.2,
                 device=None):
        if dim <= 0:
            raise ValueError(f"dim must be positive, got {dim}")
        self.dim, self.seed = dim, seed
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        g = torch.Generator().manual_seed(seed * 1_000_003 + 17)
        self.num_clusters = num_clusters or 1024
        mean = torch.randn(dim, generator=g)
        self.mean = mean / mean.norm() * mean_norm
        # Random orthonormal basis: QR of a Gaussian matrix.
        self.rotation, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g))
        s = (torch.arange(dim, dtype=torch.float32) + 1) ** -_SPECTRUM_POWER
        # Scale so that the centred part has the real vectors' energy.
        s *= math.sqrt(max(norm**2 - mean_norm**2, 1e-6)) / s.norm()
        self.spectrum = s
        self.cluster_scale = math.sqrt(cluster_share)
        self.doc_scale = math.sqrt(1 - cluster_share)
        self.centers = torch.randn(self.num_clusters, dim, generator=g)
        # Zipf-like cluster sizes: a few large topics, a long tail.
        p = 1.0 / (torch.arange(self.num_clusters, dtype=torch.float64) + 10.0)
        self.cluster_probs = p / p.sum()
        # The model's parameters are drawn on the CPU (the same on every device); only
        # the per-unit draws below use the device's own generator.
        for name in ("mean", "rotation", "spectrum", "centers", "cluster_probs"):
            setattr(self, name, getattr(self, name).to(self.device))

    def _embed(self, z: torch.Tensor) -> torch.Tensor:
        return self.mean + (z * self.spectrum) @ self.rotation.T

    def _unit(self, u: int) -> torch.Tensor:
        g = torch.Generator(device=self.device).manual_seed((self.seed * 1_000_003 + u) * 7919 + 3)
        c = torch.multinomial(self.cluster_probs, _UNIT, replacement=True, generator=g)
        z = torch.randn(_UNIT, self.dim, generator=g, device=self.device)
        return self.centers[c] * self.cluster_scale + z * self.doc_scale

    def rows(self, start: int, stop: int) -> torch.Tensor:
        """Vectors ``[start, stop)`` as float32 (``start`` a multiple of the unit).

        Whole units are generated and embedded, then cut: a row's value (rounding
        included) never depends on the size of the corpus or chunk it is part of.
        """
        assert start % _UNIT == 0
        units = [self._embed(self._unit(u)) for u in range(start // _UNIT, -(-stop // _UNIT))]
        return torch.cat(units)[: stop - start] if units else torch.empty(0, self.dim, device=self.device)


def vector_chunks(n: int, dim: int, *, seed: int = 0, dtype=torch.float32, **model_kwargs):
    """Yield the ``n`` synthetic vectors in chunks of at most ``CHUNK`` rows."""
    model = CorpusModel(dim, seed, **model_kwargs)
    for s in range(0, n, CHUNK):
        yield model.rows(s, min(s + CHUNK, n)).to(dtype)


def vectors(n: int, dim: int, *, seed: int = 0, dtype=torch.float32, device=None,
            **model_kwargs) -> torch.Tensor:
    """``(n, dim)`` synthetic document vectors in ``dtype`` (only one copy is held).

    ``device``: where the vectors are drawn and kept (default CPU). A CUDA device draws
    them with its own generator, far faster at millions of rows; the corpus has the same
    model (mean, spectrum, clusters) but other individual rows than the CPU's.
    """
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    device = as_device(device) if device is not None else torch.device("cpu")
    out = torch.empty(n, dim, dtype=dtype, device=device)
    s = 0
    for c in vector_chunks(n, dim, seed=seed, dtype=dtype, device=device, **model_kwargs):
        out[s : s + len(c)] = c
        s += len(c)
    return out


def write_index(path: str | os.PathLike, n: int, dim: int, *, seed: int = 0,
                dtype=torch.bfloat16, progress: bool = False, **model_kwargs) -> None:
    """Write a synthetic index of ``n`` vectors to ``path`` without holding it in memory.
    ``dtype``: a float dtype, or ``torch.int8`` / ``torch.float8_e4m3fn`` (each chunk
    quantised as it streams, see :mod:`engine.quant`)."""
    from . import quant, storage
    from .index import write_index_files

    scales = torch.empty(n, dtype=torch.float32) if quant.is_quantized(dtype) else None
    chunks = vector_chunks(n, dim, seed=seed, dtype=torch.float32 if scales is not None else dtype, **model_kwargs)
    if progress:
        from tqdm import tqdm

        chunks = tqdm(chunks, total=math.ceil(n / CHUNK), desc="vectors", unit="chunk")
    if scales is not None:
        def quantized(chunks):
            s = 0
            for c in chunks:
                q, scales[s : s + len(c)] = quant.quantize(c, dtype)
                s += len(c)
                yield q

        chunks = quantized(chunks)
    # write_index_files consumes the vector chunks before it writes the scales they fill.
    write_index_files(os.fspath(path), chunks, n, dim, storage.TORCH_TO_NAME[dtype], scales=scales)


def qnets(num_queries: int, dims: list[int] | None = None, *, seed: int = 0,
          corpus_seed: int = 0, dtype=torch.float32, config: QNetConfig | None = None,
          noise: float = 1.0, intent: float = 1.0, **model_kwargs) -> QNet:
    """``num_queries`` q-nets with ``vector_dimensions = dims`` (default [768]*3 + [1]).

    Each query q picks an intent direction ``u_q`` (the centred direction of a document
    drawn from the corpus model with ``corpus_seed``). Every hidden layer is a mix of a
    Gaussian part and a rank-one part reading ``u_q`` (first layer) or the previous
    layer's "signal" unit pattern, with per-unit biases spread like trained ones, so the
    last hidden layer encodes ``x . u_q`` as a ramp of active units that the output layer
    reads monotonically: a smooth score surface with one dominant direction.
    ``noise`` scales the Gaussian parts and ``intent`` the rank-one parts (1.0: the
    values checked against the trained q-nets in bench/check_synthetic_qnets.py).
    """
    dims = list(dims) if dims is not None else [768, 768, 768, 1]
    if len(dims) < 2 or dims[-1] != 1:
        raise ValueError(f"dims must be [d, h_1, ..., h_L, 1], got {dims}")
    L = len(dims) - 2
    d = dims[0]
    model = CorpusModel(d, corpus_seed, **model_kwargs)
    g = torch.Generator().manual_seed(seed * 104_729 + 11)
    Q = num_queries
    # Intent directions from documents of the corpus distribution.
    c = torch.multinomial(model.cluster_probs, Q, replacement=True, generator=g)
    z = model.centers[c] * model.cluster_scale + torch.randn(Q, d, generator=g) * model.doc_scale
    u = (z * model.spectrum) @ model.rotation.T
    u = u / u.norm(dim=1, keepdim=True)
    signal = u
    weights, biases = [], []
    for i in range(L):
        din, dout = dims[i], dims[i + 1]
        a = torch.randn(Q, dout, generator=g)
        a = a / a.norm(dim=1, keepdim=True) * math.sqrt(dout)
        # Gaussian part at half the first attempt's scale: measured against the trained
        # q-nets (bench/check_synthetic_qnets.py), the first attempt was far less linear
        # around the corpus than trained ones (top-300 by the linearisation held 0.77 of
        # the exact top-10 against 0.94 for trained ones).
        gauss = torch.randn(Q, din, dout, generator=g) * (0.225 if i == 0 else 0.25) * noise
        strength = (12.0 if i == 0 else 0.5) * intent
        w = gauss + strength * signal[:, :, None] * a[:, None, :] / math.sqrt(din) * math.sqrt(din / 384)
        weights.append(w)
        biases.append(torch.randn(Q, dout, generator=g) * (3.0 if i == 0 else 1.0))
        signal = a / a.norm(dim=1, keepdim=True)
    w_out = 0.6 * torch.randn(Q, dims[L], 1, generator=g) + 0.5 * signal[:, :, None] * math.sqrt(dims[L]) / 4
    weights.append(w_out)
    cfg = config or QNetConfig()
    if cfg.layer_norm and cfg.activation == "relu":
        # relu is positively homogeneous and the layer norm undoes any scale, so scaling a
        # hidden layer's weights and bias together changes no score: bring the weights to
        # the trained q-nets' scale (std about 0.7) for realistic magnitudes in the kernels.
        for i in range(L):
            c = _TRAINED_WEIGHT_STD / float(weights[i].std())
            weights[i] = weights[i] * c
            biases[i] = biases[i] * c
    return QNet([w.to(dtype) for w in weights], [b.to(dtype) for b in biases], cfg)
