"""One way for every benchmark to print a target: ``measured (op) target → PASS/MISS``.

``make bench`` collects these lines; a benchmark calls :func:`verdict` once per target after its
interleaved repetitions, with the ratio measured in the same run (never an absolute time).

>>> verdict("toy ratio", 0.9, 1.0)
[PASS] toy ratio: 0.900 <= 1.000
True
"""

from __future__ import annotations

import operator

#: printed (once, as the GPU row of the targets table) by every GPU benchmark that finds no CUDA device
GPU_NOT_MEASURED = "GPU: not measured (no CUDA device)"

_OPS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt}


def verdict(name: str, measured: float, target: float, op: str = "<=", unit: str = "",
            detail: str = "") -> bool:
    """Print ``[PASS]`` or ``[MISS]`` for ``measured op target`` and return whether it passed."""
    if op not in _OPS:
        raise ValueError(f"op must be one of {sorted(_OPS)}; received {op!r}")
    ok = bool(_OPS[op](measured, target))
    tail = f" ({detail})" if detail else ""
    print(f"[{'PASS' if ok else 'MISS'}] {name}: {measured:.3f}{unit} {op} {target:.3f}{unit}{tail}",
          flush=True)
    return ok
