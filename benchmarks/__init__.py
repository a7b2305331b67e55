"""Benchmarks: minigrad against PyTorch, op by op and net by net.

``python -m benchmarks.run --device cpu --suite all`` (see ``benchmarks/README.md``).
Every figure is a median over repeated runs after warm-up, both libraries timed
alternately in one process on the same float32 inputs with the same thread count.
"""
