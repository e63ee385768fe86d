"""FID, KID, ISC and precision/recall through torch-fidelity with a genbench classifier as extractor.

Features come from a random-weight classifier (seeded): the metrics are checked as functions of the
features, which need no training to be realistic enough (half the units are dead after ReLU, the rest
vary with the digit). Images are real MNIST test digits, shuffled once, because the first and second
halves of that split were written by different people and consecutive blocks are not i.i.d.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
import torch_fidelity
import torch_fidelity.feature_extractor_inceptionv3 as tf_inception
from torch.utils.data import Dataset

from genbench.core.errors import GenbenchError, UsageError
from genbench.data import load_images, to_model_range
from genbench.features.classifier import DatasetClassifier
from genbench.metrics import fidelity
from genbench.metrics.fidelity import (
    fid_vs_n,
    fidelity_metrics,
    fidelity_metrics_from_features,
    register_classifier,
    to_uint8,
)
from genbench.metrics.kernels import kid

TF_KWARGS = {"cuda": False, "cache": False, "verbose": False, "save_cpu_ram": True}


@pytest.fixture(scope="module")
def mnist():
    data = load_images("mnist", "test", allow_download=False)
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
    return to_model_range(data.images[order]), data.labels[order]  # [10000, 1, 28, 28] in [-1, 1]


@pytest.fixture(scope="module")
def classifier():
    torch.manual_seed(0)
    return DatasetClassifier().eval()


def _features(classifier: DatasetClassifier, images: torch.Tensor) -> torch.Tensor:
    """The 128-d features straight from the classifier, outside torch-fidelity: ``[N, 128]`` float64."""
    with torch.no_grad():
        return classifier.features(images).double()


class _Images(Dataset):
    """uint8 ``[C, H, W]`` per index, written here rather than reusing the module's own."""

    def __init__(self, images):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return self.images[index]


def test_fid_of_a_sample_against_itself_is_zero(mnist, classifier):
    x = mnist[0][:300]
    result = fidelity_metrics(x, x, classifier=classifier, metrics=("fid", "prc"))
    # torch-fidelity takes sum(sqrt(eigvals(S S))) for tr(S): eigenvalues near 0 come out with an
    # absolute error ~ eps * lambda_max^2, and the square root turns it into ~ sqrt(eps) * lambda_max
    # per direction; over D = 128 directions, doubled, that bounds |FID| (eps of float64).
    lambda_max = float(np.linalg.eigvalsh(np.cov(_features(classifier, x).numpy(), rowvar=False)).max())
    assert abs(result["fid"].value) <= 2 * 128 * np.sqrt(np.finfo(np.float64).eps) * lambda_max
    # Each point lies in its own k-NN ball (distance 0), so both are exactly 1.
    assert result["precision"].value == 1.0 and result["recall"].value == 1.0


# scipy warns that S1 S2 is singular (dead ReLU units); its square root is still accurate enough, below.
@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")
def test_fid_matches_scipy_frechet_distance(mnist, classifier):
    images, labels = mnist
    generated, real = images[:2000][labels[:2000] < 5][:500], images[2000:2500]  # digits 0-4 vs all
    result = fidelity_metrics(generated, real, classifier=classifier, metrics=("fid",))

    f1, f2 = _features(classifier, generated).numpy(), _features(classifier, real).numpy()
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    expected = float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))
    assert expected > 1e-4  # digits 0-4 against all digits: far from the ~0 of two equal sets
    # Both square roots of the (singular: dead ReLU units) product S1 S2 are accurate to about
    # sqrt(eps) * lambda_max per direction, and the features differ in float32 rounding (batches of 64
    # here, one batch there): 1e-5 of the traces, which FID is a difference of, covers both.
    assert result["fid"].value == pytest.approx(expected, abs=1e-5 * (np.trace(s1) + np.trace(s2)))
    assert result["fid"].settings["feature_layer"] == "128"


