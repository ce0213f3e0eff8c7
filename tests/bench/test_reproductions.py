"""The seed papers' experiments, small enough for a CPU (marked slow).

(a) Sándor et al. 4.1: an XOR network with 8 hidden neurons, pruned by LFE + the alpha schedule (alpha 0.5 %),
    keeps <= 4 neurons (the minimal network has 3) with an accuracy drop <= 1 %.
(b) digits: cifar_resnet20 trained to >= 95 % test accuracy; one_shot to 50 % of the MACs with every criterion
    plus 2 fine-tune epochs; Wang's gradual_global reaches its target. The committed table
    results/reproductions/digits_criteria.md comes from benchmarks/reproduce_digits.py, which these tests call.
"""

from __future__ import annotations

import importlib.util
import pathlib
import warnings

import pytest
import torch
import torch.nn.functional as F

import pybench as pb
import pybench.prune.criteria.data_driven  # noqa: F401  (registers the data-driven criteria)
from pybench.prune import schedules

warnings.filterwarnings("ignore", category=RuntimeWarning, message=".*reference.*")

pytestmark = pytest.mark.slow


def _script():
    path = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "reproduce_digits.py"
    spec = importlib.util.spec_from_file_location("reproduce_digits", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_xor_lfe_alpha_finds_a_near_minimal_network():
    ld = pb.data.loaders("xor", batch_size=64, seed=0, n_train=4000, n_val=2000, n_test=2000, eval_batch_size=2000)
    torch.manual_seed(0)
    m = pb.zoo.create("xor_mlp", hidden=8)

    # a group-lasso term on each hidden neuron (its in-weights, bias and out-weights) lets training settle on few
    # neurons, as a network trained for pruning would; plain SGD spreads the function over all 8 (see the report)
    def loss_fn(logits, target):
        per_neuron = torch.cat([m.fc1.weight, m.fc1.bias[:, None], m.fc2.weight.t()], 1).norm(dim=1)
        return F.cross_entropy(logits, target) + 3e-3 * per_neuron.sum()

    pb.train.train(m, ld.train, epochs=30, lr=0.1, momentum=0.9, scheduler="cosine", seed=0, progress=False,
                   loss_fn=loss_fn)
    dense = pb.train.evaluate(m, ld.test)["top1"]
    assert dense >= 0.97
    pruned, hist = schedules.layerwise_alpha(m, torch.zeros(1, 2), ld.train, ld.val, alpha=0.005, criterion="lfe",
                                             fine_tune_epochs=10,
                                             fine_tune_kw={"lr": 0.05, "momentum": 0.9, "scheduler": "cosine"},
                                             progress=False)
    after = pb.train.evaluate(pruned, ld.test)["top1"]
    assert pruned.fc1.out_features <= 4
    assert pruned.fc2.in_features == pruned.fc1.out_features
    assert dense - after <= 0.01
    assert hist[-1]["kept"] == pruned.fc1.out_features


@pytest.fixture(scope="module")
def digits():
    rd = _script()
    ld = rd.loaders(0)
    return rd, ld, rd.train_dense(ld, 0)


def test_digits_dense_model_reaches_95(digits):
    rd, ld, model = digits
    assert pb.train.evaluate(model, ld.test)["top1"] >= 0.95


@pytest.mark.parametrize("criterion", ["l1", "l2", "aaws", "fpgm", "bn_scale", "act_mean", "act_std", "apoz",
                                       "taylor", "lfe", "random"])
def test_digits_one_shot_half_macs(digits, criterion):
    rd, ld, model = digits
    row = rd.one_shot_row(model, ld, criterion)
    assert 0.4 <= row["macs_kept"] <= 0.5
    assert row["params_kept"] < 1.0
    assert row["test_top1"] >= 0.85  # 2 fine-tune epochs recover most of a 50 % MAC cut on digits


def test_digits_gradual_global_reaches_target(digits):
    rd, ld, model = digits
    row = rd.gradual_row(model, ld)
    assert row["reached_target"]
    assert row["val_top1"] >= row["target_val_top1"]
    assert row["accepted_steps"] >= 1 and row["macs_kept"] < 1.0
