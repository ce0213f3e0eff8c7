"""Schedules: what each step removes, the histories, fine-tune resets, and bad input leaving the model alone."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import pybench as pb
import pybench.criteria_data  # noqa: F401  (registers the data-driven criteria)
from pybench import schedules
from pybench.planning import plan as make_plan
from pybench.surgery import apply

warnings.filterwarnings("ignore", category=RuntimeWarning, message=".*reference.*")

X1 = torch.randn(1, 2)


@pytest.fixture(scope="module")
def xor():
    """A 16-neuron XOR net, briefly trained, with its loaders (train 1000, val 500)."""
    loaders = pb.data.loaders("xor", batch_size=64, seed=0, n_train=1000, n_val=500, n_test=200, eval_batch_size=500)
    torch.manual_seed(0)
    m = pb.zoo.create("xor_mlp", hidden=16)
    pb.train.train(m, loaders.train, epochs=15, lr=0.1, momentum=0.9, seed=0, progress=False)
    return m.eval(), loaders


def _state(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


def _same(m, state):
    return m.state_dict().keys() == state.keys() and all(torch.equal(v, state[k]) for k, v in m.state_dict().items())


def test_one_shot_ratio_is_score_plan_apply(xor):
    m, ld = xor
    before = _state(m)
    pruned, hist = schedules.one_shot(m, X1, 0.5, criterion="l1", val_loader=ld.val, progress=False)
    assert _same(m, before)
    g = pb.trace(m, X1)
    ref = apply(m, make_plan(g, pb.score(m, g, "l1"), ratio=0.5))
    assert pruned.fc1.out_features == 8
    torch.testing.assert_close(pruned(ld.val.dataset.tensors[0]), ref(ld.val.dataset.tensors[0]))
    assert [r["step"] for r in hist] == [0, 1]
    assert hist[0]["macs"] == 2 * 16 + 16 * 2 and hist[1]["macs"] == 2 * 8 + 8 * 2
    assert hist[1]["params"] == sum(p.numel() for p in pruned.parameters())
    assert hist[1]["accuracy"] == pytest.approx(pb.train.evaluate(pruned, ld.val)["top1"])
    assert set(hist[1]) >= {"macs", "params", "accuracy", "loss", "time_s"}


def test_one_shot_macs_target_is_met_and_tight():
    torch.manual_seed(0)
    m = pb.zoo.create("cifar_resnet20", num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    pruned, hist = schedules.one_shot(m, x, macs_target=0.5, criterion="l2", progress=False)
    dense, got = hist[0]["macs"], hist[1]["macs"]
    assert got <= 0.5 * dense
    assert got >= 0.4 * dense  # the bisection lands near the target, not anywhere below it
    assert pb.measure.flops(pruned, x).total_macs == got


def test_one_shot_fine_tunes_and_uses_data_for_data_criteria(xor):
    m, ld = xor
    pruned, hist = schedules.one_shot(m, X1, 0.25, criterion="act_mean", train_loader=ld.train, val_loader=ld.val,
                                      fine_tune_epochs=1, progress=False)
    g = pb.trace(m, X1)
    no_ft = apply(m, make_plan(g, pb.score(m, g, "act_mean", data=ld.train), ratio=0.25))
    assert pruned.fc1.out_features == 12
    assert not torch.equal(pruned.fc1.weight, no_ft.fc1.weight)  # fine-tuned after pruning
    assert hist[1]["fine_tune_epochs"] == 1


def test_iterative_steps_and_optimizer_reset(xor, monkeypatch):
    m, ld = xor
    calls = []
    real = schedules.fine_tune

    def spy(model, loader, epochs, **kw):
        calls.append(model)
        return real(model, loader, epochs, **kw)

    monkeypatch.setattr(schedules, "fine_tune", spy)
    pruned, hist = schedules.iterative(m, X1, ratio=0.5, steps=4, criterion="l1", train_loader=ld.train,
                                       val_loader=ld.val, fine_tune_epochs=1, progress=False)
    assert [r["step"] for r in hist] == [0, 1, 2, 3, 4]
    assert [r["ratio"] for r in hist] == pytest.approx([0, 0.125, 0.25, 0.375, 0.5])
    widths = [r["macs"] // 4 for r in hist]  # 2*h + h*2 MACs for h hidden neurons
    assert widths == [16, 14, 12, 10, 8]
    assert len(calls) == 4 and len({id(c) for c in calls}) == 4  # one fresh fine-tune (optimizer) per step
    assert pruned.fc1.out_features == 8


def test_layerwise_alpha_bounds_the_drop_without_fine_tuning(xor):
    m, ld = xor
    before = _state(m)
    for alpha in (0.0, 0.03):
        pruned, hist = schedules.layerwise_alpha(m, X1, ld.train, ld.val, alpha=alpha, criterion="l1",
                                                 fine_tune_epochs=0, progress=False)
        dense = hist[0]["accuracy"]
        assert pb.train.evaluate(pruned, ld.val)["top1"] >= dense - alpha - 1e-12
        assert all(r["accuracy"] >= dense - alpha - 1e-12 for r in hist)
        removed = sum(r.get("removed", 0) for r in hist)
        assert pruned.fc1.out_features == 16 - removed
    assert _same(m, before)


def test_layerwise_alpha_removes_silent_neurons_first(xor):
    m, ld = xor
    m2 = pb.zoo.create("xor_mlp", hidden=16)
    m2.load_state_dict(m.state_dict())
    with torch.no_grad():
        m2.fc2.weight[:, [2, 7, 11]] = 0  # three neurons that cannot matter: taylor scores them exactly 0
    pruned, hist = schedules.layerwise_alpha(m2, X1, ld.train, ld.val, alpha=0.0, criterion="taylor",
                                             fine_tune_epochs=0, max_rounds=1, progress=False)
    assert hist[1]["removed"] >= 3
    kept = pruned.fc1.weight
    for j in (2, 7, 11):  # none of the silent neurons' incoming weights survived
        assert not any(torch.equal(kept[i], m2.fc1.weight[j]) for i in range(kept.shape[0]))


def test_layerwise_alpha_order_and_target():
    torch.manual_seed(0)
    m = pb.zoo.create("cifar_resnet20", num_classes=10).eval()
    x = torch.randn(32, 3, 32, 32)
    y = m(x).argmax(1).detach()  # labels the dense net gets right: accuracy 1
    dl = DataLoader(TensorDataset(x, y), batch_size=32)
    pruned, hist = schedules.layerwise_alpha(m, x[:1], dl, dl, alpha=0.5, criterion="l1", order="backward",
                                             fine_tune_epochs=0, macs_target=0.95, progress=False)
    assert hist[1]["layer"] == "layer3.2.conv1"  # backward: the last prunable layer first
    assert hist[-1]["macs"] <= 0.95 * hist[0]["macs"]
    assert all(r["macs"] > 0.95 * hist[0]["macs"] for r in hist[:-1])  # stopped as soon as the target was met


def test_gradual_global_returns_the_last_model_at_target(xor):
    m, ld = xor
    dense = pb.train.evaluate(m, ld.val)["top1"]
    target = dense - 0.05
    pruned, hist = schedules.gradual_global(m, X1, ld.train, ld.val, target, rate=0.2, criterion="l1",
                                            fine_tune_epochs=1, fine_tune_kw={"lr": 0.05, "momentum": 0.9},
                                            progress=False)
    assert pb.train.evaluate(pruned, ld.val)["top1"] >= target
    accepted = [r for r in hist if r["accepted"]]
    assert accepted[-1]["macs"] == pb.measure.flops(pruned, X1).total_macs
    assert len(hist) >= 2
    if not hist[-1]["accepted"]:  # stopped on the first step below the target
        assert hist[-1]["accuracy"] < target and all(r["accepted"] for r in hist[:-1])
    channels = [r["channels"] for r in hist[1:]]
    assert channels == sorted(channels, reverse=True) and channels[0] == 16 - int(0.2 * 16)


def test_bad_input_leaves_the_model_alone(xor):
    m, ld = xor
    before = _state(m)
    empty = DataLoader(TensorDataset(torch.randn(0, 2), torch.zeros(0).long()))
    with pytest.raises(ValueError, match="alpha must be a number >= 0"):
        schedules.layerwise_alpha(m, X1, ld.train, ld.val, alpha=-0.1)
    dense = pb.train.evaluate(m, ld.val)["top1"]
    assert dense < 1.0
    with pytest.raises(ValueError, match="above the dense model's validation accuracy"):
        schedules.gradual_global(m, X1, ld.train, ld.val, target=min(1.0, dense + 0.01), criterion="l1",
                                 progress=False)
    with pytest.raises(ValueError, match="criterion must be one of .*lfe"):
        schedules.one_shot(m, X1, 0.5, criterion="nope")
    with pytest.raises(ValueError, match="data-driven: pass data="):
        schedules.one_shot(m, X1, 0.5, criterion="taylor")
    with pytest.raises(ValueError, match="val_loader is empty"):
        schedules.gradual_global(m, X1, ld.train, empty, 0.5)
    with pytest.raises(ValueError, match="empty"):
        schedules.one_shot(m, X1, 0.5, criterion="apoz", data=empty)
    with pytest.raises(ValueError, match="exactly one of ratio"):
        schedules.one_shot(m, X1, 0.5, macs_target=0.5)
    with pytest.raises(ValueError, match="train_loader"):
        schedules.iterative(m, X1, 0.5, criterion="l1", fine_tune_epochs=1)
    with pytest.raises(ValueError, match="no batches"):  # raised mid-run by the criterion: nothing half-pruned
        schedules.iterative(m, X1, 0.5, steps=2, criterion="act_mean", data=iter([]), fine_tune_epochs=0,
                            progress=False)
    assert _same(m, before)
