"""Table renderers (text, Markdown, LaTeX, CSV) on comparison tables built by hand from known
per-seed values."""

from __future__ import annotations

import io
import math
import re
import shutil
import subprocess

import pandas as pd
import pytest

from genbench.core.errors import UsageError
from genbench.reporting.aggregate import (
    ROW_PUBLISHED,
    ROW_REFERENCE,
    Cell,
    ComparisonTable,
    MetricColumn,
    Row,
    summarise,
)
from genbench.reporting.tables import (
    EXTENSIONS,
    FORMATS,
    cell_text,
    format_value,
    header_label,
    latex_escape,
    render,
    render_csv,
    render_latex,
    render_markdown,
    render_text,
)

FID = MetricColumn("fid", "FID", "lower", "")
KID = MetricColumn("kid", "KID", "lower", "")
LOG_LIKELIHOOD = MetricColumn("log_likelihood", "log p(x)", "higher", "nats")
KL = MetricColumn("kl", "KL", "none", "nats")
EXTRACTOR = "genbench-mnist-cnn (penultimate layer, 128-d)"
SOURCE = "Smith et al. 2020, Table 2; 100 epochs"
MIXED_NOTE = "† the seeds of this cell were evaluated with different estimator settings"


def comparison_table() -> ComparisonTable:
    """Three models on three seeds, the real-data reference and one published row.

    Best by direction: FID and KID (lower) gvae, log p(x) (higher) vae, KL (none) nobody; the
    reference and published rows hold better values that must never be marked."""
    gvae = Row({"model": "gvae"}, {"fid": summarise([250.0, 258.0, 266.0]),  # 258 ± 8
                                   "kid": summarise([0.0121, 0.0125, 0.0117]),  # 0.0121 ± 0.0004
                                   "log_likelihood": summarise([-90.0, -91.0, -89.0]),  # -90 ± 1
                                   "kl": summarise([10.0, 12.0, 14.0])}, seeds=3)  # 12 ± 2
    gvae.cells["fid"].mixed_settings = True
    vae = Row({"model": "vae"}, {"fid": summarise([300.0, 310.0, 320.0]),  # 310 ± 10
                                 "kid": summarise([0.020, 0.021, 0.022]),  # 0.021 ± 0.001
                                 "log_likelihood": summarise([-85.0, -86.0]),  # two seeds of three
                                 "kl": summarise([20.0, 21.0, 22.0])}, seeds=3)
    beta_vae = Row({"model": "beta_vae"}, {"fid": Cell(status="missing"), "kid": Cell(status="missing"),
                                           "log_likelihood": Cell(status="n/a"),
                                           "kl": summarise([5.0])}, seeds=3)
    reference = Row({"model": "real data"}, {"fid": summarise([0.5]), "kid": summarise([0.0001]),
                                             "log_likelihood": Cell(status="n/a"),
                                             "kl": Cell(status="n/a")}, kind=ROW_REFERENCE)
    published = Row({"model": "vae (published)"},
                    {"fid": Cell(mean=1.0, std=0.1), "kid": Cell(status="missing"),
                     "log_likelihood": Cell(mean=-80.0), "kl": Cell(status="missing")},
                    kind=ROW_PUBLISHED, source=SOURCE)
    return ComparisonTable("mnist", "small", "test", ["model"], [FID, KID, LOG_LIKELIHOOD, KL],
                           [gvae, vae, beta_vae, reference, published],
                           {"fid": EXTRACTOR, "kid": EXTRACTOR}, [MIXED_NOTE])


def escaping_table() -> ComparisonTable:
    """Names full of LaTeX and Markdown specials, in a table with two group-by keys."""
    names = ["my_model", "100% & #1 {x}", "a~b^c\\d $e$ <f> g|h ±²"]
    rows = [Row({"model": name, "weight_decay": i}, {"fid": summarise([1.0 + i, 2.0 + i, 3.0 + i])},
                seeds=3) for i, name in enumerate(names)]
    return ComparisonTable("my_data", "small", "test", ["model", "weight_decay"], [FID], rows)


# -- Numbers and cells --------------------------------------------------------------------------

