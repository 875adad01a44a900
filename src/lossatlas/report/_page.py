"""The page: a section registry, the shared scales of several targets, and the HTML around them.

A section is one function ``render(page) -> html`` registered with :func:`section`; it draws every
target side by side (``page.columns``) and writes each number with :meth:`Page.num`, which records
where the number is stored (``<target>/<file>#<field>``) in a ``data-key`` attribute and in the
page's JSON block, so a test can check that the page says what the files hold.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import bad_value
from ._compute import TargetResult, slug


#: the stored results a section can draw from (``compute`` makes only those the page's sections need)
RESULTS = ("plane", "slices", "audit", "curvature")


@dataclass(frozen=True)
class Section:
    name: str
    title: str
    render: Callable[[Page], str]
    doc: str = ""
    needs: tuple[str, ...] = RESULTS


#: the report's sections in page order (``section()`` adds one)
SECTIONS: dict[str, Section] = {}


def section(name: str, title: str, *, needs: Sequence[str] = RESULTS):
    """Register ``render(page) -> html`` as the report section ``name`` (shown under ``title``), drawing from
    the stored results ``needs`` (a subset of :data:`RESULTS`; default all)."""
    unknown = [n for n in needs if n not in RESULTS]
    if unknown:
        raise bad_value("report.section", "needs", f"a subset of {RESULTS}", list(needs))

    def deco(fn: Callable[[Page], str]) -> Callable[[Page], str]:
        SECTIONS[name] = Section(name, title, fn, (fn.__doc__ or "").strip().split("\n")[0], tuple(needs))
        return fn
    return deco


def esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


@dataclass
class Page:
    """What the sections see: the targets' stored results and the page's shared scales."""

    targets: list[TargetResult]
    files: str                      # the results folder, relative to the page (``report_files``)
    numbers: dict[str, float | None] = field(default_factory=dict)
    scripts: list[str] = field(default_factory=list)
    _figures: int = 0

    def key(self, target: TargetResult, where: str) -> str:
        return f"{slug(target.name)}/{where}"

    def num(self, target: TargetResult, where: str, value: Any, fmt: str = ".4g", unit: str = "") -> str:
        """A number of the page: its text, with the stored value and where it is stored as attributes."""
        key = self.key(target, where)
        v = None if value is None else float(value)
        if v is not None and not math.isfinite(v):
            v = None
        self.numbers[key] = v
        text = "–" if v is None else (format(int(v), fmt) if fmt == "d" else format(v, fmt))
        return (f'<span class="num" data-key="{esc(key)}" data-value="{"null" if v is None else repr(v)}">'
                f"{esc(text)}{esc(unit)}</span>")

    def columns(self, cells: Sequence[str]) -> str:
        """Targets side by side (one column each)."""
        inner = "".join(f'<div class="col"><h3>{esc(t.name)}</h3>{c}</div>' for t, c in zip(self.targets, cells))
        return f'<div class="row">{inner}</div>'

    def png(self, fig, alt: str, *, dpi: int = 80) -> str:
        """A matplotlib figure as an inline PNG (readable without JavaScript)."""
        import matplotlib.pyplot as plt

        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
        plt.close(fig)
        data = base64.b64encode(buf.getvalue()).decode()
        return f'<img class="static" alt="{esc(alt)}" src="data:image/png;base64,{data}">'

    def plotly(self, fig, *, height: int = 420, static: str = "") -> str:
        """A plotly figure as a div (plotly.js itself is inlined once in the page's head). ``static``: the
        same picture as an inline image (:meth:`png`), shown until the interactive one is drawn, and in its
        place without JavaScript, when plotly fails (no WebGL) and in print."""
        self._figures += 1
        div = f"lossatlas-fig-{self._figures}"
        spec = fig.to_plotly_json()
        payload = json.dumps({"data": spec.get("data", []), "layout": spec.get("layout", {})},
                             default=_plotly_default)
        hide = (f".then(function(){{var s=document.getElementById({json.dumps(div + '-static')});"
                f"if(s){{s.classList.add('drawn');}}}})" if static else "")
        self.scripts.append(f"Plotly.newPlot({json.dumps(div)}, ...(function(s){{return [s.data, s.layout, "
                            f"{{responsive: true, displaylogo: false}}]}})({payload})){hide};")
        still = f'<div class="static3d" id="{div}-static">{static}</div>' if static else ""
        return (f'{still}<div class="plotly" id="{div}" style="height:{height}px"></div><noscript><p class="muted">'
                f"The rotatable 3-D view needs JavaScript; the static 3-D picture above shows the same stored "
                f"values.</p><style>.plotly{{display:none}}</style></noscript>")


def _plotly_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return [None if isinstance(v, float) and not math.isfinite(v) else v for v in obj.ravel().tolist()] \
            if obj.ndim <= 1 else [_plotly_default(r) for r in obj]
    if isinstance(obj, (np.floating,)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return str(obj)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1500px;padding:1em 2em;
color:#1d2430;background:#fff;line-height:1.45}
h1{margin:.2em 0}h2{border-bottom:2px solid #dde3ea;padding-bottom:.2em;margin-top:1.6em}
h3{margin:.3em 0;font-size:1.05em}
.row{display:flex;gap:1.2em;flex-wrap:wrap}
.col{flex:1 1 380px;min-width:340px;background:#f7f9fb;border:1px solid #e3e8ee;
border-radius:6px;padding:.6em .9em}
.verdict{font-size:1.25em;font-weight:700}.proven{color:#b3261e}.notfound{color:#1d6b35}
.banner{background:#fff3cd;border:1px solid #e0b84d;padding:.6em 1em;border-radius:6px;margin:.8em 0}
table{border-collapse:collapse;font-size:.92em}td,th{padding:.15em .6em;border-bottom:1px solid #e3e8ee;text-align:left;
vertical-align:top}th{font-weight:600}code,pre{background:#eef2f6;border-radius:3px;padding:.05em .3em;font-size:.9em}
pre{padding:.5em;white-space:pre-wrap;word-break:break-all}img.static{max-width:100%;height:auto}
.muted{color:#5a6675;font-size:.9em}nav a{margin-right:1em}
.static3d.drawn{display:none}@media print{.static3d.drawn{display:block}.plotly{display:none}}
"""

# errors of the page's scripts are written into the DOM (data-js-errors) so a headless browser's
# --dump-dom shows them; data-js-done says the scripts ran to the end
_GUARD = """
(function(){var errs=[];function note(m){errs.push(String(m));document.documentElement.setAttribute('data-js-errors',
errs.join(' | '));}window.addEventListener('error',function(e){note(e.message||e);});
window.addEventListener('unhandledrejection',function(e){note(e.reason);});var ce=console.error;
console.error=function(){note(Array.prototype.join.call(arguments,' '));return ce.apply(console,arguments);};})();
"""


def assemble(page: Page, title: str, sections: Sequence[Section], *, plotly_js: bool = True) -> str:
    """The whole page: head (CSS, the error guard, plotly.js once), the sections, the JSON block."""
    bodies = []
    for sec in sections:
        bodies.append(f'<section id="sec-{esc(sec.name)}" data-section="{esc(sec.name)}">'
                      f"<h2>{esc(sec.title)}</h2>{sec.render(page)}</section>")
    banner = ""
    running = [(t, t.incomplete) for t in page.targets if t.incomplete]
    if running:
        items = "".join(f"<li>{esc(t.name)}: {esc('; '.join(inc))}</li>" for t, inc in running)
        banner = (f'<div class="banner" id="incomplete" data-incomplete="1"><b>Incomplete:</b> some stores are still '
                  f"being computed (points done / total); their missing points are blank. Re-run the same "
                  f"command to finish them (done chunks are reused).<ul>{items}</ul></div>")
    nav = "".join(f'<a href="#sec-{esc(s.name)}">{esc(s.title)}</a>' for s in sections)
    js = ""
    if plotly_js and page.scripts:
        from plotly.offline import get_plotlyjs

        js = f"<script>{get_plotlyjs()}</script>"
    data = json.dumps({"targets": [t.name for t in page.targets], "folders": {t.name: f"{page.files}/{slug(t.name)}"
                                                                              for t in page.targets},
                       "sections": [s.name for s in sections], "numbers": page.numbers}, allow_nan=False)
    data = data.replace("</", "<\\/")
    run = ("<script>(function(){try{" + "\n".join(page.scripts) + "}catch(e){console.error(e&&e.stack||e);}"
           "document.documentElement.setAttribute('data-js-done','1');})();</script>") if page.scripts else \
        "<script>document.documentElement.setAttribute('data-js-done','1');</script>"
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style>'
            f"<script>{_GUARD}</script>{js}</head><body><h1>{esc(title)}</h1>"
            f'<p class="muted">Every number below is read from the stored results in <code>{esc(page.files)}/</code> '
            f"(open them with <code>lossatlas info</code>, <code>lossatlas plot</code>, "
            f"<code>lossatlas verify</code>). Static figures and tables need no JavaScript; the 3-D views do.</p>"
            f"{banner}<nav>{nav}</nav>{''.join(bodies)}"
            f'<script type="application/json" id="lossatlas-data">{data}</script>'
            f"{run}</body></html>")
