"""Triton kernels of fastunet, installed as ``fastunet.kernels``.

One op per file, each with its ``@triton.jit`` kernel beside the Python launcher that checks
shapes and picks the grid. Importing this package does not import triton; each op module does.
"""
