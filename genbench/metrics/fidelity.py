"""FID, KID, the Inception-style score (``isc``) and precision/recall, computed by torch-fidelity.

torch-fidelity does the metric arithmetic; this module only feeds it. A genbench
:class:`~genbench.features.classifier.DatasetClassifier` is registered with torch-fidelity as a feature
extractor (:func:`register_classifier`), images are handed to torch-fidelity as a ``Dataset`` of
``uint8 [C, H, W]`` tensors, features are extracted once per input through
``torch_fidelity.utils.extract_featuresdict_from_input_id``, and every number comes from torch-fidelity's
own ``featuresdict -> metric`` functions (``metric_fid``, ``metric_kid``, ``metric_isc``, ``metric_prc``).
Because the features are kept, bootstrap intervals and FID-versus-N curves cost no further passes
through the network.

Images enter as float ``[N, C, H, W]`` in ``[-1, 1]`` and are rounded to ``uint8`` first
(:func:`to_uint8`), exactly as writing them to PNG files would: the numbers are those torch-fidelity
gives on the saved images, and with ``extractor_name="inception"`` they are the standard
Inception-v3 FID/KID/IS (:func:`inception_available` says whether its weights are on disk; nothing is
ever downloaded here).
"""

from __future__ import annotations

import copy
import hashlib
import os
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch
import torch_fidelity
from torch.utils.data import Dataset
from torch_fidelity import metric_fid, metric_isc, metric_kid, metric_prc
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
from torch_fidelity.utils import create_feature_extractor, extract_featuresdict_from_input_id

from genbench.core.errors import GenbenchError, UsageError
from genbench.features.classifier import FEATURE_DIM, DatasetClassifier
from genbench.metrics.checks import check_finite, check_images
from genbench.metrics.result import ScalarResult

METRICS = ("fid", "kid", "isc", "prc")
INCEPTION = "inception-v3-compat"
# Short names accepted by ``--feature-extractor``.
EXTRACTOR_ALIASES = {"inception": INCEPTION}
PRC_NEIGHBORHOOD = 3  # torch-fidelity's default k of the k-NN balls (Kynkaanniemi et al. 2019)
# Images per chunk when extraction is sharded over ranks, in batches: a multiple of the batch size
# keeps every rank's batches those of one process (the same images together, so the same numbers).
SHARD_BATCHES = 8

# Registered name -> classifier. torch-fidelity's registry maps a name to a class and refuses a second
# registration of the name, so one class is registered under every name and looks its classifier up
# here when torch-fidelity instantiates it; re-registering a name only updates this mapping.
_CLASSIFIERS: dict[str, DatasetClassifier] = {}


