"""COCO run-length encoding in pure numpy, byte-for-byte what pycocotools' ``mask.encode`` writes.

A mask is flattened in column-major (Fortran) order; ``counts`` alternate runs of 0s and 1s,
starting with 0s (possibly an empty run). The compressed string is COCO's (``maskApi.c``
``rleToString``): each count, minus the count two places before it from the fourth on, in signed
5-bit groups offset by 48, bit 0x20 meaning "more groups follow".
"""
from __future__ import annotations

import numpy as np

__all__ = ["rle_counts", "rle_encode", "rle_string"]


def rle_counts(mask: np.ndarray) -> list[int]:
    """Uncompressed COCO run lengths of a 2-D mask."""
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    if flat.size == 0:
        return [0]
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], change, [flat.size]))
    counts = np.diff(bounds).tolist()
    return ([0] + counts) if flat[0] else counts


def rle_string(counts: list[int]) -> str:
    """COCO's compressed form of ``counts``."""
    out = []
    for i, count in enumerate(counts):
        x = int(count) - (int(counts[i - 2]) if i > 2 else 0)
        more = True
        while more:
            c = x & 0x1F
            x >>= 5  # arithmetic shift, like C on a signed long
            more = x != -1 if c & 0x10 else x != 0
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


def rle_encode(mask: np.ndarray) -> dict:
    """``{"size": [h, w], "counts": str}``: what COCO result files (and pycocotools' decode) take."""
    mask = np.asarray(mask)
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": rle_string(rle_counts(mask))}
