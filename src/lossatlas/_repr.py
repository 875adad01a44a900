"""Short reprs for notebooks: a few lines of text (``__repr__``) or a small table (``_repr_html_``),
never tensors. Results keep their full contents in their fields and ``summary()``/``to_dict()``."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

#: the longest text repr of a result (characters); longer texts are cut with "…"
MAX_REPR = 600


def num(v: Any, fmt: str = ".4g") -> str:
    """A number for people (``None`` as "—")."""
    if v is None:
        return "—"
    try:
        return format(float(v), fmt)
    except (TypeError, ValueError):
        return str(v)


def text(name: str, fields: Sequence[tuple[str, Any]], extra: Sequence[str] = ()) -> str:
    """``Name(k=v, …)`` then at most a few indented lines, cut at :data:`MAX_REPR` characters."""
    head = f"{name}(" + ", ".join(f"{k}={v}" for k, v in fields) + ")"
    out = "\n".join([head, *(f"  {line}" for line in extra)])
    return out if len(out) <= MAX_REPR else out[:MAX_REPR - 1] + "…"


def table(title: str, rows: Sequence[tuple[str, Any]], foot: str = "") -> str:
    """A small HTML table: a bold title, one row per field, an optional footnote."""
    body = "".join(f"<tr><th style='text-align:left;padding-right:1em'>{html.escape(str(k))}</th>"
                   f"<td style='text-align:left'>{html.escape(str(v))}</td></tr>" for k, v in rows)
    note = f"<div style='color:#666;font-size:90%'>{html.escape(foot)}</div>" if foot else ""
    return (f"<div class='lossatlas-result'><b>{html.escape(title)}</b>"
            f"<table style='border-collapse:collapse'>{body}</table>{note}</div>")