class ClassifierFeatureExtractor(torch_fidelity.FeatureExtractorBase):
    """A genbench classifier as a torch-fidelity feature extractor.

    Input: ``uint8 [B, C, H, W]`` (what torch-fidelity's DataLoader collates from a Dataset; a folder
    of PNGs gives ``C = 3``). Three channels are turned into one with PIL's ``L`` luma weights (exact
    for grey images stored as RGB), one into three by repetition; then ``x / 127.5 - 1`` gives the
    classifier's ``[-1, 1]``. Features: ``"128"``, the penultimate layer ``[B, 128]`` (FID, KID, PRC),
    and ``"logits"``, the class logits ``[B, num_classes]`` with the head's bias (``isc``). Inception's
    ``logits_unbiased`` drops the bias only to reproduce the original TensorFlow Inception Score; here
    the bias is part of the classifier's ``p(y | x)``, so it stays.
    """

    def __init__(self, name: str, features_list, **kwargs):
        super().__init__(name, features_list)
        if name not in _CLASSIFIERS:
            raise UsageError(f"no genbench classifier is registered as {name!r}; call register_classifier")
        # A copy: torch-fidelity calls eval(), requires_grad_(False) and cuda() on the extractor, which
        # must not switch off gradients of, or move, a classifier the caller may still be training.
        self.classifier = copy.deepcopy(_CLASSIFIERS[name])

    @staticmethod
    def get_provided_features_list():
        return str(FEATURE_DIM), "logits"

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return {"isc": "logits", "fid": str(FEATURE_DIM), "kid": str(FEATURE_DIM),
                "prc": str(FEATURE_DIM)}[metric]

    @staticmethod
    def can_be_compiled():
        return False  # a few hundred kB network: compiling costs more than it saves

    @staticmethod
    def get_dummy_input_for_compile():
        return torch.zeros(1, 1, 28, 28, dtype=torch.uint8)

    def forward(self, x: torch.Tensor):
        if x.dtype != torch.uint8 or x.dim() != 4:
            raise UsageError(f"expected uint8 images [B, C, H, W], got {x.dtype} {tuple(x.shape)}")
        weight = next(self.classifier.parameters())
        x = x.to(weight.dtype)
        channels = self.classifier.channels
        if x.shape[1] == 3 and channels == 1:
            # PIL's RGB -> L in integers, so grey pixels (k, k, k) give exactly k.
            x = (x[:, 0:1] * 299 + x[:, 1:2] * 587 + x[:, 2:3] * 114) / 1000
        elif x.shape[1] == 1 and channels == 3:
            x = x.expand(-1, 3, -1, -1)
        elif x.shape[1] != channels:
            raise UsageError(f"images have {x.shape[1]} channels; the classifier takes {channels}")
        x = x / 127.5 - 1  # [0, 255] -> [-1, 1], the inverse of to_uint8
        features = self.classifier.features(x)  # [B, 128]
        out = {str(FEATURE_DIM): features, "logits": self.classifier.head(features)}  # logits [B, K]
        # float32 like torch-fidelity's own extractors: its FID asserts equal dtypes on both inputs.
        return tuple(out[name].float() for name in self.features_list)


def register_classifier(classifier: DatasetClassifier, name: str) -> str:
    """Make ``classifier`` available to torch-fidelity as feature extractor ``name``; returns ``name``.

    Idempotent: registering a name again (with the same or another classifier) replaces the classifier
    behind it, so the extractor built next uses the latest one. A name that torch-fidelity already uses
    for its own extractors (``inception-v3-compat``, ``vgg16``, ...) is refused.
    """
    if not isinstance(classifier, DatasetClassifier):
        raise UsageError(f"classifier must be a DatasetClassifier, got {type(classifier).__name__}")
    if not isinstance(name, str) or not name or name.strip() != name or os.path.sep in name:
        raise UsageError(f"extractor name must be a non-empty string without surrounding spaces or "
                         f"{os.path.sep!r}, got {name!r}")
    registered = FEATURE_EXTRACTORS_REGISTRY.get(name)
    if registered is not None and registered is not ClassifierFeatureExtractor:
        raise UsageError(f"{name!r} is one of torch-fidelity's own feature extractors; pick another name")
    _CLASSIFIERS[name] = classifier
    if registered is None:
        torch_fidelity.register_feature_extractor(name, ClassifierFeatureExtractor)
    return name


def classifier_name(classifier: DatasetClassifier) -> str:
    """A name that identifies the classifier's weights: ``genbench-classifier-<12 hex of SHA-256>``."""
    digest = hashlib.sha256()
    for key, value in sorted(classifier.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return f"genbench-classifier-{digest.hexdigest()[:12]}"


def inception_weights_path() -> Path:
    """Where torch-fidelity's ``inception-v3-compat`` loads its weights from without downloading.

    torch-fidelity calls ``torch.hub.load_state_dict_from_url``, which looks in
    ``torch.hub.get_dir()/checkpoints/`` (``$TORCH_HOME/hub/checkpoints``, ``TORCH_HOME`` defaulting to
    ``$XDG_CACHE_HOME/torch``, i.e. ``~/.cache/torch``) for the URL's file name.
    """
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(URL_INCEPTION_V3).path)


def inception_available() -> bool:
    """Whether the Inception-v3 weights are on disk (see :func:`inception_weights_path`)."""
    return inception_weights_path().is_file()


