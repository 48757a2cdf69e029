"""Fused q-net kernels in Triton (dense scan, fused top-k scan, gather) and the helpers the
Triton and CUDA backends share.

Modules: ``qnet_tile`` (the per-tile fused q-net), ``qnet_dense``, ``qnet_gather`` (the
kernels and their launchers), ``launch`` (tile sizes, grid, scratch), ``qnet_pack`` (the
flat weight layout) and ``topk_keys`` (the top-k sort keys and merge). Nothing is imported
here: ``qnet_pack`` and ``topk_keys`` need only torch and serve the CUDA backend on
machines without Triton.
"""
