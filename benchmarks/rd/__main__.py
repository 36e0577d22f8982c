"""``python -m benchmarks.rd``: see :mod:`benchmarks.rd.cli`."""
import sys

from .cli import main

sys.exit(main())