def resolve_extractor(classifier: DatasetClassifier | None = None, extractor_name: str | None = None) -> str:
    """The torch-fidelity name of the feature extractor to use, registering ``classifier`` if given.

    - ``classifier`` given: registered as ``extractor_name``, or as :func:`classifier_name` if ``None``.
    - ``extractor_name`` ``"inception"`` / ``"inception-v3-compat"``: torch-fidelity's Inception-v3;
      raises :class:`GenbenchError` naming the missing file when its weights are not on disk.
    - otherwise ``extractor_name`` must be a name given earlier to :func:`register_classifier`.
    """
    if classifier is not None:
        return register_classifier(classifier, extractor_name or classifier_name(classifier))
    name = EXTRACTOR_ALIASES.get(extractor_name, extractor_name)
    if name == INCEPTION:
        path = inception_weights_path()
        if not path.is_file():
            raise GenbenchError(f"Inception-v3 weights not found: {path} is missing; download "
                                f"{URL_INCEPTION_V3} to that path (or set TORCH_HOME to a folder whose "
                                f"hub/checkpoints/ holds it), or use the dataset classifier")
        return name
    if name in _CLASSIFIERS:
        return name
    known = ", ".join(["inception", *sorted(_CLASSIFIERS)])
    raise UsageError(f"unknown feature extractor {extractor_name!r}; pass classifier= or one of: {known}")


