"""Developer tools of neuralcodec, run as modules from the repository root:
``python -m tools.eval_model``, ``tools.frame_compare``, ``tools.fuzz_mgv``, ``tools.make_conformance``,
``tools.model_stats``. They use the package's public API only; training and model making live in
lab/."""
