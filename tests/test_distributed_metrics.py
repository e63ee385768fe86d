"""Evaluation sharded over ranks: chunks whose random numbers follow their index, taken whole by
the ranks and gathered in order, give the numbers of one process.

The in-process tests stand in for rank r of W with ``OneRankOfMany`` (its share of the chunks, no
process group); the multi-process tests run 2 gloo processes on the CPU. Every comparison is exact:
each chunk is computed by the same operations on the same inputs whichever process computes it,
and the gathered values are reduced in the same order (see genbench/training/distributed.py).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass

import pytest
import torch
import torch.multiprocessing as mp

from genbench.metrics import log_likelihood, mmd
from genbench.metrics.kernels import _weighted_sums
from genbench.models import get_model_class
from genbench.training import fit
from genbench.training.distributed import Ranks, chunk_seed, chunk_slices
from tests.conftest import tiny_config
from tests.test_harness import spec_for


@dataclass(frozen=True)
class OneRankOfMany(Ranks):
    """Rank ``rank`` of ``world_size`` without a process group: it computes its own chunks and
    its "gather" returns them alone, so the ranks' results can be put together by the test."""

    def gather_rows(self, local):
        return local


# --- the sharding helpers --------------------------------------------------------------------------
@pytest.mark.parametrize("world", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("num_chunks", [0, 1, 2, 3, 5, 10, 63])
def test_every_chunk_is_taken_exactly_once_in_rank_order(num_chunks, world):
    triangle = [num_chunks - i for i in range(num_chunks)]  # MMD's blocks per row
    for costs in (None, triangle, [0.0] * num_chunks):
        runs = [Ranks(rank, world).owned_chunks(num_chunks, costs) for rank in range(world)]
        assert [c for run in runs for c in run] == list(range(num_chunks)), (costs, runs)
        if costs is None:  # equal chunks: run lengths differ by at most one
            lengths = [len(run) for run in runs]
            assert max(lengths) - min(lengths) <= 1


def test_costs_balance_the_runs_of_mmd_rows():
    # 10 rows of 10, 9, ..., 1 blocks over 2 ranks: the first 3 rows hold 27 of 55 blocks, and
    # the midpoint rule ends rank 0's run there (an equal count of rows would give it 40).
    costs = [10 - i for i in range(10)]
    first, second = (Ranks(r, 2).owned_chunks(10, costs) for r in range(2))
    assert (first, second) == (range(0, 3), range(3, 10))
    assert sum(costs[i] for i in first) == 27


def test_chunk_slices_cut_uneven_totals():
    assert chunk_slices(10, 4) == [slice(0, 4), slice(4, 8), slice(8, 10)]
    assert chunk_slices(8, 4) == [slice(0, 4), slice(4, 8)]
    assert chunk_slices(3, 500) == [slice(0, 3)]
    assert chunk_slices(0, 4) == []


def test_chunk_seeds_are_a_function_of_the_keys_alone():
    seeds = {chunk_seed(seed, stream, index) for seed in range(4) for stream in range(4)
             for index in range(64)}
    assert len(seeds) == 4 * 4 * 64  # no two neighbouring keys share a stream
    assert all(0 <= s < 2**63 for s in seeds)
    assert chunk_seed(0, 1, 2) == chunk_seed(0, 1, 2) != chunk_seed(0, 2, 1)


# --- estimators: the ranks' shares put together are the one-process values, bit for bit ------------
@pytest.fixture(scope="module")
def vae():
    torch.manual_seed(0)
    return get_model_class("vae")(tiny_config("vae"), (1, 28, 28)).eval()


@pytest.fixture(scope="module")
def binary_images():
    return torch.bernoulli(torch.full((23, 1, 28, 28), 0.3), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("world", [2, 3])
def test_importance_sampling_shares_equal_one_process(vae, binary_images, world):
    # batch_size 100 with k = 20: chunks of 5 examples, 23 examples = 4 whole chunks and one of 3.
    options = {"num_samples": 20, "batch_size": 100}
    whole = log_likelihood(vae, binary_images, generator=torch.Generator().manual_seed(3), **options)
    parts = [log_likelihood(vae, binary_images, generator=torch.Generator().manual_seed(3),
                            shard=OneRankOfMany(rank, world), **options) for rank in range(world)]
    assert torch.equal(torch.cat([p.value for p in parts]), whole.value)
    assert torch.equal(torch.cat([p.std_error for p in parts]), whole.std_error)
    # The shares are not all the same numbers: each chunk has its own random numbers.
    other = log_likelihood(vae, binary_images, generator=torch.Generator().manual_seed(4), **options)
    assert not torch.equal(other.value, whole.value)


def test_ais_shares_equal_one_process(vae, binary_images):
    # batch_size 6 with 2 chains: chunks of 3 examples; 7 examples = 2 whole chunks and one of 1.
    x = binary_images[:7]
    options = {"method": "ais", "chains": 2, "steps": 4, "batch_size": 6}
    whole = log_likelihood(vae, x, generator=torch.Generator().manual_seed(5), **options)
    parts = [log_likelihood(vae, x, generator=torch.Generator().manual_seed(5),
                            shard=OneRankOfMany(rank, 2), **options) for rank in range(2)]
    assert [len(p.value) for p in parts] == [3, 4]
    assert torch.equal(torch.cat([p.value for p in parts]), whole.value)


def test_mmd_row_shares_add_up_to_the_whole_sums():
    generator = torch.Generator().manual_seed(6)
    x, y = torch.randn(70, 5, generator=generator), torch.randn(50, 5, generator=generator) + 0.3
    w = torch.zeros(120, 2)
    w[:70, 0], w[70:, 1] = 1, 1
    args = (x, y, w, "gaussian", [1.5], 16)  # 8 rows of 16-point blocks
    whole = torch.stack(_weighted_sums(*args, split=70))
    parts = [torch.stack(_weighted_sums(*args, split=70, shard=OneRankOfMany(r, 3))) for r in range(3)]
    # Each rank sums its own rows only; across ranks the totals add in another order than one
    # process's row-by-row sum, so this in-process check is to float64 rounding (the gathered
    # multi-process sums below are exact).
    assert torch.allclose(sum(parts), whole, rtol=1e-13, atol=0)
    assert all(part.abs().sum() > 0 for part in parts)
    # MMD^2 with the sharded sums equals the closed form of the same kernel (brute force).
    def kernel(a, b):
        return torch.exp(-torch.cdist(a.double(), b.double()).square() / (2 * 1.5**2))

    kxx, kyy, kxy = kernel(x, x), kernel(y, y), kernel(x, y)
    brute = ((kxx.sum() - kxx.diagonal().sum()) / (70 * 69) + (kyy.sum() - kyy.diagonal().sum()) / (50 * 49)
             - 2 * kxy.mean())
    # float32 kernel blocks (the inputs' dtype): about 1e-7 relative per entry
    assert mmd(x, y, bandwidth=1.5, block_size=16).value == pytest.approx(float(brute), rel=1e-5)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --- two gloo processes: the metric functions -----------------------------------------------------------
def _metric_values(shard=None) -> dict:
    """IS and AIS log-likelihoods, MMD^2 with bootstrap, classifier features and FID/KID/PRC with
    bootstrap, each in several chunks, on fixed random inputs."""
    from genbench.features.classifier import DatasetClassifier
    from genbench.metrics.fidelity import (
        extract_features,
        fidelity_metrics_from_features,
        register_classifier,
    )

    torch.manual_seed(0)
    model = get_model_class("vae")(tiny_config("vae"), (1, 28, 28)).eval()
    x = torch.bernoulli(torch.full((23, 1, 28, 28), 0.3), generator=torch.Generator().manual_seed(1))
    out = {
        "is": log_likelihood(model, x, num_samples=20, batch_size=100, shard=shard,
                             generator=torch.Generator().manual_seed(3)).value,  # 5 chunks
        "ais": log_likelihood(model, x[:7], method="ais", chains=2, steps=4, batch_size=6, shard=shard,
                              generator=torch.Generator().manual_seed(5)).value,  # 3 chunks
    }
    generator = torch.Generator().manual_seed(6)
    a, b = torch.randn(150, 20, generator=generator), torch.randn(150, 20, generator=generator) + 0.2
    result = mmd(a, b, bandwidth=4.0, block_size=64, bootstrap=3, shard=shard)  # 5 rows of blocks
    out["mmd"] = (result.value, result.ci_low, result.ci_high)
    classifier = DatasetClassifier().eval()  # seeded above: fixed random weights
    name = register_classifier(classifier, "test-shard-classifier")
    images = torch.rand(600, 1, 28, 28, generator=generator) * 2 - 1  # 2 chunks of 512
    generated = extract_features(images[:300], name, batch_size=64, shard=shard)
    real = extract_features(images[300:], name, batch_size=64, shard=shard)
    out["features"] = generated["128"]
    results = fidelity_metrics_from_features(generated, real, name, kid_subset_size=50, kid_subsets=5,
                                             bootstrap=3, shard=shard)
    out["fidelity"] = {key: (r.value, r.ci_low, r.ci_high) for key, r in results.items()}
    return out


def _metrics_in_rank(rank: int, world: int, port: int, path: str) -> None:
    from genbench.training.distributed import init_process_group

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    ranks = Ranks(rank, world, rank)
    init_process_group(ranks, torch.device("cpu"))
    values = _metric_values(ranks)
    torch.save(values, f"{path}.{rank}")
    torch.distributed.destroy_process_group()


def test_two_processes_give_the_one_process_metric_values(tmp_path):
    one = _metric_values()
    mp.spawn(_metrics_in_rank, args=(2, _free_port(), str(tmp_path / "values")), nprocs=2, join=True)
    for rank in range(2):  # every rank holds the whole result
        two = torch.load(tmp_path / f"values.{rank}", weights_only=False)
        for key in ("is", "ais", "features"):
            assert torch.equal(two[key], one[key]), key
        assert two["mmd"] == one["mmd"] and two["fidelity"] == one["fidelity"]


# --- two gloo processes evaluate a run as one process does -------------------------------------------
METRICS = ["log_likelihood", "mmd", "fid", "kid", "precision", "recall"]
# 600 samples: two sample chunks (500 + 100), two feature chunks (512 + 88), MMD over 1200 points
# in two rows of 1024-point blocks; smoke IS: 100 images in chunks of 40; 5 bootstrap resamples.
NUM_SAMPLES = 600


def _evaluate_in_rank(rank: int, world: int, port: int, run: str, cache: str) -> None:
    from genbench.evaluation import evaluate_run

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), XDG_CACHE_HOME=cache)
    torch.set_num_threads(1)
    evaluate_run(run, METRICS, num_samples=NUM_SAMPLES, device="cpu", allow_download=False,
                 verbose=False)
    torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def trained_vae(tmp_path_factory):
    return fit(spec_for("vae"), tmp_path_factory.mktemp("runs"), device="cpu", progress=False,
               allow_download=False).run_dir.path