def feature_layer(extractor: str, metric: str) -> str:
    """The extractor's feature layer for ``metric`` (torch-fidelity's own default for that extractor)."""
    if extractor not in FEATURE_EXTRACTORS_REGISTRY:
        raise UsageError(f"feature extractor {extractor!r} is not registered; use resolve_extractor")
    return FEATURE_EXTRACTORS_REGISTRY[extractor].get_default_feature_layer_for_metric(metric)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Float ``[N, C, H, W]`` in ``[-1, 1]`` -> ``uint8`` ``[0, 255]``, rounded to nearest, as saving PNGs.

    Values outside ``[-1, 1]`` are clipped. Images already on the 8-bit grid (``to_model_range`` of
    ``uint8`` data) come back exactly.
    """
    return ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round_().to(torch.uint8)


class _UInt8Images(Dataset):
    """torch-fidelity's Dataset input: ``uint8 [N, C, H, W]`` served as ``[C', H, W]`` per index."""

    def __init__(self, images: torch.Tensor, channels: int | None = None):
        if channels == 3 and images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)  # Inception takes RGB only
        self.images = images.cpu()

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.images[index]


# Overshoot of a [-1, 1] model up to this much is clipped by to_uint8, as a PNG writer would; a range
# further off means the images are in another convention ([0, 255]), which clipping would destroy.
CLIP_TOLERANCE = 0.5


def _check_images(images, name: str) -> torch.Tensor:
    check_images(images, name, tolerance=CLIP_TOLERANCE,
                 hint="map uint8 images with genbench.data.to_model_range, [0, 1] ones with 2 * x - 1")
    if images.shape[0] < 2:
        raise UsageError(f"{name} needs at least 2 images, got {images.shape[0]}")
    return images


def extract_features(images: torch.Tensor, extractor: str, layers: Sequence[str] | None = None,
                     batch_size: int = 64, device: str | torch.device = "cpu",
                     shard=None) -> dict[str, torch.Tensor]:
    """Features of ``images`` through torch-fidelity's extraction loop, one pass for all ``layers``.

    Args:
        images: float ``[N, C, H, W]`` in ``[-1, 1]``; rounded by :func:`to_uint8` first.
        extractor: a name from :func:`resolve_extractor`.
        layers: feature names to extract; ``None`` gives the layers of all of FID, KID, ISC and PRC.
        device: ``"cpu"`` or a CUDA device (torch-fidelity's ``cuda=True``).
        shard: inside a process group, a :class:`genbench.training.distributed.Ranks`: every rank
            passes the same ``images`` and extracts a contiguous run of chunks of
            ``SHARD_BATCHES * batch_size`` images; the features are gathered in order. Each rank
            runs the network on the batches one process would, so the features are the same.

    Returns:
        torch-fidelity's featuresdict: layer name -> float32 ``[N, D]`` on the CPU.
    """
    images = _check_images(images, "images")
    if layers is None:
        layers = sorted({feature_layer(extractor, metric) for metric in METRICS})
    if shard is None or not shard.distributed:
        return _extract(images, extractor, layers, batch_size, device)
    chunk = SHARD_BATCHES * batch_size
    owned = shard.owned_chunks(-(-len(images) // chunk))
    mine = images[owned.start * chunk : owned.stop * chunk]
    local = _extract(mine, extractor, layers, batch_size, device) if len(mine) else {}
    return {layer: shard.gather_rows(local.get(layer)) for layer in layers}


def _extract(images: torch.Tensor, extractor: str, layers: Sequence[str], batch_size: int,
             device: str | torch.device) -> dict[str, torch.Tensor]:
    """:func:`extract_features` of ``images`` in this process (checked by the caller; N >= 1)."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    kwargs: dict = {}
    if extractor == INCEPTION:
        # An explicit path makes torch-fidelity torch.load the file instead of calling the downloader.
        kwargs["feature_extractor_weights_path"] = str(inception_weights_path())
    dataset = _UInt8Images(to_uint8(images), channels=3 if extractor == INCEPTION else None)
    # torch-fidelity moves batches with .cuda(), i.e. to the current CUDA device.
    with torch.cuda.device(device) if cuda else nullcontext():
        network = create_feature_extractor(extractor, list(layers), cuda=cuda, verbose=False, **kwargs)
        # save_cpu_ram: DataLoader without worker processes; the images are already in memory.
        return extract_featuresdict_from_input_id(1, network, input1=dataset, batch_size=batch_size,
                                                  cuda=cuda, save_cpu_ram=True, verbose=False)


def _check_metrics(metrics: Sequence[str]) -> tuple[str, ...]:
    metrics = (metrics,) if isinstance(metrics, str) else tuple(metrics)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise UsageError(f"unknown metrics {unknown or list(metrics)}; choose from {', '.join(METRICS)}")
    return metrics


def _check_counts(bootstrap: int, kid_subsets: int, kid_subset_size: int, isc_splits: int) -> None:
    for name, value, low in (("bootstrap", bootstrap, 0), ("kid_subsets", kid_subsets, 1),
                             ("kid_subset_size", kid_subset_size, 2), ("isc_splits", isc_splits, 1)):
        if not isinstance(value, (int, np.integer)) or value < low:
            raise UsageError(f"{name} must be an integer >= {low}, got {value!r}")


def _check_sizes(metrics: tuple[str, ...], num_gen: int, num_real: int | None, isc_splits: int) -> int:
    """Fail before any work when an input is too small; returns ``min(N, M)`` (``N`` without real)."""
    smallest = min(num_gen, num_real) if num_real is not None else num_gen
    if "prc" in metrics and smallest <= PRC_NEIGHBORHOOD:
        raise UsageError(f"precision/recall needs more than {PRC_NEIGHBORHOOD} images per input "
                         f"(its k-NN balls use k = {PRC_NEIGHBORHOOD}), got {smallest}")
    if "isc" in metrics and num_gen < isc_splits:
        raise UsageError(f"isc needs at least isc_splits={isc_splits} generated images, got {num_gen}")
    return smallest


def _bootstrap_interval(resampled: list[float], observed: float) -> tuple[float, float, float]:
    """95% percentile interval of the resampled values after removing their mean shift from ``observed``.

    Returns ``(ci_low, ci_high, bias)`` with ``bias = mean(resampled) - observed``. A resample with
    replacement repeats about a third of the points, which moves these statistics by about as much as
    their spread: FID and KID up (the resample's mean and kernel sums see copies), recall down (a copy
    at distance 0 shrinks the k-NN balls). Measured on MNIST features, N = 200: FID +0.0009 against a
    sampling standard deviation of 0.0003, recall -0.12 against 0.03, so the raw percentiles can miss
    the observed value altogether. Subtracting the bootstrap estimate of the bias (Efron & Tibshirani
    1993, ch. 10) keeps the spread, which was within a factor of 2 of the spread over independent sets
    of 200 there, centred on the value at this N, which is what two models evaluated at the same N are
    compared by.
    """
    values = np.asarray(resampled, dtype=np.float64)
    bias = float(values.mean()) - observed
    low, high = np.percentile(values - bias, [2.5, 97.5])
    return float(low), float(high), bias


def fidelity_metrics_from_features(features_generated: dict[str, torch.Tensor],
                                   features_real: dict[str, torch.Tensor] | None, extractor: str,
                                   metrics: Sequence[str] = METRICS, kid_subset_size: int = 1000,
                                   kid_subsets: int = 100, isc_splits: int = 10, bootstrap: int = 0,
                                   seed: int = 0, shard=None) -> dict[str, ScalarResult]:
    """The metrics of :func:`fidelity_metrics` from featuresdicts of :func:`extract_features`.

    ``features_real`` may be ``None`` when only ``"isc"`` is asked for. See :func:`fidelity_metrics`.
    ``shard`` (a :class:`genbench.training.distributed.Ranks`, every rank passing the same features)
    shares the bootstrap resamples out over the ranks: the resamples are drawn on every rank from
    the one seeded generator, each rank computes a contiguous run of them, and the values are
    gathered in order, so the intervals are those of one process.
    """
    metrics = _check_metrics(metrics)
    layers = {metric: feature_layer(extractor, metric) for metric in metrics}
    _check_counts(bootstrap, kid_subsets, kid_subset_size, isc_splits)
    for label, features in (("features_generated", features_generated), ("features_real", features_real)):
        for layer, values in (features or {}).items():
            check_finite(values, f"{label}[{layer!r}]", "the metrics need finite features")
    num_gen = len(next(iter(features_generated.values())))
    binary = [m for m in metrics if m != "isc"]
    if binary and features_real is None:
        raise UsageError(f"{', '.join(binary)} compare with real images; pass real")
    num_real = len(next(iter(features_real.values()))) if features_real is not None else None
    smallest = _check_sizes(metrics, num_gen, num_real, isc_splits)

    # Keyword arguments of torch-fidelity's metric functions (its defaults for the rest).
    common = {"verbose": False, "rng_seed": seed, "save_cpu_ram": True}
    kid_kwargs = {**common, "kid_subsets": kid_subsets, "kid_subset_size": min(kid_subset_size, smallest)}
    prc_kwargs = {**common, "prc_neighborhood": PRC_NEIGHBORHOOD}
    real_fid_stats = (metric_fid.fid_featuresdict_to_statistics(features_real, layers["fid"])
                      if "fid" in metrics else None)

    def binary_metrics(features: dict[str, torch.Tensor]) -> dict[str, float]:
        out = {}
        if "fid" in metrics:
            stats = metric_fid.fid_featuresdict_to_statistics(features, layers["fid"])
            out["fid"] = metric_fid.fid_statistics_to_metric(stats, real_fid_stats, False)[
                torch_fidelity.KEY_METRIC_FID]
        if "kid" in metrics:
            kid = metric_kid.kid_featuresdict_to_metric(features, features_real, layers["kid"], **kid_kwargs)
            out["kid"] = kid[torch_fidelity.KEY_METRIC_KID_MEAN]
            out["kid_std"] = kid[torch_fidelity.KEY_METRIC_KID_STD]
        if "prc" in metrics:
            prc = metric_prc.prc_featuresdict_to_metric(features, features_real, layers["prc"], **prc_kwargs)
            out["precision"] = prc[torch_fidelity.KEY_METRIC_PRECISION]
            out["recall"] = prc[torch_fidelity.KEY_METRIC_RECALL]
        return out

    full = binary_metrics(features_generated)
    # Resample the generated features only: the real set is the fixed reference.
    generator = torch.Generator().manual_seed(seed)
    indices = [torch.randint(num_gen, (num_gen,), generator=generator) for _ in range(bootstrap)]
    owned = range(bootstrap) if shard is None else shard.owned_chunks(bootstrap)
    mine = [binary_metrics({k: v[indices[b]] for k, v in features_generated.items()}) for b in owned]
    every = mine if shard is None else [m for part in shard.gather_objects(mine) for m in part]
    resampled: dict[str, list[float]] = {key: [] for key in ("fid", "kid", "precision", "recall")}
    for values in every:  # in resample order
        for key, value in values.items():
            if key in resampled:
                resampled[key].append(value)

    def settings(metric: str, **extra) -> dict:
        out = {"feature_extractor": extractor, "feature_layer": layers[metric], "num_generated": num_gen,
               "num_real": num_real, "bootstrap": bootstrap, "seed": seed, "computed_by": "torch-fidelity "
               + torch_fidelity.__version__}
        if bootstrap and metric != "isc":
            out["ci"] = ("95% percentile bootstrap over resampled generated features (real fixed), "
                         "shifted by -bootstrap_bias")
        return {**out, **extra}

    def result(key: str, metric: str, std: float | None = None, **extra) -> ScalarResult:
        ci_low = ci_high = None
        if bootstrap:
            ci_low, ci_high, extra["bootstrap_bias"] = _bootstrap_interval(resampled[key], full[key])
        return ScalarResult(value=float(full[key]), std=std, ci_low=ci_low, ci_high=ci_high,
                            num_samples=num_gen, settings=settings(metric, **extra))

    results: dict[str, ScalarResult] = {}
    if "fid" in metrics:
        results["fid"] = result("fid", "fid", units="squared feature units")
    if "kid" in metrics:
        results["kid"] = result("kid", "kid", std=float(full["kid_std"]),
                                subsets=kid_subsets, subset_size=kid_kwargs["kid_subset_size"],
                                subset_size_requested=kid_subset_size,
                                kernel="polynomial (a.b / D + 1)^3",
                                std_is="standard deviation over subsets (ddof=0)")
    if "isc" in metrics:
        isc = metric_isc.isc_featuresdict_to_metric(features_generated, layers["isc"], isc_splits=isc_splits,
                                                    samples_shuffle=True, **common)
        results["isc"] = ScalarResult(value=float(isc[torch_fidelity.KEY_METRIC_ISC_MEAN]),
                                      std=float(isc[torch_fidelity.KEY_METRIC_ISC_STD]), num_samples=num_gen,
                                      settings=settings("isc", splits=isc_splits,
                                                        std_is="standard deviation over splits (ddof=0)"))
    if "prc" in metrics:
        for key in ("precision", "recall"):
            results[key] = result(key, "prc", neighborhood=PRC_NEIGHBORHOOD, units="fraction in [0, 1]")
    return results


def fidelity_metrics(generated: torch.Tensor, real: torch.Tensor | None,
                     classifier: DatasetClassifier | None = None, extractor_name: str | None = None,
                     metrics: Sequence[str] = METRICS, kid_subset_size: int = 1000, kid_subsets: int = 100,
                     isc_splits: int = 10, bootstrap: int = 0, seed: int = 0, batch_size: int = 64,
                     device: str | torch.device = "cpu") -> dict[str, ScalarResult]:
    """FID, KID, ISC and precision/recall of generated images against real ones, by torch-fidelity.

    Args:
        generated: float ``[N, C, H, W]`` in ``[-1, 1]``; real: ``[M, C, H, W]`` (``None`` for ISC only).
            Both are rounded to 8 bits (:func:`to_uint8`) and each passes through the network once.
        classifier, extractor_name: the feature extractor, see :func:`resolve_extractor` (a classifier,
            optionally with the name to record, or ``"inception"`` for torch-fidelity's Inception-v3).
        metrics: any of ``"fid"``, ``"kid"``, ``"isc"``, ``"prc"``.
        kid_subset_size: KID's subset size, clamped to ``min(N, M)``; the value used is in
            ``settings["subset_size"]``. kid_subsets: number of KID subsets.
        isc_splits: the ISC's splits of the generated set (torch-fidelity's default 10).
        bootstrap: ``B > 0`` resamples the generated features with replacement ``B`` times and
            recomputes FID, KID and precision/recall on each; ``ci_low``/``ci_high`` are the 2.5 and
            97.5 percentiles of the resampled values minus their mean shift from the full-sample value
            (``settings["bootstrap_bias"]``; see :func:`_bootstrap_interval` for why). The network is not
            rerun, but KID and PRC are, so this costs ``B`` times their computation. ISC keeps its
            spread over splits only.
        seed: seeds the KID subsets and the ISC shuffle (torch-fidelity's ``rng_seed``) and the resamples.
        batch_size: images per forward pass. device: ``"cpu"`` or a CUDA device.

    Returns:
        ``{"fid", "kid", "isc", "precision", "recall"}`` (those asked for) as :class:`ScalarResult`:
        ``fid`` in squared feature units; ``kid`` the mean over subsets (squared kernel units), ``std``
        torch-fidelity's standard deviation over subsets; ``isc`` the mean over splits (1 to the number
        of classes), ``std`` over splits; ``precision``/``recall`` fractions. ``num_samples`` is ``N``;
        ``settings`` records the feature extractor and layer, ``num_generated``, ``num_real``,
        ``bootstrap`` and ``seed``.
    """
    generated = _check_images(generated, "generated")
    if real is not None:
        real = _check_images(real, "real")
        if real.shape[1:] != generated.shape[1:]:
            raise UsageError(f"generated {tuple(generated.shape[1:])} and real {tuple(real.shape[1:])} "
                             f"images must have the same [C, H, W]")
    metrics = _check_metrics(metrics)
    binary = any(m != "isc" for m in metrics)
    if binary and real is None:
        raise UsageError(f"{', '.join(m for m in metrics if m != 'isc')} compare with real images; pass real")
    _check_counts(bootstrap, kid_subsets, kid_subset_size, isc_splits)
    _check_sizes(metrics, len(generated), len(real) if binary else None, isc_splits)
    extractor = resolve_extractor(classifier, extractor_name)
    layers = sorted({feature_layer(extractor, m) for m in metrics})
    features_generated = extract_features(generated, extractor, layers, batch_size, device)
    features_real = extract_features(real, extractor, layers, batch_size, device) if (
        real is not None and binary) else None
    return fidelity_metrics_from_features(features_generated, features_real, extractor, metrics,
                                          kid_subset_size, kid_subsets, isc_splits, bootstrap, seed)


def fid_vs_n(generated: torch.Tensor, real: torch.Tensor,
             sizes: Sequence[int] = (500, 1000, 2000, 5000, 10000),
             classifier: DatasetClassifier | None = None, extractor_name: str | None = None,
             batch_size: int = 64, device: str | torch.device = "cpu") -> list[dict]:
    """FID of the first ``n`` generated images against all real ones, for each ``n`` in ``sizes``.

    FID is biased upward at small ``n`` (roughly ``+c / n``), so a small-N FID is only comparable with
    another of the same ``n``; this table shows how far from converged it is. Features are extracted
    once. Sizes above ``N`` are skipped and ``N`` itself is always the last row. Shuffle ``generated``
    first if its order is not random (e.g. sorted by class).

    Returns:
        Rows ``{"n", "fid", "num_real", "feature_extractor", "feature_layer"}`` in increasing ``n``; ``fid``
        in squared feature units, computed by torch-fidelity.
    """
    generated, real = _check_images(generated, "generated"), _check_images(real, "real")
    if any(not isinstance(n, (int, np.integer)) or n < 2 for n in sizes):
        raise UsageError(f"sizes must be integers >= 2 (FID needs a covariance), got {list(sizes)}")
    extractor = resolve_extractor(classifier, extractor_name)
    layer = feature_layer(extractor, "fid")
    features_generated = extract_features(generated, extractor, [layer], batch_size, device)[layer]
    features_real = extract_features(real, extractor, [layer], batch_size, device)
    real_stats = metric_fid.fid_featuresdict_to_statistics(features_real, layer)
    num_gen = len(features_generated)
    rows = []
    for n in sorted({int(n) for n in sizes if n <= num_gen} | {num_gen}):
        stats = metric_fid.fid_features_to_statistics(features_generated[:n])
        fid = metric_fid.fid_statistics_to_metric(stats, real_stats, False)[torch_fidelity.KEY_METRIC_FID]
        rows.append({"n": n, "fid": float(fid), "num_real": len(real), "feature_extractor": extractor,
                     "feature_layer": layer})
    return rows
