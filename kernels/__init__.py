"""Fused q-net kernels in Triton, installed as ``engine.kernels``.

Modules: ``qnet_tile`` (the per-tile fused q-net), ``qnet_dense``, ``qnet_gather`` (the
kernels and their launchers), ``qnet_layers`` (the layer-by-layer GEMM scan),
``doc_decode`` (compressed int8 / fp8 e4m3 document rows to float32 in registers) and
``launch`` (tile sizes, grid, scratch). The flat weight
layout and the top-k keys they share with the CUDA kernels live beside the backends
(``engine.backends.qnet_pack``, ``engine.backends.topk_keys``). Nothing is imported here.
"""
