"""Publication tables from a :class:`~genbench.reporting.aggregate.ComparisonTable`: plain text for
the terminal, GitHub Markdown, LaTeX (booktabs) and CSV.

The text, Markdown and LaTeX renderers show the same content: one row per model, then the
real-data reference and published numbers set apart; the mean over seeds with its spread at a
precision the spread justifies; the best model value per column marked; and around the table the
dataset, budget and split, the feature extractor behind each metric, where published numbers
come from, and the table's notes. CSV carries the raw numbers at full precision instead.
"""

from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass
from string import ascii_lowercase

from genbench.core.errors import UsageError
from genbench.reporting.aggregate import (
    ROW_MODEL,
    ROW_PUBLISHED,
    Cell,
    ComparisonTable,
    MetricColumn,
)
from genbench.reporting.summary import format_table

FORMATS = ("csv", "latex", "markdown")
EXTENSIONS = {"csv": ".csv", "latex": ".tex", "markdown": ".md"}
# What the number after the mean means, for captions.
SPREADS = {"std": "mean ± sample standard deviation over seeds",
           "ci95": "mean [95% Student-t interval of the mean] over seeds"}
ARROWS = {"higher": "↑", "lower": "↓"}
MAX_DECIMALS = 6
MISSING = "–"
# One pass, character by character, so that the replacements are never escaped again.
LATEX_REPLACEMENTS = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}",  # OT1 prints ¡ ¿ — for < > |
    "±": r"$\pm$", "²": r"$^2$", "†": r"$^\dagger$", "–": "--", "—": "---", "↑": r"$\uparrow$",
    "↓": r"$\downarrow$", "·": r"$\cdot$", "×": r"$\times$",
}


def _fixed(value: float, decimals: int) -> str:
    text = f"{value:.{decimals}f}"
    # "-0.00" reads as a negative result; the sign of a value that rounds to zero is noise.
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def _significant(value: float) -> str:
    """Four significant digits; whole numbers from 10⁴ to 10¹⁵ in plain notation (all digits)."""
    text = f"{value:.4g}"
    if "e" in text and math.isfinite(value) and 1 <= abs(value) < 1e15:
        return _fixed(value, 0)
    return text


def _spread_digits(std: float | None) -> tuple[int, float] | None:
    """The decimals to show for ``std`` (two significant digits, clipped to 0..6) and ``std``
    rounded to two significant digits; None when there is no positive spread."""
    if std is None or not math.isfinite(std) or std <= 0:
        return None
    decimals = 1 - math.floor(math.log10(std))
    # Rounding can carry into a new digit (0.0996 -> 0.100): count again so std keeps two digits.
    decimals = 1 - math.floor(math.log10(round(std, decimals)))
    return min(max(decimals, 0), MAX_DECIMALS), round(std, decimals)


def format_value(mean: float, std: float | None) -> tuple[str, str]:
    """The mean and spread as text with matching decimals: std to two significant digits, the mean
    to the same decimal place (258.1757 ± 3.1234 -> "258.2", "3.1"). Without a positive std, the
    mean to four significant digits and an empty spread."""
    digits = _spread_digits(std)
    if digits is None:
        return _significant(mean), ""
    decimals, rounded_std = digits
    return _fixed(mean, decimals), _fixed(rounded_std, decimals)


def cell_text(cell: Cell, spread: str = "std", row_seeds: int | None = None) -> str:
    """One cell as plain text: "258.2 ± 3.1", "258.2 [250.1, 266.3]" (``spread="ci95"``), "258.2"
    (one seed), "n/a" (does not apply), "–" (not evaluated).

    ``row_seeds`` is the seed count of a model row (None for other rows): a cell measured on fewer
    seeds says so with " (n=k)". A cell whose seeds used different estimator settings ends in "†".
    With ``ci95``, a cell without an interval (e.g. a published mean ± std) falls back to ± std.
    """
    if cell.status == "n/a":
        return "n/a"
    if cell.status == "missing" or not cell.available:
        return MISSING
    text, spread_text = format_value(cell.mean, cell.std)
    digits = _spread_digits(cell.std)
    if spread == "ci95" and digits and cell.ci_low is not None and cell.ci_high is not None:
        text += f" [{_fixed(cell.ci_low, digits[0])}, {_fixed(cell.ci_high, digits[0])}]"
    elif spread_text:
        text += f" ± {spread_text}"
    if row_seeds is not None and cell.n != row_seeds:
        text += f" (n={cell.n})"
    return text + ("†" if cell.mixed_settings else "")


def header_label(column: MetricColumn) -> str:
    """The column label, its direction and unit: "FID ↓", "log p(x) ↑ [nats]"."""
    parts = [column.label]
    if column.direction in ARROWS:
        parts.append(ARROWS[column.direction])
    if column.header_unit:
        parts.append(f"[{column.header_unit}]")
    return " ".join(parts)