def test_kid_equals_genbench_kid_and_all_metrics_equal_torch_fidelity(mnist, classifier):
    images = mnist[0]
    generated, real = images[:300], images[300:700]
    ours = fidelity_metrics(generated, real, classifier=classifier, extractor_name="mnist-random",
                            kid_subset_size=100, kid_subsets=10, seed=3)

    # genbench's own KID (float64 sums) on features taken straight from the classifier.
    fx, fy = _features(classifier, generated), _features(classifier, real)
    reference = kid(fx, fy, subsets=10, subset_size=100, seed=3)
    # torch-fidelity sums float32 kernels: relative rounding ~1e-7 (pairwise sums of ~1e4 terms) of
    # the typical kernel value, of which KID is a difference; 1e-6 of that value leaves a margin of
    # 10. (Other subset draws move KID by up to ~1e-6 here; the exact comparison below catches those.)
    kernel_scale = float(((fx @ fy.T / fx.shape[1] + 1) ** 3).mean())
    assert ours["kid"].value == pytest.approx(reference.value, abs=1e-6 * kernel_scale)
    assert ours["kid"].std == pytest.approx(reference.std, abs=1e-6 * kernel_scale)

    # torch-fidelity's own entry point with our registered extractor, fed the generated images as RGB
    # (grey replicated, as a folder of PNGs would be): the extractor's luma conversion is exact, so
    # every number is identical.
    rgb = to_uint8(generated).expand(-1, 3, -1, -1)
    theirs = torch_fidelity.calculate_metrics(
        input1=_Images(rgb), input2=_Images(to_uint8(real)), feature_extractor="mnist-random",
        isc=True, fid=True, kid=True, prc=True, kid_subsets=10, kid_subset_size=100, rng_seed=3, **TF_KWARGS)
    assert ours["fid"].value == theirs[torch_fidelity.KEY_METRIC_FID]
    assert ours["kid"].value == theirs[torch_fidelity.KEY_METRIC_KID_MEAN]
    assert ours["kid"].std == theirs[torch_fidelity.KEY_METRIC_KID_STD]
    assert ours["isc"].value == theirs[torch_fidelity.KEY_METRIC_ISC_MEAN]
    assert ours["isc"].std == theirs[torch_fidelity.KEY_METRIC_ISC_STD]
    assert ours["precision"].value == theirs[torch_fidelity.KEY_METRIC_PRECISION]
    assert ours["recall"].value == theirs[torch_fidelity.KEY_METRIC_RECALL]


def test_bootstrap_interval_contains_the_value_and_matches_the_spread_of_fresh_samples(mnist, classifier):
    images, labels = mnist
    name = fidelity.resolve_extractor(classifier)
    pool = fidelity.extract_features(images[2000:][labels[2000:] < 5][:4200], name, ["128"])["128"]
    real = fidelity.extract_features(images[:1000], name, ["128"])
    n, options = 200, {"metrics": ("fid", "kid", "prc"), "kid_subset_size": 100, "kid_subsets": 10}

    result = fidelity_metrics_from_features({"128": pool[:n]}, real, name, bootstrap=100, seed=1, **options)
    # What the interval should describe: the spread of the metric over fresh, independent sets of n.
    fresh = [fidelity_metrics_from_features({"128": pool[i : i + n]}, real, name, **options)
             for i in range(0, len(pool), n)]
    for key in ("fid", "kid", "precision", "recall"):
        r = result[key]
        assert r.ci_low <= r.value <= r.ci_high, key
        spread = np.std([f[key].value for f in fresh], ddof=1)
        # (ci_high - ci_low) / 3.92 estimates a standard deviation from one set of n, so it varies with
        # that set: over 4 sets x 3 seeds it was 0.47 to 1.78 times the spread of the 21 fresh sets.
        # A factor of 3 allows that; uncorrected resampling shifts are caught by the containment above.
        assert spread / 3 <= (r.ci_high - r.ci_low) / 3.92 <= 3 * spread, key
        assert r.settings["bootstrap"] == 100
    # The resampling shift that the interval removes has the documented signs.
    assert result["fid"].settings["bootstrap_bias"] > 0 and result["recall"].settings["bootstrap_bias"] < 0