@pytest.mark.parametrize("mean, std, expected", [
    (258.1757, 3.1234, ("258.2", "3.1")),
    (0.035906, 0.0012, ("0.0359", "0.0012")),
    (12345.6, 250.0, ("12346", "250")),
    (12345.6, 25678.0, ("12346", "26000")),  # std keeps two significant digits past the point
    (-90.123, 0.5, ("-90.12", "0.50")),
    (1.23456, 0.0996, ("1.23", "0.10")),  # rounding carries: two digits, not "0.100"
    (9.4, 9.96, ("9", "10")),
    (-0.001, 0.5, ("0.00", "0.50")),  # no "-0.00"
    (5.0, 1e-9, ("5.000000", "0.000000")),  # decimals clipped at 6
    (258.1757, None, ("258.2", "")),
    (258.1757, 0.0, ("258.2", "")),
    (0.035906, None, ("0.03591", "")),
    (12345.6, None, ("12346", "")),
    (-1234.56, None, ("-1235", "")),
    (2.0, None, ("2", "")),
    (1.5e-6, None, ("1.5e-06", "")),
])
def test_format_value(mean, std, expected):
    assert format_value(mean, std) == expected


def test_cell_text():
    cell = summarise([1.0, 2.0, 3.0])
    assert cell_text(cell) == "2.0 ± 1.0"
    # t(0.975, 2) / sqrt(3) = 2.484: the interval [-0.484, 4.484] at the mean's decimals.
    assert cell_text(cell, spread="ci95") == "2.0 [-0.5, 4.5]"
    assert cell_text(summarise([258.1757])) == "258.2"
    assert cell_text(Cell(status="n/a"), row_seeds=3) == "n/a"
    assert cell_text(Cell(status="missing"), row_seeds=3) == "–"
    assert cell_text(summarise([])) == "–"
    assert cell_text(cell, row_seeds=3) == "2.0 ± 1.0"
    assert cell_text(cell, row_seeds=5) == "2.0 ± 1.0 (n=3)"
    cell.mixed_settings = True
    assert cell_text(cell, row_seeds=5) == "2.0 ± 1.0 (n=3)†"
    # A published mean ± std has no interval: ci95 falls back to the std it has.
    assert cell_text(Cell(mean=1.0, std=0.1), spread="ci95") == "1.00 ± 0.10"


@pytest.mark.parametrize("column, expected", [
    (FID, "FID ↓"),
    (LOG_LIKELIHOOD, "log p(x) ↑ [nats]"),
    (KL, "KL [nats]"),
    (MetricColumn("reconstruction_mse", "recon. MSE", "lower", "MSE per pixel"), "recon. MSE ↓ [per pixel]"),
    (MetricColumn("mmd", "MMD²", "lower", "squared MMD"), "MMD² ↓"),
    (MetricColumn("memorisation_nn_ratio", "NN ratio", "none", "ratio"), "NN ratio"),
])
def test_header_label(column, expected):
    assert header_label(column) == expected


# -- Text -----------------------------------------------------------------------------------------

def test_render_text():
    assert render_text(comparison_table()) == "\n".join([
        "mnist · small budget · test split",
        "model                seeds  FID ↓          KID ↓               log p(x) ↑ [nats]     KL [nats]",
        "-------------------  -----  -------------  ------------------  --------------------  ----------",
        "gvae                 3      258.0 ± 8.0†*  0.01210 ± 0.00040*  -90.0 ± 1.0           12.0 ± 2.0",
        "vae                  3      310 ± 10       0.0210 ± 0.0010     -85.50 ± 0.71 (n=2)*  21.0 ± 1.0",
        "beta_vae             3      –              –                   n/a                   5 (n=1)",
        "real data                   0.5            0.0001              n/a                   n/a",
        "vae (published) [a]         1.00 ± 0.10    –                   -80                   –",
        "mean ± sample standard deviation over seeds; * best model value per column",
        "(n=k): only k of the row's seeds have this metric",
        "–: not evaluated",
        "n/a: the metric does not apply to this row",
        f"FID, KID: features of {EXTRACTOR}",
        f"[a] {SOURCE}",
        MIXED_NOTE,
    ])


