"""Sub-tokens: a token's stored bits cut into groups, each an index of its own vocabulary
(Open-MAGVIT2's factorized vocabularies: ``split=(9, 9)`` turns 2^18 into two of 512); the
``subtokens.{i}.{j}`` tensors of a tokens file (``bitstream_spec.md`` appendix B)."""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np

from .errors import InputError


def check_split(sizes: Sequence[int], bits: int) -> Tuple[int, ...]:
    """Validate a sub-token split (positive sizes adding up to ``bits``) → tuple."""
    sizes = tuple(int(s) for s in sizes)
    if not sizes or any(s < 1 for s in sizes) or sum(sizes) != bits:
        raise InputError(f"split {','.join(map(str, sizes))} must be positive sizes adding up to "
                         f"the {bits} stored bits")
    return sizes


def split_tokens(tok: np.ndarray, sizes: Sequence[int]) -> List[np.ndarray]:
    """Sub-tokens of token indices ``tok`` (int64, any shape): one array per group of
    ``sizes`` (low bits first), bits ``Σ_{l<j} sizes_l`` … of each token as an index of
    ``2^sizes_j``."""
    parts, shift = [], 0
    for s in sizes:
        parts.append((tok >> shift) & ((1 << s) - 1))
        shift += s
    return parts


def parse_split(spec: Optional[str]) -> Optional[Tuple[int, ...]]:
    """"9,9" → (9, 9); None → None (:class:`InputError` for anything else)."""
    if spec is None:
        return None
    try:
        return tuple(int(x) for x in spec.split(","))
    except ValueError:
        raise InputError(f"--split {spec!r}: expected sizes like 9,9") from None
