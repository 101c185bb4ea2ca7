"""Self-contained HTML reports (every figure inlined as a PNG data URI).

Headings, titles, table headers and cells and ``alt`` texts are escaped here, where they become
HTML, so a class, run or metric name from a saved file can never inject markup. Section bodies
are HTML and are built by the callers from these helpers.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from pathlib import Path

from consistcam.utils import atomic_write

STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}
th:first-child,td:first-child{text-align:left}img{max-width:100%}h2{margin-top:1.6em}
.note{color:#555;font-size:90%}.better{color:#1a7f37}.worse{color:#c0392b}td.diff{background:#f7f7f7}
dl.glossary dt{font-weight:600;float:left;clear:left;width:15em}dl.glossary dd{margin-left:16em}"""


def metrics_table(results: dict[str, dict[str, float]], digits: int = 3) -> str:
    """Runs side by side: one column per run, one row per metric."""
    names = list(results)
    keys = [k for k in dict.fromkeys(k for r in results.values() for k in r)]
    head = "<tr><th>metric</th>" + "".join(f"<th>{html.escape(n)}</th>" for n in names) + "</tr>"
    rows = []
    for k in keys:
        cells = []
        for n in names:
            v = results[n].get(k)
            text = f"{v:.{digits}f}" if isinstance(v, float) else "" if v is None else html.escape(str(v))
            cells.append(f"<td>{text}</td>")
        rows.append(f"<tr><td>{html.escape(k)}</td>{''.join(cells)}</tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def _cell(v: object, digits: int) -> str:
    return f"{v:.{digits}f}" if isinstance(v, float) else "" if v is None else html.escape(str(v))


def comparison_table(results: dict[str, dict[str, float]], pairs: list[tuple[str, str]],
                     better: Callable[[str], str], describe: Callable[[str], str | None] = lambda k: None,
                     digits: int = 3, label: str = "metric") -> str:
    """Columns side by side, a "better" column (↑ / ↓) and one difference column per (column,
    reference) pair, each difference coloured by whether it is an improvement for that metric."""
    names = list(results)
    keys = [k for k in dict.fromkeys(k for r in results.values() for k in r)]
    arrows = {"higher": "↑", "lower": "↓"}
    head = (f"<tr><th>{html.escape(label)}</th><th title='the better direction'>better</th>"
            + "".join(f"<th>{html.escape(n)}</th>" for n in names)
            + "".join(f"<th>Δ {html.escape(a)} − {html.escape(b)}</th>" for a, b in pairs) + "</tr>")
    rows = []
    for k in keys:
        direction = better(k)
        tip = describe(k)
        title = f" title='{html.escape(tip)}'" if tip else ""
        cells = [f"<td>{_cell(results[n].get(k), digits)}</td>" for n in names]
        for a, b in pairs:
            va, vb = results[a].get(k), results[b].get(k)
            if not (isinstance(va, (int, float)) and isinstance(vb, (int, float))):
                cells.append("<td class='diff'></td>")
                continue
            d = float(va) - float(vb)
            mood = "" if not direction or d == 0 else "better" if (d > 0) == (direction == "higher") else "worse"
            cells.append(f"<td class='diff {mood}'>{d:+.{digits}f}</td>")
        rows.append(f"<tr><td{title}>{html.escape(k)}</td><td>{arrows.get(direction, '')}</td>{''.join(cells)}</tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def glossary(entries: dict[str, tuple[str, str]]) -> str:
    """One line per metric: what it means and which direction is better."""
    items = []
    for name, (meaning, better) in entries.items():
        direction = f" <i>{better} is better</i>" if better else ""
        items.append(f"<dt>{html.escape(name)}</dt><dd>{html.escape(meaning)}.{direction}</dd>")
    return f"<dl class='glossary'>{''.join(items)}</dl>"


def write_report(path: str | Path, title: str, sections: list[tuple[str, str]]) -> Path:
    """``sections``: (heading, HTML body) pairs; bodies may hold <img src='data:...'> figures."""
    body = "".join(f"<h2>{html.escape(h)}</h2>\n{content}\n" for h, content in sections)
    doc = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
           f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>\n{body}</body></html>")
    path = Path(path)
    atomic_write(path, lambda tmp: Path(tmp).write_text(doc, encoding="utf-8"))
    return path


def img(uri: str, alt: str = "") -> str:
    return f"<img src='{html.escape(uri)}' alt='{html.escape(alt)}'>"
