"""Benchmarks of neuralcodec: rate-distortion against HEVC/VVC (``benchmarks.rd``), kernels, entropy coding."""
