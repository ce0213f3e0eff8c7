"""pb.prune_to_latency: plans corrected by paired measurements until the measured latency meets the budget."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import pybench as pb
from pybench.bench.lut_fit import LatencyRound, _next_budget
from pybench.prune.lut import LutMismatchError

X = torch.randn(1, 3, 16, 16)


@pytest.fixture(scope="module")
def model_and_table():
    torch.manual_seed(0)
    model = pb.zoo.create("cifar_resnet20", num_classes=10).eval()
    return model, pb.latency_table(model, X, threads=1, max_points=2, between=0, max_time_s=0.05)


def _round(b: float, measured: float) -> LatencyRound:
    return LatencyRound(b, b, measured, measured * 0.98, measured * 1.02)


def test_next_budget_scales_by_the_miss_then_interpolates_between_rounds():
    assert _next_budget([_round(0.5, 0.6)], 0.5) == pytest.approx(0.5 * 0.5 / 0.6)
    # measured 0.6 at 0.5 and 0.4 at 0.3: 0.5 lies halfway, so does its plan
    assert _next_budget([_round(0.5, 0.6), _round(0.3, 0.4)], 0.5) == pytest.approx(0.4)
    # the nearest rounds either side are used, not the first ones
    rounds = [_round(0.5, 0.7), _round(0.45, 0.55), _round(0.3, 0.4), _round(0.4, 0.45)]
    assert _next_budget(rounds, 0.5) == pytest.approx(0.4 + 0.5 * 0.05)


def test_rounds_are_measured_and_the_nearest_is_kept(model_and_table):
    model, table = model_and_table
    pruned, plan, fit = pb.prune_to_latency(model, X, 0.6, table, rounds=3, tolerance=0.01, max_time_s=1.0)
    assert fit.rounds[0].planned_budget == 0.6 and 1 <= len(fit.rounds) <= 3
    misses = [abs(r.measured - 0.6) for r in fit.rounds]
    assert fit.chosen == misses.index(min(misses))
    assert fit.met == (abs(fit.measured / 0.6 - 1) <= 0.01)
    assert plan.predicted_latency == pytest.approx(fit.predicted)
    assert plan.latency_budget == pytest.approx(fit.rounds[fit.chosen].planned_budget)
    assert torch.allclose(pruned(X), pb.apply(model, plan)(X))  # the kept model is its plan's cut
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
    d = fit.to_dict()
    assert d["measured"] == fit.measured and len(d["rounds"]) == len(fit.rounds)


def test_one_round_is_the_tables_plan_measured(model_and_table):
    model, table = model_and_table
    _, plan, fit = pb.prune_to_latency(model, X, 0.6, table, rounds=1, max_time_s=0.5)
    graph = pb.trace(model, X)
    direct = pb.plan(graph, pb.score(model, graph, "l1"), latency_budget=0.6, lut=table)
    assert len(fit.rounds) == 1 and {g.index: k.tolist() for g, k in plan.keep.items()} == \
        {g.index: k.tolist() for g, k in direct.keep.items()}


@pytest.mark.parametrize("kw, error, match", [
    ({"rounds": 0}, ValueError, "rounds=0"),
    ({"tolerance": 0}, ValueError, "tolerance=0"),
    ({"budget": 1.0}, ValueError, "latency_budget must be a fraction"),
    ({"budget": 0.01}, ValueError, "least reachable|ask for at least"),
    ({"lut": {"key": {}}}, TypeError, "lut must be a LatencyTable"),
])
def test_bad_input_is_refused(model_and_table, kw, error, match):
    model, table = model_and_table
    args = {"budget": 0.6, "lut": table, **kw}
    with pytest.raises(error, match=match):
        pb.prune_to_latency(model, X, args.pop("budget"), args.pop("lut"), max_time_s=0.2, **args)


def test_a_table_of_another_device_is_refused(model_and_table):
    model, table = model_and_table
    gpu = dataclasses.replace(table, key={**table.key, "device": "cuda"})
    with pytest.raises(LutMismatchError, match="device='cuda', not 'cpu'"):
        pb.prune_to_latency(model, X, 0.6, gpu, device="cpu")


def test_cli_prunes_to_a_budget_and_refuses_in_one_line(model_and_table, tmp_path, capsys):
    from pybench import cli

    _, table = model_and_table
    lut, out = tmp_path / "t.json", tmp_path / "p.pt"
    table.save(lut)
    base = ["prune", "cifar_resnet20", "--input-size", "3", "16", "16"]
    assert cli.main([*base, "--latency-budget", "0.6", "--lut", str(lut), "--rounds", "2", "-o", str(out)]) == 0
    said = capsys.readouterr().out
    assert "plan 1: budget 0.600, predicted" in said and "<- kept" in said and out.exists()
    assert pb.load(out)(X).shape == (1, 10)
    for extra, why in ((["--lut", str(lut)], "used with --latency-budget"),
                       (["--latency-budget", "0.6"], "needs --lut"),
                       (["--latency-budget", "1.5", "--lut", str(lut)], "latency_budget must be a fraction"),
                       (["--latency-budget", "0.6", "--lut", str(tmp_path / "none.json")], "does not exist"),
                       (["--latency-budget", "0.6", "--lut", str(lut), "--schedule", "iterative"], "one_shot")):
        assert cli.main([*base, *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and why in err[0], err
    assert cli.main(["prune", "resnet18", "--latency-budget", "0.6", "--lut", str(lut)]) == 2
    assert "another model" in capsys.readouterr().err
