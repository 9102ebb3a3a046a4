"""Portable Triton kernels of this project (GEMM, flash attention) and a device-aware timer.

Importing this package is cheap; ``gemm`` and ``attention`` import Triton, ``timing`` imports torch.
"""
