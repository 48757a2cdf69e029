"""The CUDA C++ sources of the fused q-net kernels, as package data.

Installed as ``engine.cuda_src`` (setup.py maps this folder there); the CUDA backend
reads the sources through ``importlib.resources`` and compiles them at first use.
"""
