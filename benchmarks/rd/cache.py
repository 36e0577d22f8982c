"""Per-(sequence, codec, rate point) result cache: one JSON file each, keyed by what produced it.

The key hashes the source's sha256, the codec's name and tool version (``mgv``: code and model
hashes), the command lines (paths replaced by placeholders), the rate point and the metrics'
version. A result is reused only when its stored key matches, so a re-run recomputes exactly the
entries whose inputs changed. Files live at ``<root>/<sequence>/<codec>/<point>.json``.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Optional


def cache_key(fields: dict) -> str:
    """sha256 of the canonical JSON of ``fields``."""
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


class ResultCache:
    """JSON result files under ``root`` (see module docstring)."""

    def __init__(self, root: Path, enabled: bool = True):
        self.root = Path(root)
        self.enabled = enabled  # False: never read (still write), i.e. recompute everything
        self.hits = 0  # results served from the cache in this run
        self.misses = 0  # results computed in this run

    def path(self, sequence: str, codec: str, label: str) -> Path:
        return self.root / sequence / codec / f"{label}.json"

    def get(self, sequence: str, codec: str, label: str, fields: dict) -> Optional[dict]:
        """The cached result if its key matches ``fields``, else None (counted as a miss)."""
        p = self.path(sequence, codec, label)
        if self.enabled and p.exists():
            try:
                data = json.loads(p.read_text())
            except (OSError, ValueError):
                data = {}
            if data.get("key") == cache_key(fields):
                self.hits += 1
                return data["result"]
        self.misses += 1
        return None

    def put(self, sequence: str, codec: str, label: str, fields: dict, result: dict) -> None:
        """Store ``result`` atomically (write a temporary file, then rename)."""
        p = self.path(sequence, codec, label)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps({"key": cache_key(fields), "key_fields": fields, "result": result},
                                  indent=1, sort_keys=True))
        tmp.replace(p)