def _text_cells(text: str) -> list[list[str]]:
    """The body cells of a ``render_text`` table, cut at the columns of its dashes line."""
    lines = text.splitlines()
    dash_line = next(i for i, line in enumerate(lines) if line.startswith("---"))
    spans = [m.span() for m in re.finditer(r"-+", lines[dash_line])]
    body = lines[dash_line + 1:]
    body = body[:next(i for i, line in enumerate(body) if line.startswith("mean"))]
    starts = [start for start, _ in spans] + [None]
    return [[line[a:b].strip() for a, b in zip(starts, starts[1:])] for line in body]


# -- Markdown ---------------------------------------------------------------------------------

def _markdown_rows(markdown: str) -> list[list[str]]:
    """Cells of each table line, split at unescaped pipes; header and alignment rows included."""
    return [[cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]]
            for line in markdown.splitlines() if line.startswith("|")]


def test_render_markdown_best_cells_bold():
    rows = _markdown_rows(render_markdown(comparison_table()))
    assert rows[0] == ["model", "seeds", "FID ↓", "KID ↓", "log p(x) ↑ [nats]", "KL [nats]"]
    assert rows[1] == [":---", "---:", "---:", "---:", "---:", "---:"]
    assert rows[2:] == [
        ["gvae", "3", "**258.0 ± 8.0†**", "**0.01210 ± 0.00040**", "-90.0 ± 1.0", "12.0 ± 2.0"],
        ["vae", "3", "310 ± 10", "0.0210 ± 0.0010", "**-85.50 ± 0.71 (n=2)**", "21.0 ± 1.0"],
        ["beta\\_vae", "3", "–", "–", "n/a", "5 (n=1)"],
        ["real data", "", "0.5", "0.0001", "n/a", "n/a"],
        ["vae (published)<sup>a</sup>", "", "1.00 ± 0.10", "–", "-80", "–"],
    ]


def test_render_markdown_caption_and_footnotes():
    markdown = render_markdown(comparison_table())
    caption, _, footnotes = markdown.split("\n\n")
    assert caption == ("**mnist · small budget · test split.** Mean ± sample standard deviation "
                       "over seeds; best model value per column in bold.")
    assert footnotes.splitlines() == [
        "- (n=k): only k of the row's seeds have this metric", "- –: not evaluated",
        "- n/a: the metric does not apply to this row", f"- FID, KID: features of {EXTRACTOR}",
        f"- <sup>a</sup> {SOURCE}", f"- {MIXED_NOTE}"]


def test_feature_extractors_grouped_in_column_order():
    table = comparison_table()
    table.feature_extractors = {"fid": EXTRACTOR, "log_likelihood": "none (exact)", "kid": EXTRACTOR}
    lines = render_text(table).splitlines()
    assert [line for line in lines if "features of" in line] == [
        f"FID, KID: features of {EXTRACTOR}", "log p(x): features of none (exact)"]


def test_markdown_parses_to_one_table():
    markdown_it = pytest.importorskip("markdown_it")
    for table in (comparison_table(), escaping_table()):
        html = markdown_it.MarkdownIt("commonmark").enable("table").render(render_markdown(table))
        assert html.count("<table>") == 1
        rows = re.findall(r"<tr>(.*?)</tr>", html, re.S)
        assert len(rows) == 1 + len(table.rows)
        columns = len(table.group_by) + 1 + len(table.columns)
        assert [len(re.findall(r"<t[hd][ >]", row)) for row in rows] == [columns] * len(rows)
        assert rows[0].startswith('\n<th style="text-align:left">')
    # Escaped specials come back as text: the pipe did not split the cell, no emphasis appeared.
    assert "<td style=\"text-align:left\">a~b^c\\d $e$ &lt;f&gt; g|h ±²</td>" in html
    assert "<td style=\"text-align:left\">my_model</td>" in html


