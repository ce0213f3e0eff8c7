"""Suite files: validation errors name the file, the key and the allowed values; expansion and cell ids."""

from __future__ import annotations

from pathlib import Path

import pytest

from pybench.bench import suite as S

ROOT = Path(__file__).resolve().parents[2]

TINY = """
[suite]
name = "tiny"
[matrix]
models = ["xor_mlp"]
levels = [0.25, 0.5]
criteria = ["l1", "l2"]
batch_sizes = [1, 4]
seeds = [0]
[metrics]
collect = ["latency", "macs"]
repeats = 2
"""


def test_expand_counts_and_dense_baseline_always_present():
    s = S.loads(TINY, "tiny.toml")
    cells = S.expand(s)
    # dense: 1 (criterion/schedule "none") + pruned: 2 levels x 2 criteria x 1 schedule; each x 2 batch sizes
    assert len(cells) == (1 + 2 * 2) * 2
    assert s.matrix.levels == (0.0, 0.25, 0.5)
    dense = [c for c in cells if c.level == 0]
    assert {(c.criterion, c.schedule) for c in dense} == {("none", "none")}
    assert [c.batch_size for c in dense] == [1, 4]
    assert len({c.cell_id for c in cells}) == len(cells)
    # one prune group per (model, criterion, schedule, level), shared by its batch sizes
    assert len({c.group_id for c in cells}) == 5
    assert all(c.config["model_config"]["input_size"] == [2] for c in cells)


def test_cell_ids_are_stable_and_ignore_how_often_we_measure():
    a = {c.label(): c.cell_id for c in S.expand(S.loads(TINY, "a.toml"))}
    b = {c.label(): c.cell_id for c in S.expand(S.loads(TINY.replace("repeats = 2", "repeats = 7"), "b.toml"))}
    assert a == b
    c = {c.label(): c.cell_id for c in S.expand(S.loads(TINY.replace('name = "tiny"', 'name = "other"'), "c.toml"))}
    assert a == c  # the suite's name is not what a cell measures: compare can match cells across suites
    d = S.expand(S.loads(TINY.replace("[metrics]", "[prune]\nscope = \"global\"\n[metrics]"), "d.toml"))
    pruned_a = {k: v for k, v in a.items() if "dense" not in k}
    assert not set(pruned_a.values()) & {x.cell_id for x in d}  # a different pruning setting is another cell
    assert {x.cell_id for x in d if x.level == 0} == {v for k, v in a.items() if "dense" in k}


@pytest.mark.parametrize("text, key, allowed", [
    ('[suite]\nname="x"\n[matrix]\nmodels=["resnet_typo"]', "models", "cifar_resnet20"),
    ('[suite]\nname="x"\n[matrix]\nmodels=["xor_mlp"]\ncriteria=["l7"]', "criteria", "l1"),
    ('[suite]\nname="x"\n[matrix]\nmodels=["xor_mlp"]\ndtypes=["fp8"]', "dtypes", "bfloat16"),
    ('[suite]\nname="x"\n[matrix]\nmodels=["xor_mlp"]\nschedules=["once"]', "schedules", "iterative"),
    ('[suite]\nname="x"\n[matrix]\nmodels=["xor_mlp"]\nlevels=[1.5]', "levels", "[0, 1)"),
    ('[suite]\nname="x"\n[matrix]\nmodels=["xor_mlp"]\ndevices=["gpu"]', "devices", "cuda:N"),
    ('[suite]\nname="x"\n[matrix]\nmodels=["xor_mlp"]\n[metrics]\ncollect=["speed"]', "collect", "latency"),
    ('[suite]\nname="x"\n[matrix]\nmodels=["xor_mlp"]\n[run]\nisolation="none"', "isolation", "group"),
    ('[suite]\nname="x"\n[matrix]\nmodels=["xor_mlp"]\n[metrics]\nrepeat=3', "repeat", "repeats"),
    ('[suite]\nname="x"\n[matrix]\nmodels=["xor_mlp"]\n[data]\nname="mnist"', "name", "digits"),
    ('[suite]\nname="x"\n[matrix]\nmodels="xor_mlp"', "models", "a list"),
    ('[suite]\nname="x"\n[matrx]\nmodels=["xor_mlp"]', "matrx", "matrix"),
])
def test_malformed_suite_names_file_key_and_allowed_values(text, key, allowed):
    with pytest.raises(S.SuiteError) as e:
        S.loads(text, "bad.toml")
    msg = str(e.value)
    assert "bad.toml" in msg and repr(key)[1:-1] in msg and allowed in msg, msg


def test_missing_required_and_bad_toml():
    with pytest.raises(S.SuiteError, match="bad.toml.*missing required key 'models'"):
        S.loads('[suite]\nname="x"\n[matrix]\n', "bad.toml")
    with pytest.raises(S.SuiteError, match="bad.toml: not valid TOML"):
        S.loads("[suite\nname=", "bad.toml")
    with pytest.raises(S.SuiteError, match="no such suite file"):
        S.load(ROOT / "suites" / "does-not-exist.toml")