def latex_escape(text: str) -> str:
    """``text`` safe for LaTeX text mode under pdflatex: specials escaped, symbols (±, ², †, –,
    arrows) as LaTeX commands. Other non-ASCII characters pass through (utf8 input handles
    accented Latin letters)."""
    return "".join(LATEX_REPLACEMENTS.get(char, char) for char in text)


# -- The content shared by the renderers ------------------------------------------------------

@dataclass
class _Line:
    """One table row as plain text: group-by keys, seeds, then one cell per metric."""

    kind: str
    cells: list[str]
    best: set[int]  # indices into ``cells`` of the best model values
    source_mark: str  # the letter of a published row's source, else ""


def _check_spread(spread: str) -> None:
    if spread not in SPREADS:
        raise UsageError(f"unknown spread {spread!r} (known: {', '.join(SPREADS)})")


def _header(table: ComparisonTable) -> list[str]:
    return [*table.group_by, "seeds", *map(header_label, table.columns)]


def _source_marks(table: ComparisonTable) -> dict[str, str]:
    """Published sources in order of first appearance -> "a", "b", ... ("a1"... past "z")."""
    sources = dict.fromkeys(r.source for r in table.rows if r.kind == ROW_PUBLISHED and r.source)
    return {source: ascii_lowercase[i % 26] + (str(i // 26) if i >= 26 else "")
            for i, source in enumerate(sources)}


def _lines(table: ComparisonTable, spread: str) -> list[_Line]:
    _check_spread(spread)
    marks = _source_marks(table)
    best = {column.name: set(table.best_rows(column.name)) for column in table.columns}
    first_metric = len(table.group_by) + 1
    lines = []
    for i, row in enumerate(table.rows):
        seeds = row.seeds if row.kind == ROW_MODEL else None
        keys = ["" if row.key.get(k) is None else str(row.key[k]) for k in table.group_by]
        metrics = [cell_text(row.cells.get(c.name, Cell(status="missing")), spread, seeds)
                   for c in table.columns]
        winners = {first_metric + j for j, c in enumerate(table.columns) if i in best[c.name]}
        mark = marks.get(row.source, "") if row.kind == ROW_PUBLISHED else ""
        lines.append(_Line(row.kind, [*keys, "" if seeds is None else str(seeds), *metrics],
                           winners, mark))
    return lines


def _title(table: ComparisonTable) -> str:
    family = f" · {table.family} models" if table.family else ""
    return f"{table.dataset} · {table.budget} budget · {table.split} split{family}"


def _legend(lines: list[_Line]) -> list[str]:
    """Explanations of the symbols that appear in the cells."""
    cells = [cell for line in lines for cell in line.cells]
    legend = []
    if any("(n=" in cell for cell in cells):
        legend.append("(n=k): only k of the row's seeds have this metric")
    if MISSING in cells:
        legend.append(f"{MISSING}: not evaluated")
    if "n/a" in cells:
        legend.append("n/a: the metric does not apply to this row")
    return legend


def _extractor_lines(table: ComparisonTable) -> list[str]:
    """One line per feature extractor, naming the metrics computed on its features."""
    labels_by_extractor: dict[str, list[str]] = {}
    for column in table.columns:
        extractor = table.feature_extractors.get(column.name)
        if extractor:
            labels_by_extractor.setdefault(extractor, []).append(column.label)
    return [f"{', '.join(labels)}: features of {extractor}"
            for extractor, labels in labels_by_extractor.items()]


# -- Renderers ----------------------------------------------------------------------------------

def render_text(table: ComparisonTable, spread: str = "std") -> str:
    """An aligned plain-text table with a title line above and its footnotes below; ``*`` marks
    the best model value per column, ``[a]`` a published row's source."""
    lines = _lines(table, spread)
    rows = []
    for line in lines:
        cells = [cell + "*" if j in line.best else cell for j, cell in enumerate(line.cells)]
        if line.source_mark:
            cells[0] += f" [{line.source_mark}]"
        rows.append(cells)
    footer = [f"{SPREADS[spread]}; * best model value per column", *_legend(lines),
              *_extractor_lines(table),
              *(f"[{mark}] {source}" for source, mark in _source_marks(table).items()), *table.notes]
    return "\n".join([_title(table), format_table(_header(table), rows), *footer])


def _markdown_escape(text: str) -> str:
    # "|" would end the cell; the others would start emphasis, code or HTML.
    return re.sub(r"([\\|*_`<])", r"\\\1", text)


def render_markdown(table: ComparisonTable, spread: str = "std") -> str:
    """A GitHub-flavoured Markdown table between a caption paragraph and a footnote list; the best
    model value per column in bold, published sources as superscript letters."""
    lines = _lines(table, spread)
    keys = len(table.group_by)

    def row_text(cells: list[str]) -> str:
        return "| " + " | ".join(cells) + " |"

    body = []
    for line in lines:
        cells = [f"**{_markdown_escape(c)}**" if j in line.best else _markdown_escape(c)
                 for j, c in enumerate(line.cells)]
        if line.source_mark:
            cells[0] += f"<sup>{line.source_mark}</sup>"
        body.append(row_text(cells))
    header = [_markdown_escape(label) for label in _header(table)]
    alignment = [":---"] * keys + ["---:"] * (len(header) - keys)
    notes = [*_legend(lines), *_extractor_lines(table)]
    footnotes = [f"- {_markdown_escape(note)}" for note in notes]
    footnotes += [f"- <sup>{mark}</sup> {_markdown_escape(source)}"
                  for source, mark in _source_marks(table).items()]
    footnotes += [f"- {_markdown_escape(note)}" for note in table.notes]
    caption = (f"**{_markdown_escape(_title(table))}.** {SPREADS[spread].capitalize()}; "
               "best model value per column in bold.")
    parts = [caption, "\n".join([row_text(header), row_text(alignment), *body])]
    return "\n\n".join(parts + (["\n".join(footnotes)] if footnotes else [])) + "\n"


def _latex_label(name: str) -> str:
    # Labels are matched verbatim by \ref: keep them to characters that need no escaping.
    return "tab:" + re.sub(r"[^A-Za-z0-9.:-]", "-", name)


def render_latex(table: ComparisonTable, spread: str = "std") -> str:
    """A booktabs ``table`` float that compiles with pdflatex and ``\\usepackage{booktabs}`` alone;
    the caption carries the settings, feature extractors, sources and notes."""
    lines = _lines(table, spread)
    sentences = [f"{table.dataset}, {table.budget} budget, {table.split} split",
                 f"{SPREADS[spread].capitalize()}; best model value per column in bold",
                 *_legend(lines), *_extractor_lines(table)]
    caption = " ".join(latex_escape(s.rstrip(".")) + "." for s in sentences)
    caption += "".join(f" $^{{{mark}}}${latex_escape(source)}."
                       for source, mark in _source_marks(table).items())
    caption += "".join(f" {latex_escape(note)}" for note in table.notes)
    spec = "l" * len(table.group_by) + "r" * (1 + len(table.columns))
    out = [r"\begin{table}[t]", r"\centering", r"\small", rf"\caption{{{caption.strip()}}}",
           rf"\label{{{_latex_label(table.name)}}}", rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
           " & ".join(map(latex_escape, _header(table))) + r" \\", r"\midrule"]
    previous_kind = ROW_MODEL
    for line in lines:
        if line.kind != previous_kind:  # the reference row and published rows are set apart
            out.append(r"\midrule")
            previous_kind = line.kind
        cells = [rf"\textbf{{{latex_escape(c)}}}" if j in line.best else latex_escape(c)
                 for j, c in enumerate(line.cells)]
        if line.source_mark:
            cells[0] += f"$^{{{line.source_mark}}}$"
        out.append(" & ".join(cells) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(out) + "\n"


def render_csv(table: ComparisonTable) -> str:
    """Raw numbers, one line per row: the group-by keys, ``kind``, ``seeds``, six columns per
    metric (``<metric>_mean, _std, _n, _ci_low, _ci_high, _status``; floats as ``repr``, empty
    for None; status ``ok``, ``n/a`` or ``missing``) and ``source``."""
    def number(value: float | None) -> str:
        return "" if value is None else repr(float(value))

    fields = ("mean", "std", "n", "ci_low", "ci_high", "status")
    header = [*table.group_by, "kind", "seeds",
              *(f"{c.name}_{f}" for c in table.columns for f in fields), "source"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in table.rows:
        values = []
        for column in table.columns:
            cell = row.cells.get(column.name, Cell(status="missing"))
            values += [number(cell.mean), number(cell.std), cell.n, number(cell.ci_low),
                       number(cell.ci_high), cell.status]
        keys = ["" if row.key.get(k) is None else row.key[k] for k in table.group_by]
        writer.writerow([*keys, row.kind, row.seeds, *values, row.source])
    return buffer.getvalue()


def render(table: ComparisonTable, fmt: str, spread: str = "std") -> str:
    """``table`` in format ``fmt`` ("csv", "latex", "markdown" or "text"); CSV ignores ``spread``."""
    renderers = {"csv": lambda: render_csv(table), "latex": lambda: render_latex(table, spread),
                 "markdown": lambda: render_markdown(table, spread),
                 "text": lambda: render_text(table, spread)}
    if fmt not in renderers:
        raise UsageError(f"unknown table format {fmt!r} (known: {', '.join(renderers)})")
    _check_spread(spread)
    return renderers[fmt]()
