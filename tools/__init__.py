"""Developer tools of neuralcodec, run as modules from the repository root: ``python -m lab.train``,
``python -m lab.export``, ``python -m tools.fuzz_mgv`` and so on."""