def test_isc_of_logits_that_all_pick_one_class_is_one(mnist):
    torch.manual_seed(1)
    net = DatasetClassifier().eval()
    with torch.no_grad():
        net.head.bias.zero_()
        net.head.bias[3] = 50.0  # every image: p(y = 3 | x) = 1 - O(e^-40)
    result = fidelity_metrics(mnist[0][:100], None, classifier=net, metrics=("isc",))
    # p(y | x) equals the marginal, so every KL term is ~e^-40: the score is exp(0) = 1.
    assert result["isc"].value == pytest.approx(1.0, abs=1e-9)
    assert result["isc"].settings["feature_layer"] == "logits"


def test_isc_equals_exp_mean_kl_of_the_classifier_predictions(mnist):
    torch.manual_seed(2)
    net = DatasetClassifier().eval()
    x = mnist[0][:200]
    # Random features vary little from image to image, so a random head predicts nearly the same
    # class everywhere (score ~1). A head on the centred features, scaled to logits of spread 3, gives
    # varied, fairly confident predictions and a score well above 1.
    with torch.no_grad():
        features = net.features(x)
        weight = torch.randn(10, features.shape[1])
        weight *= 3 / ((features - features.mean(0)) @ weight.T).std()
        net.head.weight.copy_(weight)
        net.head.bias.copy_(-features.mean(0) @ weight.T)
    result = fidelity_metrics(x, None, classifier=net, metrics=("isc",), isc_splits=1)

    with torch.no_grad():
        log_p = net(x).double().log_softmax(1)  # [N, 10]
    log_marginal = log_p.exp().mean(0).log()
    expected = float((log_p.exp() * (log_p - log_marginal)).sum(1).mean().exp())
    assert expected > 1.5
    # The same float32 logits up to batching order (~1e-6 of their spread): 1e-5 relative.
    assert result["isc"].value == pytest.approx(expected, rel=1e-5)
    assert result["isc"].std == 0.0  # one split


def test_fid_vs_n_rows_and_their_bias(mnist, classifier):
    images = mnist[0]
    generated, real = images[:400], images[400:1400]  # one distribution: FID is its small-n bias
    rows = fid_vs_n(generated, real, sizes=(100, 50, 200, 10000), classifier=classifier)
    assert [row["n"] for row in rows] == [50, 100, 200, 400]  # sorted, > N skipped, N added
    assert all(row["num_real"] == 1000 and row["feature_layer"] == "128" for row in rows)
    # Each row is the FID of the first n images.
    direct = fidelity_metrics(generated[:100], real, classifier=classifier, metrics=("fid",))
    assert rows[1]["fid"] == pytest.approx(direct["fid"].value, rel=1e-12)
    # Equal distributions: FID ~ c / n, so 8x more samples should cut it several times over.
    fids = [row["fid"] for row in rows]
    assert fids[0] > 3 * fids[-1]
    assert sum(a > b for a, b in zip(fids, fids[1:])) >= 2
    with pytest.raises(UsageError, match="sizes"):
        fid_vs_n(generated, real, sizes=(1,), classifier=classifier)


def test_settings_record_the_setup_and_kid_subset_size_is_clamped(mnist, classifier):
    images = mnist[0]
    u = to_uint8(images[:80])
    assert torch.equal(to_uint8(to_model_range(u)), u)  # data on the 8-bit grid passes unchanged
    results = fidelity_metrics(images[:60], images[60:140], classifier=classifier, extractor_name="rand-0",
                               kid_subsets=5, isc_splits=5, bootstrap=3)
    assert set(results) == {"fid", "kid", "isc", "precision", "recall"}
    for key, r in results.items():
        assert r.settings["feature_extractor"] == "rand-0"
        assert r.settings["feature_layer"] == ("logits" if key == "isc" else "128")
        assert (r.settings["num_generated"], r.settings["num_real"]) == (60, 80)
        assert r.settings["bootstrap"] == 3 and r.num_samples == 60
        assert (r.ci_low is None) == (key == "isc")
    assert results["kid"].settings["subset_size"] == 60
    assert results["kid"].settings["subset_size_requested"] == 1000