def test_best_marking_ties_and_single_candidates():
    rows = [Row({"model": name}, {"fid": summarise(values), "log_likelihood": cell}, seeds=3)
            for name, values, cell in [("a", [1.0, 2.0, 3.0], summarise([-90.0, -91.0, -89.0])),
                                       ("b", [3.0, 1.0, 2.0], Cell(status="n/a")),
                                       ("c", [5.0, 6.0, 7.0], Cell(status="missing"))]]
    table = ComparisonTable("mnist", "small", "test", ["model"], [FID, LOG_LIKELIHOOD], rows)
    cells = [row[2:] for row in _markdown_rows(render_markdown(table))[2:]]
    # A tie marks both rows; a metric that only one model has is not a ranking.
    assert cells == [["**2.0 ± 1.0**", "-90.0 ± 1.0"], ["**2.0 ± 1.0**", "n/a"], ["6.0 ± 1.0", "–"]]


def test_shown_numbers_are_rounded_means():
    table = comparison_table()
    number = re.compile(r"-?\d+(?:\.(\d+))?")
    shown = {"text": _text_cells(render_text(table)),
             "markdown": [row for row in _markdown_rows(render_markdown(table))[2:]]}
    for name, grid in shown.items():
        assert len(grid) == len(table.rows), name
        for row, cells in zip(table.rows, grid):
            for column, text in zip(table.columns, cells[2:]):
                cell = row.cells[column.name]
                if not cell.available:
                    continue
                match = number.search(text)
                decimals = len(match.group(1) or "")
                assert float(match.group(0)) == round(cell.mean, decimals), (name, text)


# -- LaTeX --------------------------------------------------------------------------------------

def test_latex_escape():
    assert (latex_escape("a_b%c&d#e$f{g}h~i^j\\k")
            == r"a\_b\%c\&d\#e\$f\{g\}h\textasciitilde{}i\textasciicircum{}j\textbackslash{}k")
    assert latex_escape("±²†–↑↓") == r"$\pm$$^2$$^\dagger$--$\uparrow$$\downarrow$"


def test_render_latex():
    latex = render_latex(comparison_table())
    assert latex.startswith("\\begin{table}[t]\n\\centering\n\\small\n\\caption{mnist, small budget, "
                            "test split. Mean $\\pm$ sample standard deviation over seeds;")
    assert f"FID, KID: features of genbench-mnist-cnn (penultimate layer, 128-d). $^{{a}}${SOURCE}." in latex
    lines = latex.splitlines()
    start = lines.index(r"\begin{tabular}{lrrrrr}")
    assert lines[start + 1:] == [
        r"\toprule",
        r"model & seeds & FID $\downarrow$ & KID $\downarrow$ & log p(x) $\uparrow$ [nats] & KL [nats] \\",
        r"\midrule",
        r"gvae & 3 & \textbf{258.0 $\pm$ 8.0$^\dagger$} & \textbf{0.01210 $\pm$ 0.00040} & "
        r"-90.0 $\pm$ 1.0 & 12.0 $\pm$ 2.0 \\",
        r"vae & 3 & 310 $\pm$ 10 & 0.0210 $\pm$ 0.0010 & \textbf{-85.50 $\pm$ 0.71 (n=2)} & "
        r"21.0 $\pm$ 1.0 \\",
        r"beta\_vae & 3 & -- & -- & n/a & 5 (n=1) \\",
        r"\midrule",
        r"real data &  & 0.5 & 0.0001 & n/a & n/a \\",
        r"\midrule",
        r"vae (published)$^{a}$ &  & 1.00 $\pm$ 0.10 & -- & -80 & -- \\",
        r"\bottomrule",
        r"\end{tabular}",
        r"\end{table}",
    ]
    assert r"\label{tab:mnist-small-test}" in lines


def test_render_latex_escapes_names_and_keys():
    lines = render_latex(escaping_table()).splitlines()
    assert r"model & weight\_decay & seeds & FID $\downarrow$ \\" in lines
    assert r"my\_model & 0 & 3 & \textbf{2.0 $\pm$ 1.0} \\" in lines
    assert r"100\% \& \#1 \{x\} & 1 & 3 & 3.0 $\pm$ 1.0 \\" in lines
    assert (r"a\textasciitilde{}b\textasciicircum{}c\textbackslash{}d \$e\$ \textless{}f\textgreater{} "
            r"g\textbar{}h $\pm$$^2$ & 2 & 3 & 4.0 $\pm$ 1.0 \\") in lines
    assert r"\caption{my\_data, small budget, test split." in "\n".join(lines)
    assert r"\label{tab:my-data-small-test}" in lines


