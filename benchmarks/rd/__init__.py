"""Rate-distortion benchmark harness: mgv against HEVC (x265), VVC (vvenc) and AVC (x264).

Run ``python -m benchmarks.rd --inputs VIDEOS… [--frames N] [--max-size WxH] [--quick]``.

Modules: :mod:`.source` (inputs → raw sources), :mod:`.codecs` (one class per codec),
:mod:`.metrics` (PSNR/MS-SSIM/VMAF/LPIPS), :mod:`.bdrate` (Bjøntegaard wrapper),
:mod:`.cache` (per-point JSON cache), :mod:`.runner` (the loop), :mod:`.report` (JSON, markdown, plots).
"""
from .bdrate import BDResult, bd_rate
from .codecs import MGV, VVenC, X264, X265, make_codec
from .runner import BenchConfig, run_benchmark

__all__ = ["BDResult", "bd_rate", "MGV", "VVenC", "X264", "X265", "make_codec", "BenchConfig", "run_benchmark"]
