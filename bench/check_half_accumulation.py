"""Would AVX512-FP16 pay for float16 vectors? The accuracy half of the answer, measured on
the debian-minilm q-nets (float16, 384-384-384-1) and documents (float16).

AVX512-FP16's multiply-add (vfmadd231ph) accumulates in float16: a q-net layer computed
with it sums each output's 384 products in float16. This script scores documents three
ways, each emulated with torch on the CPU, and compares them with the float32 reference
(float16 inputs converted exactly):

* ``bf16 in, fp32 acc``: what the engine's bfloat16 kernels (AMX, AVX512-BF16) compute:
  weights and activations rounded to bfloat16, float32 accumulation;
* ``fp16 in, fp32 acc``: float16 inputs and activations, float32 accumulation (what AMX-FP16
  or a float16 dot product with float32 accumulation would compute);
* ``fp16 in, fp16 acc``: float16 inputs, each multiply-add rounded to float16 in turn along
  k (what a GEMM on vfmadd231ph computes, every lane accumulating one output).

Printed per way: the largest and median score error relative to each query's largest
|score|, and how much of the reference's top 10 it keeps (recall@10).

    python bench/check_half_accumulation.py [--queries 16] [--docs 2048]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "debian-minilm"


def layer_product(x, w, mode):
    """x (Q, n, k) @ w (Q, k, m) in float32 with the inputs and accumulation of ``mode``."""
    if mode == "bf16 in, fp32 acc":
        return torch.bmm(x.bfloat16().float(), w.bfloat16().float())
    if mode == "fp16 in, fp32 acc":
        return torch.bmm(x.half().float(), w.half().float())
    # float16 accumulation along k: one rounding per multiply-add, in order
    xh, wh = x.half(), w.half()
    acc = torch.zeros(x.shape[0], x.shape[1], w.shape[2], dtype=torch.float16)
    for k in range(x.shape[2]):
        acc = (acc.float() + xh[:, :, k : k + 1].float() * wh[:, k : k + 1, :].float()).half()
    return acc.float()


def qnet_scores(W, B, config, x, mode=None):
    """The q-net on x (Q, n, d); ``mode`` None: the float32 reference."""
    L = len(B)
    for i in range(L):
        ln_before, res, ln_after = config.layer_ops(i, L)
        y = torch.bmm(x, W[i]) if mode is None else layer_product(x, W[i], mode)
        y = torch.relu(y + B[i][:, None, :])
        if ln_before:
            y = F.layer_norm(y, y.shape[-1:], eps=config.eps)
        if res:
            y = y + x
        if ln_after:
            y = F.layer_norm(y, y.shape[-1:], eps=config.eps)
        x = y
    return torch.bmm(x, W[L])[..., 0]


def main(argv=None) -> int:
    from engine.qnet import QNet

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--queries", type=int, default=16)
    p.add_argument("--docs", type=int, default=2048)
    args = p.parse_args(argv)
    data = Path(args.data)
    qn = QNet.load(data / "qnets.dev64.safetensors")
    W = [w[: args.queries].float() for w in qn.weights]
    B = [b[: args.queries].float() for b in qn.biases]
    docs = torch.from_numpy(np.load(data / "docs.f16.npy")[: args.docs]).float()
    x = docs.expand(len(B[0]) if B else W[0].shape[0], -1, -1).contiguous()
    ref = qnet_scores(W, B, qn.config, x)
    top = ref.topk(10, dim=1).indices
    print(f"{W[0].shape[0]} debian q-nets x {docs.shape[0]} documents, q-net dims "
          f"{[w.shape[1] for w in W]} -> 1; errors relative to each query's largest |score|")
    print("| way | max error | median error | recall@10 vs fp32 |")
    print("|---|---|---|---|")
    for mode in ("bf16 in, fp32 acc", "fp16 in, fp32 acc", "fp16 in, fp16 acc"):
        s = qnet_scores(W, B, qn.config, x, mode)
        rel = (s - ref).abs() / ref.abs().max(dim=1, keepdim=True).values
        got = s.topk(10, dim=1).indices
        rec = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(top.tolist(), got.tolist())])
        print(f"| {mode} | {float(rel.max()):.2e} | {float(rel.median()):.2e} | {rec:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