def test_data_root_from_env_flag_or_error(monkeypatch, tmp_path):
    text = ('[suite]\nname="x"\n[matrix]\nmodels=["cifar_resnet20"]\n[data]\nname="cifar10"\n'
            'root="${PYBENCH_TEST_CIFAR}"\n')
    monkeypatch.delenv("PYBENCH_TEST_CIFAR", raising=False)
    with pytest.raises(S.SuiteError, match="PYBENCH_TEST_CIFAR.*--data-root"):
        S.loads(text, "p.toml")
    monkeypatch.setenv("PYBENCH_TEST_CIFAR", str(tmp_path))
    assert S.loads(text, "p.toml").data_root == str(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert S.loads(text, "p.toml", data_root=str(elsewhere)).data_root == str(elsewhere)
    with pytest.raises(S.SuiteError, match="'/no/such/folder' does not exist"):
        S.loads(text, "p.toml", data_root="/no/such/folder")
    # the data root is not part of a cell's identity: the same cells on two machines with different folders
    ids = [c.cell_id for c in S.expand(S.loads(text, "p.toml"))]
    assert ids == [c.cell_id for c in S.expand(S.loads(text, "p.toml", data_root=str(elsewhere)))]


def test_filter():
    cells = S.expand(S.loads(TINY, "tiny.toml"))
    assert {c.level for c in S.filter_cells(cells, ["level=0"])} == {0.0}
    sel = S.filter_cells(cells, ["criterion=l1", "level=0.5,0.25", "batch_size=4"])
    assert sorted(c.level for c in sel) == [0.25, 0.5] and {c.batch_size for c in sel} == {4}
    assert len(S.filter_cells(cells, ["model=xor*"])) == len(cells)
    with pytest.raises(S.SuiteError, match="unknown key 'size'.*batch_size"):
        S.filter_cells(cells, ["size=4"])
    with pytest.raises(S.SuiteError, match="KEY=VALUE"):
        S.filter_cells(cells, ["l1"])


@pytest.mark.parametrize("path", sorted((ROOT / "suites").glob("*.toml")), ids=lambda p: p.stem)
def test_shipped_suites_validate_and_expand(path):
    s = S.load(path, require_data=False)
    cells = S.expand(s)
    assert s.name == path.stem
    assert cells and any(c.level == 0 for c in cells)
    for model in s.matrix.models:  # every model has its dense baseline
        assert any(c.model == model and c.level == 0 for c in cells)


def test_spelling_out_a_default_keeps_the_cell_ids():
    a = [c.cell_id for c in S.expand(S.loads(TINY, "a.toml"))]
    b = [c.cell_id for c in S.expand(S.loads(TINY + "[train]\nepochs = 0\nbn_recalibrate_batches = 0\n"
                                             "[prune]\nscope = \"local\"\n", "b.toml"))]
    assert a == b


FT = TINY.replace("[metrics]", '[data]\nname = "xor"\nbatch_size = 8\n[fine_tune]\nepochs = 1\n[metrics]')


def test_fine_tune_processes_is_an_execution_resource_not_part_of_the_ids():
    one = S.expand(S.loads(FT, "one.toml"))
    two = S.expand(S.loads(FT + '[run]\nfine_tune_processes = 2\nfine_tune_backend = "gloo"\n', "two.toml"))
    assert [(c.cell_id, c.group_id) for c in one] == [(c.cell_id, c.group_id) for c in two]
    assert {(c.config["fine_tune_processes"], c.config["fine_tune_backend"]) for c in one} == {(1, "")}
    assert {(c.config["fine_tune_processes"], c.config["fine_tune_backend"]) for c in two} == {(2, "gloo")}
    assert [c.config["fine_tune"] for c in one] == [c.config["fine_tune"] for c in two]


@pytest.mark.parametrize("run, match", [
    ("fine_tune_processes = 0", "'fine_tune_processes' must be an integer >= 1.*got 0"),
    ("fine_tune_processes = -2", "'fine_tune_processes' must be an integer >= 1.*got -2"),
    ("fine_tune_processes = 1.5", "'fine_tune_processes' must be an integer, got 1.5"),
    ("fine_tune_processes = true", "'fine_tune_processes' must be an integer, got True"),
    ('fine_tune_processes = "2"', "'fine_tune_processes' must be an integer, got '2'"),
    ('fine_tune_backend = "mpi"', "'fine_tune_backend' has 'mpi'; allowed values: gloo .*nccl"),
    ("fine_tune_processes = 16", r"fine_tune_processes = 16 split each batch of \[data\] batch_size = 8"),
])
def test_bad_fine_tune_processes_name_the_key(run, match):
    with pytest.raises(S.SuiteError, match=r"bad.toml \[run\]: .*" + match):
        S.loads(FT + "[run]\n" + run + "\n", "bad.toml")


def test_a_round_to_axis_prunes_each_rounding_apart_and_keeps_the_ids_of_prune_round_to():
    plain = S.expand(S.loads(TINY, "a.toml"))
    axis = S.expand(S.loads(TINY.replace("seeds = [0]", "seeds = [0]\nround_to = [1, 8, 8]"), "b.toml"))
    pruned = [c for c in axis if c.level > 0]
    assert len(axis) == 2 + 2 * len([c for c in plain if c.level > 0])  # dense once; each pruned cell per rounding
    assert sorted({c.prune.round_to for c in pruned}) == [1, 8] and all(c.prune is None for c in axis if c.level == 0)
    ones = [c.cell_id for c in axis if c.level == 0 or c.prune.round_to == 1]
    assert ones == [c.cell_id for c in plain]  # round_to 1 is [prune]'s default: the same cells as without the axis
    assert len({c.group_id for c in pruned}) == 2 * len({c.group_id for c in plain if c.level > 0})
    spelled = S.expand(S.loads(TINY + "[prune]\nround_to = 8\n", "c.toml"))
    eights = [c.cell_id for c in axis if c.level > 0 and c.prune.round_to == 8]
    assert eights == [c.cell_id for c in spelled if c.level > 0]  # the axis value is [prune] round_to, same id
    for bad in ("[0]", "[2.5]", "[true]"):
        with pytest.raises(S.SuiteError, match=r"\[matrix\]: key 'round_to' has .*allowed values: integers >= 1"):
            S.loads(TINY.replace("seeds = [0]", f"seeds = [0]\nround_to = {bad}"), "d.toml")
