"""The class selection page: one self-contained HTML file, opened from disk, no server.

    >>> write_selection_page("results/select/selection.html", images, summary, apix=3.0,
    ...                      how="automatic rule", selection_file="results/select/selection.json")

Every class average is shown (a PNG embedded as base64) with its particle count, share,
resolution, posterior, ECA and the automatic rule's features; the ticks start as the
selection that produced the page (in the default mode, the automatic choice).  Clicking
a class ticks or unticks it; *Save selection* downloads ``selection.json``
(``{"selected": [class numbers]}``), which ``select_classes(selection_file=...)`` reads.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import os

import matplotlib.image
import numpy as np
import pandas as pd

from class2d.io.atomic import atomic_path

logger = logging.getLogger(__name__)

_STYLE = """
body { font-family: sans-serif; margin: 1em; background: #f4f4f4; color: #222; }
header p { max-width: 60em; }
.toolbar { position: sticky; top: 0; background: #f4f4f4; padding: .5em 0; z-index: 1; }
.toolbar button, .toolbar select { font-size: 1em; margin-right: .4em; }
#grid { display: flex; flex-wrap: wrap; gap: 8px; }
.card { width: 150px; background: #fff; border: 3px solid #bbb; border-radius: 6px;
        padding: 4px; cursor: pointer; font-size: 11px; user-select: none; }
.card.selected { border-color: #2a8a2a; background: #eaf7ea; }
.card img { width: 142px; height: 142px; display: block; background: #000; }
.card .title { font-weight: bold; font-size: 13px; }
.card .junk { color: #b22; }
.card input { float: right; }
"""

_SCRIPT = """
const cards = Array.from(document.querySelectorAll('.card'));
function refresh() {
  let n = 0, p = 0, total = 0;
  for (const card of cards) {
    const box = card.querySelector('input');
    card.classList.toggle('selected', box.checked);
    total += Number(card.dataset.particles);
    if (box.checked) { n += 1; p += Number(card.dataset.particles); }
  }
  document.getElementById('count').textContent =
    `${n} of ${cards.length} classes, ${p} of ${total} particles ` +
    `(${total ? (100 * p / total).toFixed(1) : 0} %) selected`;
}
for (const card of cards) {
  card.addEventListener('click', (event) => {
    const box = card.querySelector('input');
    if (event.target !== box) box.checked = !box.checked;
    refresh();
  });
}
function setAll(choose) {
  for (const card of cards) card.querySelector('input').checked = choose(card);
  refresh();
}
document.getElementById('all').onclick = () => setAll(() => true);
document.getElementById('none').onclick = () => setAll(() => false);
document.getElementById('auto').onclick = () => setAll((card) => card.dataset.auto === '1');
document.getElementById('sort').onchange = (event) => {
  const key = event.target.value, grid = document.getElementById('grid');
  const sign = key === 'number' ? 1 : -1;
  cards.slice().sort((a, b) => sign * (Number(a.dataset[key]) - Number(b.dataset[key])))
       .forEach((card) => grid.appendChild(card));
};
document.getElementById('save').onclick = () => {
  const selected = cards.filter((card) => card.querySelector('input').checked)
                        .map((card) => Number(card.dataset.number)).sort((a, b) => a - b);
  const text = JSON.stringify({selected: selected, source: SOURCE}, null, 1);
  const link = document.createElement('a');
  link.href = URL.createObjectURL(new Blob([text], {type: 'application/json'}));
  link.download = 'selection.json';
  document.body.appendChild(link);
  link.click();
  link.remove();
};
refresh();
"""


def write_selection_page(path: str | os.PathLike, images: np.ndarray, summary: pd.DataFrame,
                         apix: float, how: str = "automatic rule",
                         selection_file: str | os.PathLike | None = None) -> str:
    """Write the page; returns its path.

    images: (K, d, d) class averages, row k described by ``summary`` row k (columns from
    :func:`class2d.select.summarize` plus ``selected``); apix: Å/px; how: what made the
    ticks; selection_file: where the workflow looks for the saved selection (shown to the user).
    """
    path = os.fspath(path)
    where = (f"Move the downloaded file to <code>{html.escape(os.fspath(selection_file))}</code> "
             f"and run the workflow again." if selection_file else
             "Pass the downloaded file to <code>class2d.select.select_classes(selection_file=...)"
             "</code>.")
    source = json.dumps(path).replace("</", "<\\/")   # no "</script>" inside the script
    threshold = summary.attrs.get("zscore_threshold")
    cards = "\n".join(_card(image, row, threshold)
                      for image, (_, row) in zip(images, summary.iterrows()))
    particles = ("" if threshold is None else
                 f"\nThe particles of the selected classes with rlnParticleSelectZScore above "
                 f"{threshold:.2f} (they do not fit their class: aggregates, neighbours, edges, "
                 f"outlier pixels) are rejected; each class shows the share of its particles "
                 f"above it.")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>class2d: select 2D classes</title>
<style>{_STYLE}</style></head>
<body>
<header><h1>Select 2D classes</h1>
<p>{len(summary)} class averages ({images.shape[-1]} px, {apix:.3g} Å/px).
Ticks: {html.escape(how)}.
Green classes are selected; click a class to change it. <b>Save selection</b> downloads
<code>selection.json</code>. {where}
A red line names why the automatic rule calls a class junk; quality ≥ 1 passes it.{particles}</p></header>
<div class="toolbar">
<button id="save">Save selection</button><button id="auto">Automatic choice</button>
<button id="all">All</button><button id="none">None</button>
<label>Sort by <select id="sort"><option value="number">class number</option>
<option value="particles">particles</option><option value="quality">quality</option>
</select></label>
<span id="count"></span></div>
<div id="grid">
{cards}
</div>
<script>const SOURCE = {source};
{_SCRIPT}</script>
</body></html>
"""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(page)
    logger.info("wrote the selection page %s", path)
    return path


def _card(image: np.ndarray, row: pd.Series, threshold: float | None = None) -> str:
    number = int(row["rlnClassNumber"])
    checked = " checked" if bool(row["selected"]) else ""
    quality = float(row["quality"])
    lines = [f"{int(row['particles'])} particles ({100 * float(row['share']):.1f} %)",
             f"resolution {_number(row.get('resolution_A'), '.1f', ' Å')}",
             f"posterior {_number(row.get('posterior'), '.2f')}, "
             f"ECA {_number(row.get('eca'), '.2f')}",
             f"contrast {float(row['contrast']):.3g}, edge {_number(row['edge_ratio'], '.2f')}",
             f"off-centre {float(row['offcentre']):.3f}, quality {_number(quality, '.2f')}"]
    if threshold is not None:
        lines.append(f"above z {threshold:.2f}: {100 * float(row['zscore_drop']):.1f} % of "
                     f"its particles")
    verdict = ('<div>automatic: good</div>' if row["auto"] else
               f'<div class="junk">automatic: junk ({html.escape(str(row["reasons"]))})</div>')
    return (f'<div class="card{" selected" if checked else ""}" id="card-{number}" '
            f'data-number="{number}" data-particles="{int(row["particles"])}" '
            f'data-quality="{min(quality, 1e6):.6g}" data-auto="{int(bool(row["auto"]))}">'
            f'<input type="checkbox" id="class-{number}"{checked}>'
            f'<div class="title">class {number}</div>'
            f'<img alt="class {number}" src="data:image/png;base64,{_png(image)}">'
            + "".join(f"<div>{html.escape(line)}</div>" for line in lines) + verdict + "</div>")


def _number(value, spec: str, unit: str = "") -> str:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return "–"
    if not np.isfinite(value):
        return "∞" if value > 0 else "–"
    return f"{value:{spec}}{unit}"


def _png(image: np.ndarray) -> str:
    """An average as a base64 PNG, grey levels from its 0.5–99.5 % range."""
    image = np.asarray(image, np.float64)
    low, high = np.percentile(image, [0.5, 99.5])
    if high <= low:
        low, high = low - 1.0, high + 1.0
    buffer = io.BytesIO()
    matplotlib.image.imsave(buffer, image, cmap="gray", vmin=low, vmax=high, format="png",
                            origin="lower")
    return base64.b64encode(buffer.getvalue()).decode("ascii")
