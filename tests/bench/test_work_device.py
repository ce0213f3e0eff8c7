"""Where a cell trains, prunes, fine-tunes and evaluates: its own device unless [train] / [fine_tune] device say
otherwise; refused before anything runs when that device is not here."""

from __future__ import annotations

import pytest
import torch

from pybench.bench import driver as runner
from pybench.bench import results as R
from pybench.bench import suite as S
from pybench.bench.dense import loader_defaults
from pybench.measure._common import on_device_or_copy

SUITE = """
[suite]
name = "wd"
[matrix]
models = ["xor_mlp"]
levels = [0, 0.5]
criteria = ["l1", "act_mean"]
[metrics]
collect = ["macs", "accuracy"]
[data]
name = "xor"
batch_size = 32
options = {{ n_train = 256, n_val = 64, n_test = 128 }}
[train]
epochs = 2
lr = 0.1
bn_recalibrate_batches = 2
{train}
[fine_tune]
epochs = 1
lr = 0.05
{fine_tune}
[run]
isolation = "model"
"""


def suite(train: str = "", fine_tune: str = "") -> S.Suite:
    return S.loads(SUITE.format(train=train, fine_tune=fine_tune), "wd.toml")


def test_default_is_the_cells_own_device():
    for c in suite().cells():
        assert (c.device, c.work_device, c.fine_tune_device) == ("cpu", "cpu", "cpu")


def test_train_device_overrides_and_fine_tune_follows_unless_set():
    c = next(c for c in suite('device = "cuda:1"').cells() if c.level > 0)
    assert (c.device, c.work_device, c.fine_tune_device) == ("cpu", "cuda:1", "cuda:1")
    c = next(c for c in suite('device = "cuda"', 'device = "cpu"').cells() if c.level > 0)
    assert (c.work_device, c.fine_tune_device) == ("cuda", "cpu")


def test_unset_device_keeps_ids_and_a_set_one_moves_them():
    plain = [c.cell_id for c in suite().cells()]
    assert [c.cell_id for c in suite('device = ""').cells()] == plain
    assert not set(plain) & {c.cell_id for c in suite('device = "cpu"').cells()}  # trained elsewhere: another cell


@pytest.mark.parametrize("table", ["train", "fine_tune"])
@pytest.mark.parametrize("bad", ['"tpu"', '"cuda:x"', "3"])
def test_bad_device_refused_naming_the_table(table, bad):
    kw = {table: f"device = {bad}"}
    with pytest.raises(S.SuiteError, match=rf"\[{table}\].*'device'"):
        suite(**kw)


@pytest.mark.parametrize("table", ["train", "fine_tune"])
def test_missing_gpu_refused_before_anything_runs(tmp_path, table):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    s = suite(**{table: 'device = "cuda"'})
    with pytest.raises(S.SuiteError, match=rf"\[{table}\] device 'cuda' .*no such CUDA GPU.*\[{table}\] device = "
                                           r"\"cpu\""):
        runner.run(s, tmp_path, progress=False, log=lambda s: None)
    assert not (tmp_path / "records.jsonl").exists()


def test_loader_defaults_pin_memory_and_workers_only_on_cuda():
    assert loader_defaults("cifar10", "cpu") == {}
    assert loader_defaults("xor", "cuda") == {"pin_memory": True, "num_workers": 0}  # in memory: no workers
    got = loader_defaults("imagefolder", "cuda:0")
    assert got["pin_memory"] is True and got["num_workers"] >= 1


def test_on_device_or_copy_copies_only_when_it_moves():
    m = torch.nn.Linear(2, 2)
    assert on_device_or_copy(m, "cpu") is m
    m64 = torch.nn.Linear(2, 2).to(torch.float64)
    assert on_device_or_copy(m64, "cpu") is m64  # dtype is not device


def test_records_say_where_each_step_ran(tmp_path):
    s = suite('device = "cpu"')
    summary = runner.run(s, tmp_path, progress=False, log=lambda s: None)
    assert (summary.ok, summary.failed) == (3, 0)
    recs = R.Store(tmp_path).records()
    pruned = [r for r in recs if r["config"]["level"] > 0]
    assert len(pruned) == 2
    for r in pruned:  # act_mean scores on data: on the work device as well
        a = r["achieved"]
        assert (a["dense_train_device"], a["prune_device"], a["fine_tune_device"]) == ("cpu", "cpu", "cpu")
        assert r["config"]["train"]["device"] == "cpu"
        assert 0.0 <= r["metrics"]["top1"] <= 1.0


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_cells_train_prune_and_evaluate_on_the_gpu(tmp_path):
    s = S.loads(SUITE.format(train="", fine_tune="").replace('levels = [0, 0.5]',
                                                             'levels = [0, 0.5]\ndevices = ["cuda"]'), "wd.toml")
    summary = runner.run(s, tmp_path, progress=False, log=lambda s: None)
    assert (summary.ok, summary.failed) == (3, 0)
    for r in R.Store(tmp_path).records():
        if r["config"]["level"] > 0:
            a = r["achieved"]
            assert (a["dense_train_device"], a["prune_device"], a["fine_tune_device"]) == ("cuda", "cuda", "cuda")