def test_register_classifier_is_idempotent_and_leaves_the_classifier_untouched(mnist):
    x, y = mnist[0][:50], mnist[0][50:100]
    torch.manual_seed(3)
    first = DatasetClassifier()  # training mode, gradients on: as a classifier being trained
    before = {k: v.clone() for k, v in first.state_dict().items()}
    assert register_classifier(first, "rereg") == register_classifier(first, "rereg") == "rereg"
    fid_first = fidelity_metrics(x, y, extractor_name="rereg", metrics=("fid",))["fid"].value
    assert first.training and all(p.requires_grad for p in first.parameters())
    assert all(torch.equal(v, before[k]) for k, v in first.state_dict().items())

    torch.manual_seed(4)
    second = DatasetClassifier().eval()
    register_classifier(second, "rereg")  # the name now means the second classifier
    fid_second = fidelity_metrics(x, y, extractor_name="rereg", metrics=("fid",))["fid"].value
    assert fid_second == fidelity_metrics(x, y, classifier=second, metrics=("fid",))["fid"].value
    assert fid_second != fid_first
    # The default name is a digest of the weights.
    assert fidelity.classifier_name(second) != fidelity.classifier_name(first)
    with pytest.raises(UsageError, match="torch-fidelity's own"):
        register_classifier(second, "vgg16")
    with pytest.raises(UsageError, match="unknown feature extractor"):
        fidelity_metrics(x, y, extractor_name="never-registered")


def test_inputs_outside_the_model_range_are_refused(mnist, classifier):
    x = mnist[0][:20]
    with pytest.raises(UsageError, match="to_model_range"):
        fidelity_metrics((x + 1) * 127.5, x, classifier=classifier, metrics=("fid",))
    with pytest.raises(UsageError, match=r"\[C, H, W\]"):
        fidelity_metrics(x, x[:, :, :14], classifier=classifier, metrics=("fid",))


@pytest.fixture
def no_download(monkeypatch, tmp_path):
    """An empty TORCH_HOME, and any attempt to fetch the Inception weights fails the test."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # set_dir() would override TORCH_HOME

    def refuse(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(tf_inception, "load_state_dict_from_url", refuse)
    return tmp_path


def test_inception_without_weights_raises_a_one_line_error(no_download, mnist):
    path = no_download / "hub" / "checkpoints" / "weights-inception-2015-12-05-6726825d.pth"
    assert fidelity.inception_weights_path() == path
    assert not fidelity.inception_available()
    with pytest.raises(GenbenchError) as error:
        fidelity_metrics(mnist[0][:8], mnist[0][8:16], extractor_name="inception", metrics=("fid",))
    message = str(error.value)
    assert str(path) in message and "\n" not in message and error.value.exit_code == 1


def test_inception_with_local_weights_runs_without_download(no_download, monkeypatch, mnist):
    # Random Inception weights saved where torch-fidelity looks: building the net needs a state dict,
    # so build one with loading switched off, and save it.
    with monkeypatch.context() as patch:
        patch.setattr(tf_inception, "load_state_dict_from_url", lambda *args, **kwargs: {})
        patch.setattr(tf_inception.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None)
        net = tf_inception.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    fidelity.inception_weights_path().parent.mkdir(parents=True)
    torch.save(net.state_dict(), fidelity.inception_weights_path())
    assert fidelity.inception_available()

    x = mnist[0][:4]  # grey 28 px: repeated to RGB, resized to 299 px inside the extractor
    results = fidelity_metrics(x[:2], x[2:], extractor_name="inception", metrics=("fid", "isc"), isc_splits=1)
    assert results["fid"].settings["feature_extractor"] == "inception-v3-compat"
    assert results["fid"].settings["feature_layer"] == "2048"
    assert results["isc"].settings["feature_layer"] == "logits_unbiased"
    # torch-fidelity on the same images as RGB uint8, told the weights file explicitly.
    rgb = to_uint8(x).expand(-1, 3, -1, -1)
    theirs = torch_fidelity.calculate_metrics(
        input1=_Images(rgb[:2]), input2=_Images(rgb[2:]), feature_extractor="inception-v3-compat",
        feature_extractor_weights_path=str(fidelity.inception_weights_path()), fid=True, isc=True,
        isc_splits=1, **TF_KWARGS)
    assert results["fid"].value == theirs[torch_fidelity.KEY_METRIC_FID]
    assert results["isc"].value == theirs[torch_fidelity.KEY_METRIC_ISC_MEAN]