def _values(document: dict) -> dict:
    fields = ("value", "std", "ci_low", "ci_high", "num_samples")
    return {name: {f: entry.get(f) for f in fields} | {"real": entry["settings"].get("real_reference")}
            for name, entry in document["metrics"].items()}


@pytest.mark.distributed
def test_two_processes_evaluate_a_run_with_the_one_process_numbers(trained_vae, tmp_path):
    from genbench.evaluation import evaluate_run

    one = evaluate_run(trained_vae, METRICS, num_samples=NUM_SAMPLES, device="cpu",
                       allow_download=False, verbose=False)
    shared = tmp_path / "run"
    shutil.copytree(trained_vae, shared)
    (shared / "metrics.json").unlink()
    # A fresh cache: the real-data references are computed by the two ranks, not read back.
    mp.spawn(_evaluate_in_rank, args=(2, _free_port(), str(shared), str(tmp_path / "cache")),
             nprocs=2, join=True)
    two = json.loads((shared / "metrics.json").read_text())
    assert two["processes"] == 2 and one["processes"] == 1
    assert all(two["metrics"][name]["status"] == "ok" for name in METRICS)
    assert _values(two) == _values(json.loads(json.dumps(one)))  # exact, every field


@pytest.mark.distributed
def test_torchrun_evaluate_writes_the_one_process_numbers_once(trained_vae, tmp_path):
    from genbench.evaluation import evaluate_run

    one = evaluate_run(trained_vae, ["mmd", "log_likelihood"], num_samples=NUM_SAMPLES,
                       device="cpu", allow_download=False, verbose=False)
    shared = tmp_path / "run"
    shutil.copytree(trained_vae, shared)
    (shared / "metrics.json").unlink()
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
               "-m", "genbench", "evaluate", str(shared), "--metrics", "mmd,log_likelihood",
               "--num-samples", str(NUM_SAMPLES), "--device", "cpu", "--no-download"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env=os.environ | {"OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    two = json.loads((shared / "metrics.json").read_text())
    assert two["processes"] == 2
    assert _values(two) == _values(json.loads(json.dumps(one)))
    assert done.stdout.count("log_likelihood") == 1  # rank 0 alone prints the table
