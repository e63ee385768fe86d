"""Report figures: the plotted data equals the table's numbers; files are written and decode."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from matplotlib.container import ErrorbarContainer
from matplotlib.figure import Figure
from matplotlib.image import imread

from genbench.reporting import figures
from genbench.reporting.aggregate import (
    ROW_MODEL,
    ROW_REFERENCE,
    Cell,
    ComparisonTable,
    MetricColumn,
    Row,
    summarise,
)

DIMS = [100, 500, 1000]
# Per-seed values: model -> metric -> latent_dim -> values (None: the metric does not apply).
VALUES = {
    "gvae": {"fid": {100: [30.0, 34.0], 500: [20.0, 21.0, 25.0], 1000: [18.0, 18.5]},
             "log_likelihood": {100: [-90.0, -92.0], 500: [-85.0, -84.0], 1000: [-80.0]}},
    "vae": {"fid": {100: [40.0, 44.0], 500: [35.0, 37.0], 1000: [33.0, 36.0]},
            "log_likelihood": {100: [-95.0, -99.0], 500: None, 1000: [-88.0, -86.0]}},
}
REFERENCE_FID = 1.5


def make_table(key_values=None) -> ComparisonTable:
    """Two models x latent_dim 100/500/1000, FID (lower) and log p(x) (higher, nats), one n/a
    cell, and a real-data reference for FID only."""
    columns = [MetricColumn("fid", "FID", "lower", ""),
               MetricColumn("log_likelihood", "log p(x)", "higher", "nats")]
    rows = []
    for model, metrics in VALUES.items():
        for dim in DIMS:
            cells = {m: Cell(status="n/a") if v[dim] is None else summarise(v[dim])
                     for m, v in metrics.items()}
            x = dim if key_values is None else key_values[dim]
            rows.append(Row(key={"model": model, "latent_dim": x}, cells=cells, seeds=2))
    rows.append(Row(key={"model": "real data", "latent_dim": ""}, kind=ROW_REFERENCE,
                    cells={"fid": summarise([REFERENCE_FID]), "log_likelihood": Cell(status="n/a")}))
    return ComparisonTable("mnist", "smoke", "test", ["model", "latent_dim"], columns, rows,
                           feature_extractors={"fid": "inception-v3"})


def lines_by_label(fig: Figure) -> dict[str, ErrorbarContainer]:
    ax = fig.axes[0]
    return {c.get_label(): c for c in ax.containers if isinstance(c, ErrorbarContainer)}


def error_half_lengths(container: ErrorbarContainer) -> list[float]:
    """Half the length of each drawn error bar, in x order (missing bars are skipped)."""
    segments = [s for s in container.lines[2][0].get_segments() if len(s)]
    return [float(abs(s[1, 1] - s[0, 1]) / 2) for s in sorted(segments, key=lambda s: s[0, 0])]


@pytest.mark.parametrize("metric", ["fid", "log_likelihood"])
def test_lines_carry_the_means_and_stds(metric):
    table = make_table()
    fig = figures.metric_vs_parameter_figure(table, metric, "latent_dim")
    lines = lines_by_label(fig)
    assert set(lines) == {"gvae", "vae"}
    for model, container in lines.items():
        values = VALUES[model][metric]
        dims = [d for d in DIMS if values[d] is not None]  # the n/a cell is left out, not zero
        x, y = container.lines[0].get_xdata(), container.lines[0].get_ydata()
        np.testing.assert_array_equal(x, dims)
        np.testing.assert_allclose(y, [np.mean(values[d]) for d in dims])
        # Single-seed cells have no std and so no bar.
        stds = [np.std(values[d], ddof=1) for d in dims if len(values[d]) > 1]
        np.testing.assert_allclose(error_half_lengths(container), stds, rtol=1e-9)


def test_reference_line_axes_and_labels():
    table = make_table()
    fig = figures.metric_vs_parameter_figure(table, "fid", "latent_dim")
    ax = fig.axes[0]
    reference = [line for line in ax.get_lines() if line.get_label() == "real data"]
    assert len(reference) == 1
    np.testing.assert_allclose(reference[0].get_ydata(), [REFERENCE_FID, REFERENCE_FID])
    assert reference[0].get_linestyle() == "--"
    assert ax.get_xscale() == "log"  # 100..1000 spans a decade
    np.testing.assert_array_equal(ax.get_xticks(), DIMS)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["100", "500", "1000"]
    assert ax.get_ylabel() == "FID (↓ better)"
    assert fig.get_suptitle() == "FID vs latent_dim"
    assert "mnist, smoke budget, test split" in ax.get_title() and "inception-v3" in ax.get_title()

    fig = figures.metric_vs_parameter_figure(table, "log_likelihood", "latent_dim")
    ax = fig.axes[0]
    assert ax.get_ylabel() == "log p(x) (↑ better) [nats]"
    assert not [line for line in ax.get_lines() if line.get_label() == "real data"]


def test_linear_and_categorical_x():
    # Less than a decade: linear axis.
    fig = figures.metric_vs_parameter_figure(make_table({100: 100, 500: 200, 1000: 300}), "fid",
                                             "latent_dim")
    assert fig.axes[0].get_xscale() == "linear"
    # Names: positions with the names as tick labels.
    names = {100: "small", 500: "medium", 1000: "large"}
    fig = figures.metric_vs_parameter_figure(make_table(names), "fid", "latent_dim")
    ax = fig.axes[0]
    assert ax.get_xscale() == "linear"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["large", "medium", "small"]
    gvae = lines_by_label(fig)["gvae"].lines[0]
    # large=0, medium=1, small=2: the line runs large, medium, small.
    np.testing.assert_array_equal(gvae.get_xdata(), [0, 1, 2])
    np.testing.assert_allclose(gvae.get_ydata(), [np.mean(VALUES["gvae"]["fid"][d])
                                                  for d in (1000, 500, 100)])


def test_models_run_at_one_value_are_left_off_the_plot(tmp_path):
    # A GAN at its one latent size of 64 beside the swept models: no line of one point for it,
    # no x tick at 64, and a metric only it has gets no figure.
    table = make_table()
    table.columns.append(MetricColumn("kid", "KID", "lower", ""))
    table.rows.insert(0, Row(key={"model": "gan", "latent_dim": 64},
                             cells={"fid": summarise([12.0, 13.0]), "kid": summarise([1.0])},
                             seeds=2))
    fig = figures.metric_vs_parameter_figure(table, "fid", "latent_dim")
    assert set(lines_by_label(fig)) == {"gvae", "vae"}
    np.testing.assert_array_equal(fig.axes[0].get_xticks(), DIMS)
    paths = figures.plot_metrics_vs_parameter(table, "latent_dim", tmp_path)
    assert not [p for p in paths if "kid" in p.name]
    # A parameter that differs only between models (an explicit --group-by) keeps every line.
    one_each = make_table()
    one_each.rows = [r for r in one_each.rows if r.key["latent_dim"] in (100, "")
                     and r.key["model"] != "vae"]
    one_each.rows.insert(0, Row(key={"model": "gan", "latent_dim": 64},
                                cells={"fid": summarise([12.0])}, seeds=1))
    fig = figures.metric_vs_parameter_figure(one_each, "fid", "latent_dim")
    assert set(lines_by_label(fig)) == {"gan", "gvae"}


def test_unknown_metric_or_parameter_is_an_error():
    table = make_table()
    with pytest.raises(KeyError, match="no metric"):
        figures.metric_vs_parameter_figure(table, "kid", "latent_dim")
    with pytest.raises(ValueError, match="group-by"):
        figures.metric_vs_parameter_figure(table, "fid", "seed")


def assert_written(paths, stems):
    assert sorted(p.name for p in paths) == sorted(f"{s}.{e}" for s in stems for e in ("png", "pdf"))
    for path in paths:
        if path.suffix == ".png":
            image = imread(path)
            assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
            assert image.std() > 0  # not a blank canvas
        else:
            assert path.read_bytes().startswith(b"%PDF")
    assert not [p for p in paths[0].parent.iterdir() if p.name.endswith(".tmp")]


def test_plot_metrics_vs_parameter_writes_each_metric_and_overview(tmp_path):
    table = make_table()
    paths = figures.plot_metrics_vs_parameter(table, "latent_dim", tmp_path / "figs")
    assert_written(paths, ["mnist-smoke-test-fid-vs-latent_dim",
                           "mnist-smoke-test-log_likelihood-vs-latent_dim",
                           "mnist-smoke-test-metrics-vs-latent_dim"])
    # A metric without any model value gets no figure.
    for row in table.rows:
        if row.kind == ROW_MODEL:
            row.cells["log_likelihood"] = Cell(status="n/a")
    paths = figures.plot_metrics_vs_parameter(table, "latent_dim", tmp_path / "fewer")
    assert {p.name for p in paths} == {f"mnist-smoke-test-{m}-vs-latent_dim.{e}"
                                       for m in ("fid", "metrics") for e in ("png", "pdf")}


def write_losses(run, columns, rows):
    run.mkdir(parents=True)
    with open(run / "losses.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows(rows)


def test_loss_curves(tmp_path):
    steps = range(0, 50, 10)
    write_losses(tmp_path / "a0", ["step", "images", "time_s", "loss", "kl"],
                 [[s, s * 16, s / 10, 1.0 / (s + 1), 0.1 * s] for s in steps])
    write_losses(tmp_path / "a1", ["step", "images", "time_s", "loss", "kl"],
                 [[s, s * 16, s / 10, 2.0 / (s + 1), ""] for s in steps])  # kl not logged
    write_losses(tmp_path / "b", ["step", "images", "time_s", "loss", "disc"],
                 [[s, s * 16, s / 10, 0.5, -s] for s in steps])
    (tmp_path / "empty").mkdir()
    runs = [("gvae", tmp_path / "a0"), ("gvae", tmp_path / "a1"), ("vae", tmp_path / "b"),
            ("broken", tmp_path / "empty")]
    paths = figures.plot_loss_curves(runs, tmp_path / "out" / "losses")
    assert_written(paths, ["losses"])
    assert figures.plot_loss_curves([("broken", tmp_path / "empty")], tmp_path / "none") == []
    assert not (tmp_path / "none.png").exists()


def test_loss_curves_subplot_per_loss_column(tmp_path, monkeypatch):
    figs = []
    monkeypatch.setattr(figures, "_save", lambda fig, stem: figs.append(fig) or [])
    for name, extra in (("a", "kl"), ("b", "disc")):
        write_losses(tmp_path / name, ["step", "images", "time_s", "loss", extra],
                     [[s, s, 0.0, 1.0, 2.0] for s in range(3)])
    figures.plot_loss_curves([("a", tmp_path / "a"), ("a", tmp_path / "b")], tmp_path / "x")
    (fig,) = figs
    assert [ax.get_title() for ax in fig.axes] == ["loss", "kl", "disc"]
    # Two seeds of one label: one legend entry, for their mean (a thick line).
    (entry,) = fig.legends[0].legend_handles
    assert fig.legends[0].get_texts()[0].get_text() == "a" and entry.get_linewidth() > 1.5
    loss = fig.axes[0].get_lines()
    assert len(loss) == 3 and [line.get_alpha() for line in loss[:2]] == [0.4, 0.4]


@pytest.mark.parametrize("values, scale", [
    ([1.0, 0.5, 0.2], "linear"),
    ([1e2, 1.0, 1e-3], "log"),  # five decades, all positive
    ([1e2, -1.0, 1e-3], "symlog"),
    ([-1.0, 0.5, 2.0], "linear"),  # negative but narrow
    ([0.0, 1e-3, 1e2], "linear"),  # a zero but no negative values
])
def test_loss_scale(values, scale):
    assert figures._loss_scale(np.array(values)) == scale


def test_sample_montage(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (60, 60), dtype=np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(rng.integers(0, 255, (60, 60, 3), dtype=np.uint8)).save(tmp_path / "b.png")
    entries = [("gvae", tmp_path / "a.png"), ("missing", tmp_path / "nope.png"),
               ("vae", tmp_path / "b.png")]
    paths = figures.sample_montage(entries, tmp_path / "out" / "samples", columns=2)
    assert_written(paths, ["samples"])
    assert figures.sample_montage([("missing", tmp_path / "nope.png")], tmp_path / "none") == []


def test_sample_montage_skips_missing_panels(tmp_path, monkeypatch):
    from PIL import Image

    figs = []
    monkeypatch.setattr(figures, "_save", lambda fig, stem: figs.append(fig) or [])
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(tmp_path / "a.png")
    figures.sample_montage([("x", tmp_path / "nope.png"), ("a", tmp_path / "a.png")],
                           tmp_path / "m")
    assert [ax.get_title() for ax in figs[0].axes] == ["a"]


def test_crowded_tick_labels_are_slanted_and_spread_ones_level():
    def rotations(fig):
        return {label.get_rotation() for ax in fig.axes for label in ax.get_xticklabels()}

    single = figures.metric_vs_parameter_figure
    assert rotations(single(make_table(), "fid", "latent_dim")) == {0.0}  # 100, 500, 1000
    # 100 beside 110 on a one-decade log axis: 4% of about 4 inches, less than a label's width.
    assert rotations(single(make_table({100: 100, 500: 110, 1000: 1000}), "fid", "latent_dim")) == {45.0}
    # The latent-size overview: 32, 100, 128, 500, 1000 in 4-inch panels (100 and 128 7% apart).
    crowded = make_table()
    crowded.rows.insert(0, Row(key={"model": "gvae", "latent_dim": 128},
                               cells={"fid": summarise([25.0]), "log_likelihood": summarise([-88.0])}))
    crowded.rows.insert(0, Row(key={"model": "vae", "latent_dim": 32},
                               cells={"fid": summarise([38.0]), "log_likelihood": summarise([-90.0])}))
    overview = figures.metrics_overview_figure(crowded, ["fid", "log_likelihood"], "latent_dim")
    assert rotations(overview) == {45.0}