def _latex_tokens(latex: str) -> list[str]:
    # Commands, escaped characters (\&, \{, \\) and bare braces/ampersands, in order.
    return re.findall(r"\\[A-Za-z]+|\\.|[{}&]", latex)


def _check_latex_structure(latex: str) -> None:
    depth = 0
    for token in _latex_tokens(latex):
        depth += {"{": 1, "}": -1}.get(token, 0)
        assert depth >= 0, "a closing brace without its opening one"
    assert depth == 0, "unbalanced braces"
    spec = re.search(r"\\begin\{tabular\}\{([lcr]+)\}", latex).group(1)
    body = latex.split(r"\begin{tabular}", 1)[1].split(r"\end{tabular}", 1)[0]
    rows = [line for line in body.splitlines() if line.endswith(r"\\")]
    assert rows, "no table rows"
    for row in rows:
        assert _latex_tokens(row).count("&") == len(spec) - 1, row
    for rule in (r"\toprule", r"\midrule", r"\bottomrule"):
        assert rule in body.splitlines()


@pytest.mark.parametrize("spread", ["std", "ci95"])
def test_latex_structure(spread):
    for table in (comparison_table(), escaping_table()):
        _check_latex_structure(render_latex(table, spread))


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex is not installed")
def test_latex_compiles(tmp_path):
    tables = "\n".join(render_latex(table, spread) for table in (comparison_table(), escaping_table())
                       for spread in ("std", "ci95"))
    (tmp_path / "tables.tex").write_text("\\documentclass{article}\n\\usepackage{booktabs}\n"
                                         f"\\begin{{document}}\n{tables}\\end{{document}}\n")
    result = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "tables.tex"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "Missing character" not in (tmp_path / "tables.log").read_text()


# -- CSV and dispatch ---------------------------------------------------------------------------

def test_render_csv_round_trips_the_numbers():
    table = comparison_table()
    # Exact equality: repr round-trips, and pandas' default parser reads it back to the same float.
    frame = pd.read_csv(io.StringIO(render_csv(table)), keep_default_na=False, na_values=[""])
    fields = ["mean", "std", "n", "ci_low", "ci_high", "status"]
    assert list(frame.columns) == ["model", "kind", "seeds",
                                   *(f"{c.name}_{f}" for c in table.columns for f in fields), "source"]
    assert list(frame["kind"]) == ["model", "model", "model", "reference", "published"]
    assert list(frame["seeds"]) == [3, 3, 3, 0, 0]
    assert frame["source"].fillna("").tolist() == ["", "", "", "", SOURCE]
    for i, row in enumerate(table.rows):
        assert frame.loc[i, "model"] == row.key["model"]
        for column in table.columns:
            cell = row.cells[column.name]
            for name in ("mean", "std", "ci_low", "ci_high"):
                value, expected = frame.loc[i, f"{column.name}_{name}"], getattr(cell, name)
                assert math.isnan(value) if expected is None else value == expected
            assert frame.loc[i, f"{column.name}_n"] == cell.n
            assert frame.loc[i, f"{column.name}_status"] == cell.status


def test_render_dispatch():
    table = comparison_table()
    assert FORMATS == ("csv", "latex", "markdown")
    assert EXTENSIONS == {"csv": ".csv", "latex": ".tex", "markdown": ".md"}
    assert render(table, "csv") == render_csv(table)
    assert render(table, "latex", spread="ci95") == render_latex(table, spread="ci95")
    assert render(table, "markdown") == render_markdown(table)
    assert render(table, "text") == render_text(table)
    with pytest.raises(UsageError, match=r"unknown table format 'html' \(known: csv, latex, markdown, "
                                         r"text\)") as error:
        render(table, "html")
    assert error.value.exit_code == 2
    with pytest.raises(UsageError, match=r"unknown spread 'sem' \(known: std, ci95\)"):
        render(table, "markdown", spread="sem")
