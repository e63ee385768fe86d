"""From the long results table to comparison tables: one row per model (and swept value), one
column per metric, mean and spread over seeds.

A table never mixes datasets, training budgets or splits: their numbers are not comparable
(evaluation settings follow the budget). Renderers (``tables.py``) and plots (``figures.py``) read
:class:`ComparisonTable` only.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Literal, get_args, get_origin, get_type_hints

import numpy as np
import pandas as pd
from scipy import stats

# Short column labels; metrics not listed use their registered name.
METRIC_LABELS = {
    "mmd": "MMD²",
    "ms_ssim_diversity": "MS-SSIM",
    "fid": "FID",
    "kid": "KID",
    "isc": "IS",
    "precision": "precision",
    "recall": "recall",
    "label_entropy": "label entropy",
    "log_likelihood": "log p(x)",
    "elbo": "ELBO",
    "kl": "KL",
    "log_likelihood_gap": "LL gap",
    "active_units": "active units",
    "reconstruction_mse": "recon. MSE",
    "reconstruction_error_normalized": "recon. error",
    "memorisation_nn_ratio": "NN ratio",
    "ms_ssim_per_class": "MS-SSIM per class",
    "psnr": "PSNR",
    "ssim": "SSIM",
}
# Units worth printing in a header; the others are dimensionless scores or named by the label.
HEADER_UNITS = {"nats": "nats", "units": "units", "MSE per pixel": "per pixel"}
# The order of columns: headline sample metrics, likelihoods, then the rest alphabetically.
METRIC_ORDER = ["mmd", "ms_ssim_diversity", "fid", "kid", "isc", "precision", "recall",
                "label_entropy", "log_likelihood", "elbo", "kl", "reconstruction_mse",
                "reconstruction_error_normalized", "active_units", "log_likelihood_gap",
                "memorisation_nn_ratio"]

# Likelihoods depend on the data they are measured on: a Bernoulli log p(x) of binarized pixels
# and a Gaussian density of dequantized [0, 1] pixels differ by hundreds of nats for the same
# model. A table whose rows measured these on different data gets one column per data space.
DATA_SPACE_METRICS = ("log_likelihood", "elbo")
SPACE_SEPARATOR = "@"

ROW_MODEL = "model"
ROW_REFERENCE = "reference"
ROW_PUBLISHED = "published"


@dataclass(frozen=True)
class MetricColumn:
    name: str
    label: str
    direction: str  # "higher", "lower" or "none"
    unit: str  # as registered ("nats", "squared MMD", ...)

    @property
    def header_unit(self) -> str:
        """The unit to print in a header, or "" for a dimensionless score."""
        return HEADER_UNITS.get(self.unit, "")


@dataclass
class Cell:
    """One metric for one row: the mean over seeds, the sample standard deviation (ddof 1; None
    for one seed), the number of seeds, and a 95% Student-t interval of the mean."""

    mean: float | None = None
    std: float | None = None
    n: int = 0
    ci_low: float | None = None
    ci_high: float | None = None
    values: list[float] = field(default_factory=list)
    status: str = "ok"  # "ok", "n/a" (does not apply), "missing" (not evaluated)
    mixed_settings: bool = False  # the seeds' values came from different estimator settings
    note: str = ""

    @property
    def available(self) -> bool:
        return self.mean is not None


FAMILY_CONDITIONAL = "conditional"
# Image-to-image models (srgan, pix2pix): each solves its own task, scored by PSNR/SSIM against
# its trivial baseline, so they are compared with neither the generative models nor, in bold,
# with each other in a way that means much; they get their own table.
FAMILY_PAIRED = "paired"
# Models without a prior (DeePSiM feature inversion): only reconstruction metrics apply, and
# their rows (one per inverted layer) would crowd the generative models' table.
FAMILY_RECONSTRUCTION = "reconstruction"


@dataclass
class Row:
    key: dict[str, Any]  # the group-by values, e.g. {"model": "gvae", "latent_dim": 100}
    cells: dict[str, Cell]
    kind: str = ROW_MODEL  # model, reference (real data) or published
    seeds: int = 0
    run_ids: list[str] = field(default_factory=list)
    source: str = ""  # published rows: the paper and table


@dataclass
class ComparisonTable:
    dataset: str
    budget: str
    split: str
    group_by: list[str]
    columns: list[MetricColumn]
    rows: list[Row]
    feature_extractors: dict[str, str] = field(default_factory=dict)  # metric -> extractor
    notes: list[str] = field(default_factory=list)
    family: str = ""  # "" for the unconditional models, FAMILY_CONDITIONAL for class-conditional ones

    @property
    def name(self) -> str:
        suffix = f"-{self.family}" if self.family else ""
        return f"{self.dataset}-{self.budget}-{self.split}{suffix}"

    def column(self, metric: str) -> MetricColumn:
        for column in self.columns:
            if column.name == metric:
                return column
        raise KeyError(f"no metric '{metric}' in table {self.name} "
                       f"(its metrics: {', '.join(c.name for c in self.columns)})")

    def best_rows(self, metric: str) -> list[int]:
        """Indices of the model rows with the best mean for ``metric`` (ties all count); empty for
        an unranked metric. Reference and published rows never count."""
        column = self.column(metric)
        if column.direction not in ("higher", "lower"):
            return []
        candidates = [(i, r.cells[metric].mean) for i, r in enumerate(self.rows)
                      if r.kind == ROW_MODEL and metric in r.cells and r.cells[metric].available]
        if len(candidates) < 2:
            return []
        pick = max if column.direction == "higher" else min
        best = pick(v for _, v in candidates)
        return [i for i, v in candidates if v == best]


def summarise(values: list[float]) -> Cell:
    """Mean, sample std (ddof 1) and 95% t-interval of per-seed values."""
    array = np.asarray(values, dtype=float)
    n = len(array)
    if n == 0:
        return Cell(status="missing")
    mean = float(array.mean())
    if n == 1:
        return Cell(mean=mean, n=1, values=[float(array[0])])
    std = float(array.std(ddof=1))
    half = float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n))
    return Cell(mean=mean, std=std, n=n, ci_low=mean - half, ci_high=mean + half,
                values=[float(v) for v in array])


def data_space(settings: Any) -> str | None:
    """``"binarized"`` or ``"continuous"`` for an estimate's data treatment, read from its settings
    (JSON with ``data_space``) or from free text (a published row's setting); None if unknown."""
    text = settings if isinstance(settings, str) else ""
    try:
        parsed = json.loads(text) if text.startswith("{") else None
    except json.JSONDecodeError:
        parsed = None
    if isinstance(parsed, dict):
        text = str(parsed.get("data_space", ""))
    lowered = text.lower()
    if "binariz" in lowered:
        return "binarized"
    if any(word in lowered for word in ("dequantiz", "continuous", "[0,1]", "[0, 1]")):
        return "continuous"
    return None


def _base_metric(name: str) -> str:
    return name.split(SPACE_SEPARATOR, 1)[0]


def metric_column(name: str, rows: pd.DataFrame | None = None) -> MetricColumn:
    base, _, space = name.partition(SPACE_SEPARATOR)
    column = _registered_column(base, rows)
    if space:
        return MetricColumn(name, f"{column.label} ({space})", column.direction, column.unit)
    return column


def _registered_column(name: str, rows: pd.DataFrame | None = None) -> MetricColumn:
    direction, unit = "none", ""
    try:
        from genbench.evaluation import compute, quality  # noqa: F401  (register the metrics)
        from genbench.evaluation.registry import METRICS

        entry = METRICS.get(name)
        direction, unit = entry.direction, entry.unit
    except Exception:  # a metric from a plug-in that is not installed here: trust the file
        if rows is not None and len(rows):
            direction = str(rows["direction"].dropna().iloc[0]) if rows["direction"].notna().any() else "none"
            unit = str(rows["unit"].dropna().iloc[0]) if rows["unit"].notna().any() else ""
    return MetricColumn(name, METRIC_LABELS.get(name, name), direction, unit)


def _settings_fingerprint(settings: str) -> str:
    """Settings that make values comparable; the per-run measured parts (references, bias,
    chosen sigma and timings) are left out."""
    try:
        values = json.loads(settings) if isinstance(settings, str) else {}
    except json.JSONDecodeError:
        return ""
    skip = {"real_reference", "bootstrap_bias", "sigma", "sigma_grid", "shift_nats", "normaliser",
            "bandwidth", "held_out", "train", "mean_estimator_std_error", "bits_per_dim",
            "mean_sample_to_train", "mean_test_to_train", "fraction_active", "observation",
            "histogram"}
    return json.dumps({k: v for k, v in values.items() if k not in skip}, sort_keys=True)


def _real_reference(rows: pd.DataFrame) -> list[float]:
    values = []
    for settings in rows["settings"].dropna():
        try:
            reference = json.loads(settings).get("real_reference")
        except json.JSONDecodeError:
            continue
        if reference is not None:
            values.append(float(reference))
    return values


def declared_order(models: list[str], parameter: str) -> list[Any] | None:
    """The values of ``parameter`` in the order the first of ``models`` with a config field of
    that name typed ``Literal[...]`` declares them (DeePSiM inversion's layers, conv1 to logits),
    so rows and plot axes follow the network rather than the alphabet; None when none does."""
    from genbench.models.registry import registered_config_class

    for model in models:
        config_class = registered_config_class(str(model))
        if config_class is None:  # a model no longer (or not here) registered
            continue
        annotation = get_type_hints(config_class).get(parameter)
        if get_origin(annotation) is Literal:
            return list(get_args(annotation))
    return None


def default_group_by(frame: pd.DataFrame) -> list[str]:
    """``model`` plus every parameter swept within a model of this frame (more than one value
    among one model's runs). Models differ in their defaults (InfoGAN's 62 latent dimensions
    beside a GAN's 64): that is no sweep, and makes neither rows nor plots against it."""
    parameters = frame.attrs.get("parameters", [])
    group = ["model"]
    for key in parameters:
        if key in frame and len(frame) and frame.groupby("model")[key].nunique(dropna=True).max() > 1:
            group.append(key)
    return group


def _key_value(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        value = float(value)
        return int(value) if value.is_integer() else value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def build_tables(frame: pd.DataFrame, group_by: list[str] | None = None, split: str = "test",
                 metrics: list[str] | None = None, published: pd.DataFrame | None = None
                 ) -> list[ComparisonTable]:
    """One :class:`ComparisonTable` per (dataset, budget) found in ``frame`` (a ``results.csv``),
    on ``split``. Rows are sorted by the group-by values; columns are the metrics present (or
    ``metrics``). ``published`` rows (``baselines/published.csv``) of the same dataset and metrics
    are appended, marked as published."""
    frame = frame[frame["metric"].fillna("") != ""]
    frame = frame[(frame["split"] == split) | (frame["run_status"] == "samples")]
    requested = list(group_by or [])
    missing = [key for key in requested if key not in frame.columns]
    if missing:
        from genbench.core.errors import UsageError

        known = ["model", "seed", *frame.attrs.get("parameters", [])]
        raise UsageError(f"--group-by: no column {', '.join(missing)} in the results "
                         f"(known: {', '.join(known)})")
    tables = []
    families = frame["model"].map(model_family)
    for (dataset, budget, family), part in frame.assign(_family=families).groupby(
            ["dataset", "budget", "_family"], sort=True, dropna=False):
        part = part.drop(columns="_family")
        part.attrs = frame.attrs
        # Published anchors are unconditional models: they belong beside the first wave only.
        table = _build_table(part, str(dataset), str(budget), split,
                             requested or default_group_by(part), metrics,
                             None if family else published)
        table.family = family
        tables.append(table)
    # The longest-trained budget first: it is the one a reader came for; then the datasets by
    # name and the families (unconditional, conditional, paired, reconstruction).
    family_order = {"": 0, FAMILY_CONDITIONAL: 1, FAMILY_PAIRED: 2, FAMILY_RECONSTRUCTION: 3}
    tables.sort(key=lambda t: (-_budget_steps(t.budget), t.dataset, family_order.get(t.family, 4)))
    return tables


def _budget_steps(budget: str) -> int:
    """Training steps of a named budget; 0 for one this version does not know."""
    from genbench.training.budgets import BUDGET_TRAIN_CONFIGS

    config = BUDGET_TRAIN_CONFIGS.get(budget)
    return config.steps if config is not None else 0


def model_family(model: Any) -> str:
    """``FAMILY_PAIRED`` for a registered image-to-image model (it has ``translate``),
    ``FAMILY_RECONSTRUCTION`` for one without a prior (``can_sample`` False),
    ``FAMILY_CONDITIONAL`` for a class-conditional one (its samples are drawn per class, so it
    gets a table of its own with per-class diversity), else ``""``. Names this process does not
    know (a user's model, evaluated samples) count as unconditional."""
    from genbench.models import MODELS

    if str(model) not in MODELS:
        return ""
    model_class = MODELS.get(str(model))
    if callable(getattr(model_class, "translate", None)):
        return FAMILY_PAIRED
    if not getattr(model_class, "can_sample", True):
        return FAMILY_RECONSTRUCTION
    return FAMILY_CONDITIONAL if getattr(model_class, "conditional", False) else ""


def _build_table(part: pd.DataFrame, dataset: str, budget: str, split: str, group_by: list[str],
                 metrics: list[str] | None, published: pd.DataFrame | None) -> ComparisonTable:
    part, spaces = _split_by_data_space(part)
    present = list(dict.fromkeys(part["metric"]))
    if metrics:  # a requested base metric keeps all its per-data-space columns
        present = [m for m in present if m in metrics or _base_metric(m) in metrics]
    names = sorted(present, key=lambda m: (
        (metrics.index(_base_metric(m)) if metrics and _base_metric(m) in metrics
         else METRIC_ORDER.index(_base_metric(m)) if _base_metric(m) in METRIC_ORDER
         else len(METRIC_ORDER)), m))
    columns = [metric_column(m, part[part["metric"] == m]) for m in names]
    rows: list[Row] = []
    keyed = part.assign(**{k: part[k].map(_key_value).astype(object) for k in group_by})
    models = [m for m in part["model"].dropna().unique()] if "model" in part else []
    for k in group_by:  # a declared order (layers from input to output) beats the alphabet
        order = declared_order(models, k)
        if order:
            extra = sorted(set(keyed[k].dropna()) - set(order), key=str)
            keyed[k] = pd.Categorical(keyed[k], categories=[*order, *extra], ordered=True)
    for key_values, group in keyed.groupby(group_by, sort=True, dropna=False, observed=True):
        key_values = key_values if isinstance(key_values, tuple) else (key_values,)
        key = {k: _key_value(v) for k, v in zip(group_by, key_values)}
        cells = {}
        for column in columns:
            rows_m = group[group["metric"] == column.name]
            ok = rows_m[(rows_m["status"] == "ok") & rows_m["value"].notna()]
            if len(ok):
                cell = summarise(ok["value"].astype(float).tolist())
                cell.mixed_settings = ok["settings"].map(_settings_fingerprint).nunique() > 1
            elif len(rows_m):
                statuses = rows_m["status"].fillna("").astype(str)
                cell = Cell(status="n/a", note="; ".join(sorted(set(statuses))))
            else:
                cell = Cell(status="missing")
            cells[column.name] = cell
        for name, cell in cells.items():  # measured, but on the other data space
            base = _base_metric(name)
            if name != base and cell.status == "missing" and any(
                    other != name and _base_metric(other) == base and sibling.available
                    for other, sibling in cells.items()):
                cells[name] = Cell(status="n/a", note="measured on other data")
        run_ids = sorted(set(group["run_id"]))
        rows.append(Row(key=key, cells=cells, seeds=len(run_ids), run_ids=run_ids))

    reference = {}
    for column in columns:
        values = _real_reference(part[part["metric"] == column.name])
        if values:
            cell = summarise(values)
            # Every run measures the same real-data value when the settings agree: show it once.
            if cell.std is not None and cell.std < 1e-12 * max(1.0, abs(cell.mean)):
                cell = Cell(mean=cell.mean, n=cell.n, values=cell.values)
            reference[column.name] = cell
    if reference:
        key = {k: "" for k in group_by} | {group_by[0]: "real data"}
        rows.append(Row(key=key, cells={c.name: reference.get(c.name, Cell(status="n/a"))
                                        for c in columns}, kind=ROW_REFERENCE))
    if published is not None and len(published):
        rows.extend(_published_rows(published, dataset, columns, group_by, spaces))

    # A column no model row has a value in (a metric every run found inapplicable) says nothing.
    shown = [c for c in columns
             if any(r.kind == ROW_MODEL and r.cells[c.name].available for r in rows)]
    if shown != columns:
        columns = shown
        for row in rows:
            row.cells = {c.name: row.cells[c.name] for c in columns}
        rows = [r for r in rows
                if r.kind != ROW_PUBLISHED or any(c.available for c in r.cells.values())]

    extractors = {}
    for column in columns:
        labels = sorted(set(part.loc[part["metric"] == column.name, "feature_extractor"].dropna()) - {""})
        if labels:
            extractors[column.name] = " / ".join(labels)
    notes = []
    if len(spaces) > 1:
        notes.append("log p(x) and ELBO are split by the data they were measured on: binarized "
                     "{0,1} pixels (a Bernoulli probability) or dequantized [0,1] pixels (a density, "
                     "Gaussian observation with σ chosen on validation images); the two scales are "
                     "not comparable")
    if any(c.mixed_settings for r in rows for c in r.cells.values()):
        notes.append("† the seeds of this cell were evaluated with different estimator settings")
    return ComparisonTable(dataset, budget, split, group_by, columns, rows, extractors, notes)


def _split_by_data_space(part: pd.DataFrame) -> tuple[pd.DataFrame, set[str]]:
    """Rename the data-space-dependent metrics to ``metric@space`` when the model rows measured
    them on more than one data space. Returns the frame and the set of known spaces."""
    dependent = part["metric"].isin(DATA_SPACE_METRICS) & (part["status"] == "ok")
    row_spaces = part.loc[dependent, "settings"].map(data_space)
    spaces = set(row_spaces.dropna())
    if len(spaces) > 1:
        part = part.copy()
        known = row_spaces.dropna()
        part.loc[known.index, "metric"] = part.loc[known.index, "metric"] + SPACE_SEPARATOR + known
        # The inapplicable rows of a split metric (a GAN has no ELBO) belong to every space.
        inapplicable = part["metric"].isin(DATA_SPACE_METRICS) & (part["status"] != "ok")
        if inapplicable.any():
            copies = [part[inapplicable].assign(metric=part.loc[inapplicable, "metric"]
                                                + SPACE_SEPARATOR + space)
                      for space in sorted(spaces)]
            part = pd.concat([part[~inapplicable], *copies])
    return part, spaces


def _published_rows(published: pd.DataFrame, dataset: str, columns: list[MetricColumn],
                    group_by: list[str], spaces: set[str] | None = None) -> list[Row]:
    """Published numbers as marked rows. A likelihood goes into the column of its data space and
    is left out where no model row measured on that space (it would compare unlike with unlike)."""
    spaces = spaces or set()
    names = {c.name for c in columns}
    mine = published[published["dataset"] == dataset].copy()

    def column_name(entry: pd.Series) -> str | None:
        metric = str(entry["metric"])
        if metric not in DATA_SPACE_METRICS:
            return metric
        space = (data_space(str(entry.get("data_space", "") or ""))
                 or data_space(str(entry.get("setting", ""))))
        if space is None or not spaces:
            return metric
        if len(spaces) == 1:
            return metric if space in spaces else None
        return f"{metric}{SPACE_SEPARATOR}{space}" if space in spaces else None

    mine["_column"] = mine.apply(column_name, axis=1) if len(mine) else []
    mine = mine[mine["_column"].isin(names)]
    rows = []
    for (model, setting, source), group in mine.groupby(["model", "setting", "source"], sort=False):
        cells = {c.name: Cell(status="missing") for c in columns}
        for _, entry in group.iterrows():
            std = None if pd.isna(entry.get("std")) else float(entry["std"])
            cells[entry["_column"]] = Cell(mean=float(entry["value"]), std=std, n=0,
                                          note=str(entry.get("std_is", "") or ""))
        key = {k: "" for k in group_by} | {group_by[0]: f"{model} (published)"}
        rows.append(Row(key=key, cells=cells, kind=ROW_PUBLISHED,
                        source=f"{source}; {setting}"))
    return rows
