"""Schedules: what each step removes, the histories, fine-tune resets, and bad input leaving the model alone."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import pybench as pb
import pybench.prune.criteria.data_driven  # noqa: F401  (registers the data-driven criteria)
from pybench.prune import schedules
from pybench.prune.planning import plan as make_plan
from pybench.prune.surgery import apply

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


def test_gradual_global_target_relative_to_dense(xor):
    m, ld = xor
    dense = pb.train.evaluate(m, ld.val)["top1"]
    pruned, hist = schedules.gradual_global(m, X1, ld.train, ld.val, target_drop=0.05, rate=0.2, criterion="l1",
                                            fine_tune_epochs=1, fine_tune_kw={"lr": 0.05, "momentum": 0.9},
                                            progress=False)
    assert hist[0]["target"] == pytest.approx(dense - 0.05)
    assert pb.train.evaluate(pruned, ld.val)["top1"] >= dense - 0.05
    assert all(r["accepted"] == (r["accuracy"] >= dense - 0.05) for r in hist[1:])


@pytest.mark.parametrize("kw, message", [
    ({}, "exactly one of target"), ({"target": 0.5, "target_drop": 0.01}, "exactly one of target"),
    ({"target_drop": -0.01}, "target_drop must be an accuracy fraction"),
    ({"target_drop": True}, "target_drop must be an accuracy fraction"),
    ({"target": 1.5}, "target must be an accuracy fraction")])
def test_gradual_global_refuses_a_bad_target(xor, kw, message):
    m, ld = xor
    with pytest.raises(ValueError, match=message):
        schedules.gradual_global(m, X1, ld.train, ld.val, progress=False, **kw)


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


# ---------------------------------------------------------------------------------------------------------------
# data-parallel fine-tuning inside schedules (fine_tune_kw nprocs / backend, or a process group)
# ---------------------------------------------------------------------------------------------------------------
def _bn_task(dtype: torch.dtype = torch.float64):
    """A seeded cifar_resnet20 (BatchNorm everywhere) on 8x8 inputs, its train loader (4 batches of 8) and a
    validation loader, in ``dtype``."""
    torch.manual_seed(0)
    m = pb.zoo.create("cifar_resnet20", num_classes=4).to(dtype).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(48, 3, 8, 8, generator=g, dtype=dtype)
    y = torch.randint(0, 4, (48,), generator=g)
    tr = DataLoader(TensorDataset(x[:32], y[:32]), batch_size=8, shuffle=True,
                    generator=torch.Generator().manual_seed(0))
    va = DataLoader(TensorDataset(x[32:], y[32:]), batch_size=16)
    return m, x[:1], tr, va


FT_KW = {"lr": 0.05, "momentum": 0.9, "seed": 3}


def test_iterative_with_two_gloo_processes_equals_one_process():
    """Each of the 2 fine-tuning steps runs over 2 spawned gloo processes (BatchNorm synchronised); in float64 the
    pruned model, its re-scored second step and the history match the one-process schedule to rounding."""
    m, x, tr, va = _bn_task()
    kw = {"ratio": 0.5, "steps": 2, "criterion": "l1", "train_loader": tr, "val_loader": va,
          "fine_tune_epochs": 1, "progress": False}
    ref, ref_hist = schedules.iterative(m, x, fine_tune_kw=FT_KW, **kw)
    got, hist = schedules.iterative(m, x, fine_tune_kw={**FT_KW, "nprocs": 2, "backend": "gloo"}, **kw)
    assert [(r["macs"], r["params"]) for r in hist] == [(r["macs"], r["params"]) for r in ref_hist]
    assert [r["accuracy"] for r in hist] == [r["accuracy"] for r in ref_hist]
    assert [r["loss"] for r in hist] == pytest.approx([r["loss"] for r in ref_hist], rel=1e-10)
    sa, sb = got.state_dict(), ref.state_dict()
    assert sa.keys() == sb.keys()
    diff = max(float((sa[k].double() - sb[k].double()).abs().max()) for k in sa)
    assert diff < 1e-10, diff
    start = m.state_dict()
    assert float((sa["conv1.weight"] - start["conv1.weight"][: sa["conv1.weight"].shape[0]]).abs().max()) > 1e-3


def test_schedules_route_fine_tuning_by_fine_tune_kw(xor, monkeypatch):
    """Without DDP keys the schedules call pybench.train.fine_tune exactly as before; nprocs=1 goes through
    pybench.distributed.fine_tune, which is then the same plain fine-tune (bit-identical)."""
    from pybench import distributed

    m, ld = xor
    seen: list[str] = []
    real_plain, real_ddp = schedules.fine_tune, distributed.fine_tune
    monkeypatch.setattr(schedules, "fine_tune", lambda *a, **k: (seen.append("plain"), real_plain(*a, **k))[1])
    monkeypatch.setattr(distributed, "fine_tune", lambda *a, **k: (seen.append(f"ddp {k.get('nprocs')}"),
                                                                   real_ddp(*a, **k))[1])
    kw = {"criterion": "l1", "train_loader": ld.train, "fine_tune_epochs": 1, "progress": False}
    plain, _ = schedules.one_shot(m, X1, 0.25, fine_tune_kw={"lr": 0.05}, **kw)
    one, _ = schedules.one_shot(m, X1, 0.25, fine_tune_kw={"lr": 0.05, "nprocs": 1}, **kw)
    assert seen == ["plain", "ddp 1"]
    assert _same(one, _state(plain))


def test_inside_a_process_group_fine_tuning_joins_it(xor, tmp_path, monkeypatch):
    """As under torchrun: an initialised process group (here world size 1, gloo) routes fine-tuning through
    pybench.distributed.fine_tune, which wraps the model in DDP in that group; the result is the plain one."""
    import torch.distributed as dist

    from pybench import distributed

    m, ld = xor
    kw = {"criterion": "l1", "train_loader": ld.train, "fine_tune_epochs": 1, "fine_tune_kw": {"lr": 0.05},
          "progress": False}
    ref, _ = schedules.one_shot(m, X1, 0.25, **kw)
    calls = []
    real = distributed._fine_tune_in_group
    monkeypatch.setattr(distributed, "_fine_tune_in_group", lambda *a: (calls.append(1), real(*a))[1])
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        got, _ = schedules.one_shot(m, X1, 0.25, **kw)
    finally:
        dist.destroy_process_group()
    assert calls == [1]
    for k, v in got.state_dict().items():
        torch.testing.assert_close(v, ref.state_dict()[k], rtol=1e-5, atol=1e-6, msg=k)


def test_bad_process_counts_are_refused_before_pruning(xor, monkeypatch):
    m, ld = xor
    before = _state(m)
    monkeypatch.setattr(schedules, "trace", lambda *a: pytest.fail("traced before checking fine_tune_kw"))
    kw = {"criterion": "l1", "train_loader": ld.train, "fine_tune_epochs": 1, "progress": False}
    with pytest.raises(ValueError, match="nprocs must be an int >= 1.*got 0"):
        schedules.one_shot(m, X1, 0.25, fine_tune_kw={"nprocs": 0}, **kw)
    with pytest.raises(ValueError, match="nprocs must be an int >= 1.*got 2.0"):
        schedules.iterative(m, X1, 0.25, fine_tune_kw={"nprocs": 2.0}, **kw)
    with pytest.raises(ValueError, match="backend 'mpi'; expected 'gloo'"):
        schedules.gradual_global(m, X1, ld.train, ld.val, 0.5, fine_tune_kw={"nprocs": 2, "backend": "mpi"},
                                 **{k: v for k, v in kw.items() if k != "train_loader"})
    assert _same(m, before)
