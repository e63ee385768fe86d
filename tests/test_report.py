"""results.csv and reports, from hand-written run folders with known numbers."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from genbench.core.errors import UsageError
from genbench.reporting.aggregate import ROW_MODEL, ROW_PUBLISHED, ROW_REFERENCE, build_tables, summarise
from genbench.reporting.collect import collect_results, read_results_csv, write_results_csv
from genbench.reporting.report import write_report

# model -> latent_dim -> per-seed (mmd, log_likelihood); None: the metric does not apply.
KNOWN = {
    ("gvae", 100): [(0.010, 300.0), (0.012, 310.0), (0.014, 320.0)],
    ("gvae", 500): [(0.020, 280.0), (0.024, 290.0), (0.028, 300.0)],
    ("gan", 100): [(0.008, None), (0.010, None), (0.012, None)],
}


def metric_entry(value, direction, unit, settings=None, std=None):
    if value is None:
        return {"value": None, "status": "n/a", "reason": "no encoder", "direction": direction,
                "unit": unit, "split": "test"}
    return {"value": value, "std": std, "ci_low": None, "ci_high": None, "num_samples": 500,
            "status": "ok", "direction": direction, "unit": unit, "split": "test",
            "settings": settings or {}}


def write_run(root, model, latent_dim, seed, mmd, log_likelihood, budget="smoke", mmd_settings=None):
    run_id = f"{budget}-seed{seed}-{model}{latent_dim}"
    folder = root / "mnist" / model / run_id
    folder.mkdir(parents=True)
    config = {"run_id": run_id, "model": model, "seed": seed, "budget": budget, "status": "complete",
              "data": {"dataset": "mnist", "image_size": None, "limit": None},
              "train": {"steps": 300, "batch_size": 64, "log_every": 10, "checkpoint_every": 100,
                        "sample_every": 100, "grid_size": 64, "grid_seed": 1234},
              "model_config": {"latent_dim": latent_dim, "learning_rate": 0.0002},
              "hardware": {"device": "cpu", "cpu_count": 2, "processor": "x86_64"},
              "torch_threads": 2, "train_time_s": 10.0 + seed, "parameters": 1000 + latent_dim,
              "genbench_version": "0.1.0", "git_commit": "abc"}
    (folder / "config.json").write_text(json.dumps(config))
    settings = mmd_settings or {"bandwidth": 20.0, "features": 784, "num_x": 500, "real_reference": -0.0002}
    metrics = {
        "mmd": metric_entry(mmd, "lower", "squared MMD", settings),
        "log_likelihood": metric_entry(log_likelihood, "higher", "nats", {"method": "is"}, std=1.0),
        "kl": metric_entry(None if log_likelihood is None else 5.0 * seed, "none", "nats"),
    }
    document = {"schema_version": 1, "run_id": run_id, "model": model, "seed": seed,
                "checkpoint_step": 300, "seconds": 3.0, "torch_threads": 1, "metrics": metrics}
    (folder / "metrics.json").write_text(json.dumps(document))
    (folder / "losses.csv").write_text("step,images,time_s,loss\n10,640,1.0,2.5\n20,1280,2.0,2.0\n")
    return folder


@pytest.fixture
def store(tmp_path):
    for (model, latent_dim), seeds in KNOWN.items():
        for seed, (mmd, ll) in enumerate(seeds):
            write_run(tmp_path, model, latent_dim, seed, mmd, ll)
    return tmp_path


def test_results_csv_has_one_row_per_run_and_metric(store):
    frame = collect_results(store)
    assert len(frame) == 9 * 3
    assert frame.attrs["parameters"] == ["latent_dim"]
    assert list(frame.columns[:6]) == ["run_id", "dataset", "model", "budget", "seed", "latent_dim"]
    row = frame[(frame["run_id"] == "smoke-seed1-gvae500") & (frame["metric"] == "mmd")].iloc[0]
    assert (row["value"], row["latent_dim"]) == (0.024, 500)
    assert (row["direction"], row["unit"]) == ("lower", "squared MMD")
    assert row["feature_extractor"] == "pixels (784 dims)" and row["parameters"] == 1500
    assert json.loads(row["settings"])["bandwidth"] == 20.0
    gan = frame[(frame["model"] == "gan") & (frame["metric"] == "log_likelihood")]
    assert (gan["status"] == "n/a").all() and gan["value"].isna().all()


def test_results_csv_round_trips_and_rebuilds_identically(store):
    path = write_results_csv(store)
    first = path.read_bytes()
    back = read_results_csv(path)
    assert back.attrs["parameters"] == ["latent_dim"]
    assert back["value"].dropna().tolist() == collect_results(store)["value"].dropna().tolist()
    path.unlink()
    assert write_results_csv(store).read_bytes() == first


def test_aggregation_mean_and_std_over_seeds(store):
    [table] = build_tables(collect_results(store))
    assert table.group_by == ["model", "latent_dim"]
    assert [c.name for c in table.columns] == ["mmd", "log_likelihood", "kl"]
    rows = {(r.key["model"], r.key["latent_dim"]): r for r in table.rows if r.kind == ROW_MODEL}
    assert set(rows) == set(KNOWN)
    for key, seeds in KNOWN.items():
        mmd = rows[key].cells["mmd"]
        values = [s[0] for s in seeds]
        mean = sum(values) / 3
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / 2)
        assert mmd.n == 3 and rows[key].seeds == 3
        assert mmd.mean == pytest.approx(mean, rel=1e-12) and mmd.std == pytest.approx(std, rel=1e-12)
        # 95% t-interval with 2 degrees of freedom: t = 4.302653
        assert mmd.ci_high - mmd.mean == pytest.approx(4.302653 * std / math.sqrt(3), rel=1e-6)
    assert rows[("gvae", 100)].cells["log_likelihood"].mean == 310.0
    assert rows[("gvae", 100)].cells["log_likelihood"].std == 10.0


def test_not_applicable_cells_and_best_marking(store):
    [table] = build_tables(collect_results(store))
    rows = {(r.key["model"], r.key["latent_dim"]): i for i, r in enumerate(table.rows) if r.kind == ROW_MODEL}
    gan = table.rows[rows[("gan", 100)]]
    assert gan.cells["log_likelihood"].status == "n/a" and gan.cells["log_likelihood"].mean is None
    assert table.best_rows("mmd") == [rows[("gan", 100)]]  # lower is better: 0.010 < 0.012 < 0.024
    assert table.best_rows("log_likelihood") == [rows[("gvae", 100)]]  # higher: 310 > 290
    assert table.best_rows("kl") == []  # not ranked


def test_reference_row_from_real_data_and_never_best(store):
    [table] = build_tables(collect_results(store))
    reference = [r for r in table.rows if r.kind == ROW_REFERENCE]
    assert len(reference) == 1 and reference[0].key["model"] == "real data"
    assert reference[0].cells["mmd"].mean == -0.0002 and reference[0].cells["mmd"].std is None
    assert reference[0].cells["log_likelihood"].status == "n/a"


def test_published_rows_are_joined_and_marked(store, tmp_path):
    published = pd.DataFrame([
        {"dataset": "mnist", "model": "VAE-10", "metric": "log_likelihood", "value": 705.4, "std": 7.4,
         "std_is": "over test examples", "unit": "nats", "setting": "AIS",
         "source": "Wu et al. 2017, Table 2"},
        {"dataset": "cifar10", "model": "X", "metric": "log_likelihood", "value": 1.0, "std": None,
         "std_is": "", "unit": "nats", "setting": "", "source": "elsewhere"},
    ])
    [table] = build_tables(collect_results(store), published=published)
    rows = [r for r in table.rows if r.kind == ROW_PUBLISHED]
    assert len(rows) == 1 and rows[0].key["model"] == "VAE-10 (published)"
    assert rows[0].cells["log_likelihood"].mean == 705.4 and "Wu et al. 2017" in rows[0].source
    assert rows[0].cells["mmd"].status == "missing"
    best = table.best_rows("log_likelihood")
    assert all(i not in best for i, r in enumerate(table.rows) if r.kind != ROW_MODEL)


def test_budgets_get_separate_tables_and_mixed_settings_are_flagged(store):
    write_run(store, "gvae", 100, 0, 0.5, 1.0, budget="standard")
    write_run(store, "gvae", 100, 7, 0.02, 300.0, mmd_settings={"num_x": 999, "real_reference": -0.0002})
    tables = build_tables(collect_results(store))
    assert [t.budget for t in tables] == ["standard", "smoke"]  # the longer training first
    smoke = tables[1]
    row = next(r for r in smoke.rows if r.key.get("model") == "gvae" and r.key.get("latent_dim") == 100)
    assert row.cells["mmd"].n == 4 and row.cells["mmd"].mixed_settings
    assert any("different estimator settings" in note for note in smoke.notes)


def test_group_by_validation(store):
    with pytest.raises(UsageError, match="no column dropout"):
        build_tables(collect_results(store), group_by=["model", "dropout"])
    [table] = build_tables(collect_results(store), group_by=["model"])
    gvae = next(r for r in table.rows if r.key["model"] == "gvae")
    assert gvae.seeds == 6 and gvae.cells["mmd"].mean == pytest.approx(0.018)


def test_summarise_single_and_empty():
    assert summarise([]).status == "missing"
    one = summarise([2.5])
    assert (one.mean, one.std, one.n, one.ci_low) == (2.5, None, 1, None)


def test_report_rebuilds_from_run_folders(store):
    report = write_report(store, baselines=None)
    index = report.index.read_text()
    assert "## mnist, smoke budget, test split" in index
    assert (store / "report" / "tables" / "mnist-smoke-test.md").is_file()
    assert (store / "report" / "figures" / "mnist-smoke-test-mmd-vs-latent_dim.png").is_file()
    for path in report.files:
        assert path.is_file() and path.stat().st_size > 0
        if path.suffix == ".png":
            assert path.relative_to(store / "report").as_posix() in index or "metrics-vs" not in path.name
    # Tables CSV: the same means as a direct computation from results.csv.
    results = pd.read_csv(store / "results.csv")
    table = pd.read_csv(store / "report" / "tables" / "mnist-smoke-test.csv")
    expected = results[results["metric"] == "mmd"].groupby(["model", "latent_dim"])["value"].mean()
    for _, row in table[table["kind"] == "model"].iterrows():
        assert row["mmd_mean"] == pytest.approx(expected[(row["model"], int(row["latent_dim"]))], rel=1e-12)
    # Delete everything derived; the run folders alone rebuild the same results.csv.
    before = (store / "results.csv").read_bytes()
    (store / "results.csv").unlink()
    import shutil

    shutil.rmtree(store / "report")
    write_report(store, baselines=None, figures=False)
    assert (store / "results.csv").read_bytes() == before
    assert not list((store / "report").glob("figures/*"))


def test_report_of_an_empty_folder_says_what_to_do(tmp_path):
    report = write_report(tmp_path, baselines=None)
    assert "No evaluated runs yet" in report.index.read_text()
    with pytest.raises(UsageError, match="not a folder"):
        write_report(tmp_path / "missing")


def test_conditional_models_get_their_own_table_without_published_rows(store):
    write_run(store, "cgan", 100, 0, 0.03, None)
    write_run(store, "cgan", 100, 1, 0.05, None)
    published = pd.DataFrame([{"dataset": "mnist", "model": "VAE-10", "metric": "log_likelihood",
                               "value": 705.4, "std": 7.4, "std_is": "", "unit": "nats",
                               "setting": "AIS", "source": "Wu et al. 2017, Table 2"}])
    first, conditional = build_tables(collect_results(store), published=published)
    assert (first.name, conditional.name) == ("mnist-smoke-test", "mnist-smoke-test-conditional")
    assert {r.key["model"] for r in first.rows if r.kind == ROW_MODEL} == {"gan", "gvae"}
    assert [r.key["model"] for r in conditional.rows if r.kind == ROW_MODEL] == ["cgan"]
    assert conditional.rows[0].cells["mmd"].mean == pytest.approx(0.04)
    assert any(r.kind == ROW_PUBLISHED for r in first.rows)
    assert not any(r.kind == ROW_PUBLISHED for r in conditional.rows)
    index = write_report(store, baselines=None, figures=False).index.read_text()
    assert "## mnist, smoke budget, test split, conditional models" in index


def test_a_models_own_figures_and_neighbour_panels_join_the_report(store):
    import numpy as np
    from matplotlib.image import imsave

    run = next((store / "mnist" / "gvae").glob("*seed0-gvae100"))
    (run / "figures").mkdir()
    for code in ("categorical", "continuous_0"):
        imsave(run / "figures" / f"infogan_{code}.png", np.zeros((8, 8)), cmap="gray")
    imsave(run / "nearest_neighbours.png", np.ones((8, 16)), cmap="gray")
    report = write_report(store, baselines=None)
    figure = store / "report" / "figures" / "mnist-smoke-test-gvae_latent_dim_100-figures.png"
    assert figure in report.files
    assert "gvae_latent_dim_100-figures.png" in report.index.read_text()
    # The memorisation metric's panels, one per model row that has one.
    panel = store / "report" / "figures" / "mnist-smoke-test-nearest-neighbours.png"
    assert panel in report.files and "nearest-neighbours.png" in report.index.read_text()


def test_model_families_decide_the_tables():
    from genbench.reporting.aggregate import FAMILY_CONDITIONAL, FAMILY_PAIRED, model_family

    assert [model_family(m) for m in ("gvae", "cgan", "stackgan", "srgan", "pix2pix", "mine")] == [
        "", FAMILY_CONDITIONAL, FAMILY_CONDITIONAL, FAMILY_PAIRED, FAMILY_PAIRED, ""]


def _write_likelihood_run(root, model, seed, log_likelihood, space):
    folder = write_run(root, model, 100, seed, 0.01, log_likelihood)
    document = json.loads((folder / "metrics.json").read_text())
    document["metrics"]["log_likelihood"]["settings"] = {"method": "is", "data_space": space}
    (folder / "metrics.json").write_text(json.dumps(document))


def test_likelihoods_on_different_data_get_separate_columns_and_published_rows_follow(tmp_path):
    # A Bernoulli log p(x) of binarized pixels (about -90 nats) and a Gaussian density of
    # dequantized pixels (hundreds of nats) are not comparable: one column each, best per column.
    _write_likelihood_run(tmp_path, "vae", 0, -92.0, "binarized {0,1}")
    _write_likelihood_run(tmp_path, "ppca", 0, 403.0, "dequantized [0,1]")
    _write_likelihood_run(tmp_path, "gan", 0, 439.0, "dequantized [0,1]")
    write_run(tmp_path, "wgan", 100, 0, 0.02, None)  # inapplicable: n/a in both columns
    published = pd.DataFrame([
        {"dataset": "mnist", "model": "VAE k=1", "metric": "log_likelihood", "value": -86.76,
         "std": None, "std_is": "", "unit": "nats", "setting": "dynamically binarized MNIST",
         "source": "Burda et al. 2016"},
        {"dataset": "mnist", "model": "VAE-10", "metric": "log_likelihood", "value": 705.4,
         "std": 7.4, "std_is": "", "unit": "nats", "setting": "continuous MNIST in [0,1]",
         "source": "Wu et al. 2017"},
        {"dataset": "mnist", "model": "mystery", "metric": "log_likelihood", "value": 1.0,
         "std": None, "std_is": "", "unit": "nats", "setting": "unknown treatment", "source": "x"},
    ])
    [table] = build_tables(collect_results(tmp_path), published=published)
    names = [c.name for c in table.columns]
    assert names == ["mmd", "log_likelihood@binarized", "log_likelihood@continuous", "kl"]
    assert table.column("log_likelihood@continuous").label == "log p(x) (continuous)"
    rows = {r.key["model"]: i for i, r in enumerate(table.rows)}
    assert table.best_rows("log_likelihood@binarized") == []  # a single model: nothing to rank
    assert table.best_rows("log_likelihood@continuous") == [rows["gan"]]
    wgan = table.rows[rows["wgan"]]
    assert wgan.cells["log_likelihood@binarized"].status == "n/a"
    assert wgan.cells["log_likelihood@continuous"].status == "n/a"
    assert table.rows[rows["vae"]].cells["log_likelihood@continuous"].status == "n/a"
    assert any("split by the data" in note for note in table.notes)
    burda = table.rows[rows["VAE k=1 (published)"]]
    assert burda.cells["log_likelihood@binarized"].mean == -86.76
    assert not burda.cells["log_likelihood@continuous"].available
    wu = table.rows[rows["VAE-10 (published)"]]
    assert wu.cells["log_likelihood@continuous"].mean == 705.4
    assert "mystery (published)" not in rows  # unknown data treatment: matched to no column


def test_one_data_space_keeps_one_column_and_drops_unlike_published_rows(tmp_path):
    _write_likelihood_run(tmp_path, "vae", 0, -92.0, "binarized {0,1}")
    _write_likelihood_run(tmp_path, "vae", 1, -90.0, "binarized {0,1}")
    published = pd.DataFrame([
        {"dataset": "mnist", "model": "VAE-10", "metric": "log_likelihood", "value": 705.4,
         "std": 7.4, "std_is": "", "unit": "nats", "setting": "continuous MNIST in [0,1]",
         "source": "Wu et al. 2017"}])
    [table] = build_tables(collect_results(tmp_path), published=published)
    assert "log_likelihood" in [c.name for c in table.columns]
    assert not [r for r in table.rows if r.kind == ROW_PUBLISHED]


def test_a_column_no_model_has_a_value_for_is_left_out(tmp_path):
    write_run(tmp_path, "gan", 100, 0, 0.01, None)
    write_run(tmp_path, "gan", 100, 1, 0.02, None)
    [table] = build_tables(collect_results(tmp_path))
    assert [c.name for c in table.columns] == ["mmd"]  # log p(x) and KL are n/a for every GAN row
    assert all(set(r.cells) == {"mmd"} for r in table.rows)


def test_models_with_different_defaults_are_not_a_sweep(tmp_path):
    # InfoGAN's 62 latent dimensions beside a GAN's 100 are defaults, not a latent-size study:
    # one row per model, no latent_dim column, no plots against it.
    write_run(tmp_path, "gan", 100, 0, 0.01, None)
    write_run(tmp_path, "gan", 100, 1, 0.02, None)
    write_run(tmp_path, "vae", 62, 0, 0.03, -90.0)
    frame = collect_results(tmp_path)
    [table] = build_tables(frame)
    assert table.group_by == ["model"]
    assert [r.key["model"] for r in table.rows if r.kind == ROW_MODEL] == ["gan", "vae"]
    # Within one model, a second value is a sweep again.
    write_run(tmp_path, "vae", 500, 1, 0.04, -95.0)
    [table] = build_tables(collect_results(tmp_path))
    assert table.group_by == ["model", "latent_dim"]
    report = write_report(tmp_path, baselines=None)
    assert any("vs-latent_dim" in p.name for p in report.files)


def test_tables_from_a_read_back_csv_with_entries_that_have_no_status(tmp_path):
    folder = write_run(tmp_path, "gan", 100, 0, 0.01, None)
    write_run(tmp_path, "gan", 100, 1, 0.02, None)
    write_run(tmp_path, "vae", 100, 0, 0.03, -90.0)
    document = json.loads((folder / "metrics.json").read_text())
    del document["metrics"]["log_likelihood"]["status"]  # an older file: no status, no value
    (folder / "metrics.json").write_text(json.dumps(document))
    frame = read_results_csv(write_results_csv(tmp_path))  # empty CSV fields come back as NaN
    [table] = build_tables(frame)
    gan = next(r for r in table.rows if r.key["model"] == "gan")
    assert gan.cells["log_likelihood"].status == "n/a" and gan.cells["mmd"].n == 2


def test_models_without_a_prior_get_a_reconstruction_table(store):
    from genbench.reporting.aggregate import FAMILY_RECONSTRUCTION, model_family

    assert model_family("deepsim-inversion") == FAMILY_RECONSTRUCTION and model_family("gvae") == ""
    write_run(store, "deepsim-inversion", 100, 0, None, None)
    first, reconstruction = build_tables(collect_results(store))
    assert reconstruction.name == "mnist-smoke-test-reconstruction"
    assert [r.key["model"] for r in reconstruction.rows] == ["deepsim-inversion"]
    assert "deepsim-inversion" not in {r.key["model"] for r in first.rows}


def test_rows_and_plot_axis_follow_a_declared_layer_order_not_the_alphabet(tmp_path):
    from genbench.reporting.figures import metric_vs_parameter_figure

    # DeePSiM inversion declares layer: Literal["conv1", "conv2", "pool", "fc", "logits"].
    depth = ["conv1", "conv2", "pool", "fc", "logits"]
    for index, layer in enumerate(["logits", "conv1", "pool", "fc", "conv2"]):
        folder = write_run(tmp_path, "deepsim-inversion", index, 0, 0.01 * (depth.index(layer) + 1),
                           None)
        config = json.loads((folder / "config.json").read_text())
        config["model_config"] = {"layer": layer, "learning_rate": 0.0002}
        (folder / "config.json").write_text(json.dumps(config))
    [table] = build_tables(collect_results(tmp_path))
    assert table.group_by == ["model", "layer"]
    model_rows = [r for r in table.rows if r.kind == ROW_MODEL]
    assert [r.key["layer"] for r in model_rows] == depth
    assert [r.cells["mmd"].mean for r in model_rows] == pytest.approx([0.01, 0.02, 0.03, 0.04, 0.05])
    axis = metric_vs_parameter_figure(table, "mmd", "layer").axes[0]
    assert [t.get_text() for t in axis.get_xticklabels()] == depth
    line = axis.get_lines()[0]  # mmd grows with depth here, so y follows x when the axis does
    assert list(line.get_ydata()) == pytest.approx([0.01, 0.02, 0.03, 0.04, 0.05])


def test_an_option_added_later_is_no_swept_parameter_between_old_and_new_runs(tmp_path):
    # gan's latent_method came after the first runs: an old config lacks it, a new one saves
    # "off". Both ran without it, so they are one row; a run with it on is a swept value.
    for seed, method in [(0, None), (1, "off"), (2, "ngd")]:
        folder = write_run(tmp_path, "gan", 64, seed, 0.01 * (seed + 1), None)
        config = json.loads((folder / "config.json").read_text())
        if method is not None:
            config["model_config"]["latent_method"] = method
        (folder / "config.json").write_text(json.dumps(config))
    frame = collect_results(tmp_path)
    assert frame.attrs["parameters"] == ["latent_method"]
    [table] = build_tables(frame)
    rows = {r.key["latent_method"]: r for r in table.rows if r.kind == ROW_MODEL}
    assert set(rows) == {"off", "ngd"} and rows["off"].seeds == 2 and rows["ngd"].seeds == 1
