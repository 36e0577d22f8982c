"""Developer tools of neuralcodec, run as modules from the repository root: ``python -m tools.train``,
``python -m tools.export``, ``python -m tools.fuzz_mgv`` and so on."""
