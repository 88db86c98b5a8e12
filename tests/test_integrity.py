"""Every written file proves itself: digests written with checkpoints, epoch states and Parquet
parts, checked by every read; a damaged file is named in one line, moved aside and recomputed."""

from __future__ import annotations

import hashlib
import json
import pickle
import re
import struct
from pathlib import Path

import pytest
import safetensors.torch as st
import torch

from pipeline import storage
from pipeline.results import make_rows, read_run, unit_done, write_unit
from pipeline.storage import CheckpointStore, CorruptCheckpointError, DamagedFileError, TrainState

ROOT = Path(__file__).resolve().parent.parent
DAMAGED = r"\.damaged-\d{8}T\d{6}Z(-\d+)?$"


@pytest.fixture(autouse=True)
def fresh_process_state(monkeypatch):
    """Each test as a new process: nothing verified yet, the once-per-process note not yet said."""
    monkeypatch.setattr(storage.tensors, "_verified", set())
    monkeypatch.setattr(storage.integrity, "_told_undigested", False)


def _theta() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"w": torch.randn(256, 256, generator=g), "b": torch.randn(256, generator=g)}  # 257 KiB


def _body_start(path: Path) -> int:
    (n,) = struct.unpack("<Q", path.read_bytes()[:8])
    return 8 + n


def _zero_block(path: Path, size: int = 64 << 10) -> None:
    """Zero ``size`` bytes in the middle of the tensor data (the header still parses)."""
    data = bytearray(path.read_bytes())
    start = _body_start(path) + (len(data) - _body_start(path) - size) // 2
    assert start >= _body_start(path)
    data[start:start + size] = bytes(size)
    path.write_bytes(bytes(data))


def _truncate(path: Path, keep: float = 0.6) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _moved(path: Path) -> list[Path]:
    return sorted(p for p in path.parent.iterdir() if re.search(re.escape(path.name) + DAMAGED, p.name))


def _one_line_naming(text: str, path: Path) -> str:
    lines = [line for line in text.splitlines() if str(path) in line]
    assert len(lines) == 1, text
    return lines[0]


# --------------------------------------------------------------------------------------------
# safetensors digests


def test_written_weights_carry_a_digest_that_reads_check(tmp_path):
    path = tmp_path / "w.safetensors"
    storage.write_tensors(_theta(), path, {"task": "0"})
    assert storage.read_metadata(path) == {"task": "0"}  # the digest is not user metadata
    header = json.loads(path.read_bytes()[8:_body_start(path)])
    assert re.fullmatch(r"[0-9a-f]{64}", header["__metadata__"][storage.DIGEST_KEY])
    back = storage.read_tensors(path, _theta())
    assert all(torch.equal(back[k], v) for k, v in _theta().items())
    assert storage.check_tensors_file(path) is True
    mapped = storage.open_tensors(path, _theta())
    assert torch.equal(mapped["w"], _theta()["w"])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64,
                                   torch.int8, torch.uint8, torch.bool])
def test_the_written_digest_is_the_one_the_file_bytes_give(tmp_path, dtype):
    # computed from tensors at write, recomputed from the raw file at read: both must agree
    tensors = {"x": (torch.arange(24).reshape(2, 3, 4) % 3).to(dtype), "scalar": torch.tensor(1).to(dtype),
               "empty": torch.zeros(0, 5, dtype=dtype), "t": torch.ones(3, 2).to(dtype).t()}
    path = tmp_path / "d.safetensors"
    storage.write_tensors(tensors, path, {"a": "1"})
    assert storage.check_tensors_file(path, full=True)
    storage.tensors._verified.clear()
    assert torch.equal(storage.read_tensors(path)["t"], tensors["t"])


def test_a_zeroed_block_is_found_by_every_full_read_naming_the_file(tmp_path):
    path = tmp_path / "task_000.safetensors"
    storage.write_tensors(_theta(), path)
    _zero_block(path)
    storage.read_metadata(path)  # the header still parses...
    assert storage.check_tensors_file(path, full=False)  # ...and the cheap check passes
    for read in (storage.read_tensors, storage.open_tensors, storage.check_tensors_file):
        with pytest.raises(CorruptCheckpointError, match=re.escape(str(path))) as err:
            read(path)
        assert "sha256" in str(err.value) and "\n" not in str(err.value)
        assert isinstance(err.value, DamagedFileError) and err.value.path == str(path)


def test_a_changed_metadata_value_of_the_same_length_is_found(tmp_path):
    path = tmp_path / "e.safetensors"
    storage.write_tensors(_theta(), path, {"epoch": "3"})
    data = path.read_bytes()
    assert data.count(b'"epoch":"3"') == 1
    path.write_bytes(data.replace(b'"epoch":"3"', b'"epoch":"4"'))
    assert storage.read_metadata(path) == {"epoch": "4"}
    with pytest.raises(CorruptCheckpointError, match="sha256"):
        storage.read_tensors(path)


def test_a_truncated_file_fails_even_the_cheap_check(tmp_path):
    path = tmp_path / "t.safetensors"
    storage.write_tensors(_theta(), path)
    _truncate(path)
    with pytest.raises(CorruptCheckpointError, match=re.escape(str(path)) + ".*truncated"):
        storage.check_tensors_file(path, full=False)


def test_files_from_before_digests_are_read_and_said_once(tmp_path, capsys):
    old = [tmp_path / f"old{i}.safetensors" for i in range(2)]
    for p in old:
        st.save_file(_theta(), p, metadata={"task": "0"})
    for p in old:
        assert torch.equal(storage.read_tensors(p)["b"], _theta()["b"])
        assert storage.check_tensors_file(p) is False  # nothing to verify against
    err = capsys.readouterr().err
    assert err.count("carries no content digest") == 1 and str(old[0]) in err
    # a truncated old file is still refused
    _truncate(old[1])
    with pytest.raises(CorruptCheckpointError, match=re.escape(str(old[1]))):
        storage.read_tensors(old[1])


def test_the_verified_cache_skips_the_hash_only_for_the_same_file(tmp_path, monkeypatch):
    path = tmp_path / "c.safetensors"
    storage.write_tensors(_theta(), path)
    storage.read_tensors(path)
    calls = []
    real = storage.tensors_digest
    monkeypatch.setattr(storage.tensors, "tensors_digest", lambda *a: calls.append(1) or real(*a))
    storage.read_tensors(path)
    assert calls == []  # same path, size and mtime: verified once in this process
    storage.write_tensors({**_theta(), "b": torch.zeros(256)}, path)
    storage.read_tensors(path)
    assert calls == [1, 1]  # once to write the new file, once to check it: a new file is read afresh


def test_damaged_file_error_crosses_process_boundaries():
    err = pickle.loads(pickle.dumps(CorruptCheckpointError("/x/task_000.safetensors", "bad\nthing")))
    assert isinstance(err, CorruptCheckpointError) and str(err) == "/x/task_000.safetensors: bad thing"


# --------------------------------------------------------------------------------------------
# the checkpoint store: what counts as cached, moving aside


def test_has_refuses_and_moves_aside_a_truncated_checkpoint(tmp_path, capsys):
    store = CheckpointStore(tmp_path / "unit")
    store.save(0, _theta(), {"task": "0"})
    path = Path(store.task_file(0))
    _truncate(path)
    assert not store.has(0)
    line = _one_line_naming(capsys.readouterr().err, path)
    assert line.startswith("damaged file: ") and "moved aside to task_000.safetensors.damaged-" in line
    assert not path.exists() and len(_moved(path)) == 1
    assert not store.has(0)  # nothing there now: the task is fine-tuned again


def test_has_is_cheap_and_verify_and_load_read_every_byte(tmp_path, capsys):
    store = CheckpointStore(tmp_path / "unit")
    for t in (0, 1):
        store.save(t, _theta(), {"task": str(t)})
        _zero_block(Path(store.task_file(t)))
    assert store.has(0) and store.has(1)  # header and size are fine
    assert not store.verify(0)
    with pytest.raises(CorruptCheckpointError, match="task_001"):
        store.load(1, _theta())
    err = capsys.readouterr().err
    for t in (0, 1):
        path = Path(store.task_file(t))
        assert "its task will be fine-tuned again" in _one_line_naming(err, path)
        assert not path.exists() and len(_moved(path)) == 1
        assert not store.has(t)


def test_a_damaged_epoch_state_is_moved_aside_and_the_task_starts_over(tmp_path, capsys):
    store = CheckpointStore(tmp_path / "unit")
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.ones(2, 4)).sum().backward()
    opt.step()
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    store.save_epoch(0, TrainState(2, weights, opt.state_dict()))
    path = Path(store.epoch_file(0))
    assert storage.DIGEST_KEY not in storage.read_metadata(path)
    back = store.load_epoch(0, weights)
    assert back is not None and back.epoch == 2 and torch.equal(back.weights["weight"], weights["weight"])
    # damage one value in the optimizer moments without changing the header
    data = bytearray(path.read_bytes())
    data[-4:] = b"\x00\x00\xc0\x7f"  # a NaN where a moment was
    path.write_bytes(bytes(data))
    storage.tensors._verified.clear()
    assert store.load_epoch(0, weights) is None
    assert "restarts from its first epoch" in _one_line_naming(capsys.readouterr().err, path)
    assert not path.exists() and len(_moved(path)) == 1


def test_moved_aside_names_never_collide_and_take_the_sidecar(tmp_path):
    part = tmp_path / "final.parquet"
    names = []
    for _ in range(3):
        part.write_bytes(b"x")
        Path(storage.sidecar(part)).write_text("0" * 64 + "  final.parquet\n")
        names.append(storage.move_aside(part))
    assert len(set(names)) == 3 and all(re.search(r"final\.parquet" + DAMAGED, n) for n in names)
    for n in names:
        assert Path(n).read_bytes() == b"x" and Path(n + ".sha256").is_file()
    assert not part.exists() and not Path(storage.sidecar(part)).exists()
    assert storage.move_aside(part) is None  # gone already: nothing to move
    assert storage.list_files(tmp_path, ".parquet") == []  # moved-aside parts are never results


# --------------------------------------------------------------------------------------------
# Parquet parts


def _rows(after_task: int = 0) -> list[dict]:
    common = {"run": "r", "scenario": "s/2", "dataset": "s", "backbone": "b", "method": "magmax",
              "finetuning": "seq", "seed": 5, "config_hash": "h", "code_version": "v", "role": "matrix",
              "metric": "accuracy"}
    return make_rows(common, [{"after_task": after_task, "eval_task": e, "value": 50.0 + e} for e in range(3)])


def test_a_part_has_a_sha256sum_sidecar(tmp_path):
    part = tmp_path / "s" / "final.parquet"
    write_unit(_rows(), part)
    digest, name = Path(storage.sidecar(part)).read_text().split()
    assert digest == hashlib.sha256(part.read_bytes()).hexdigest() and name == "final.parquet"
    assert unit_done(part) and len(read_run(tmp_path)) == 3


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_damaged_part_is_not_done_and_moves_aside(tmp_path, capsys, damage):
    part = tmp_path / "s" / "final.parquet"
    write_unit(_rows(), part)
    data = bytearray(part.read_bytes())
    if damage == "truncate":
        del data[len(data) // 2:]
    else:
        data[len(data) // 3] ^= 0xFF
    part.write_bytes(bytes(data))
    # read_run names the file in one line and moves nothing (make_report uses it)
    with pytest.raises(DamagedFileError, match=re.escape(str(part))) as err:
        read_run(tmp_path)
    assert "\n" not in str(err.value) and part.exists()
    assert not unit_done(part)
    line = _one_line_naming(capsys.readouterr().err, part)
    assert "its scenario will be run again" in line
    assert not part.exists() and len(_moved(part)) == 1 and Path(str(_moved(part)[0]) + ".sha256").is_file()
    assert read_run(tmp_path).empty


def test_a_part_from_before_sidecars_is_accepted_unless_it_does_not_parse(tmp_path, capsys):
    part = tmp_path / "s" / "matrix.parquet"
    write_unit(_rows(), part)
    Path(storage.sidecar(part)).unlink()
    assert unit_done(part) and len(read_run(tmp_path)) == 3
    assert "carries no content digest" in capsys.readouterr().err
    _truncate(part)
    with pytest.raises(DamagedFileError, match=re.escape(str(part)) + ": not a readable Parquet file"):
        read_run(tmp_path)
    assert not unit_done(part) and len(_moved(part)) == 1


def test_make_report_names_a_damaged_part(tmp_path, capsys):
    from jobs import make_report

    part = tmp_path / "run" / "results" / "s_2" / "final.parquet"
    write_unit(_rows(), part)
    _truncate(part)
    assert make_report.main([str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    line = _one_line_naming(err, part)
    assert line.startswith("make_report: ") and "sha256" in line
    assert part.exists()  # a report moves nothing: the benchmark's rerun does, and recomputes it


# --------------------------------------------------------------------------------------------
# the plan


def _cfg(tmp_path, data_root):
    from pipeline.config import load_config

    # (with its data present: without it the plan counts nothing as cached)
    return load_config(ROOT / "configs" / "demo.yaml", [f"storage={tmp_path / 'storage'}", "scenarios.0.tasks=2",
                                                       f"data_root={data_root}", "demo_data=false"])


def test_the_plan_never_counts_a_damaged_checkpoint(tmp_path, capsys, demo_data_root):
    from pipeline.orchestration.plan import build_plan, verify_cached

    cfg = _cfg(tmp_path, demo_data_root)
    plan = build_plan(cfg)
    seq = next(u for u in plan.units if u.unit.mode == "seq")
    store = CheckpointStore(seq.folder)
    for t in seq.unit.outputs:
        store.save(t, _theta(), {"task": str(t)})
    _truncate(Path(store.task_file(0)))
    _zero_block(Path(store.task_file(1)))
    plan = build_plan(cfg)
    seq = next(u for u in plan.units if u.unit.mode == "seq")
    assert seq.cached == [1]  # the truncated one is not cached (and was moved aside)...
    assert verify_cached(plan) == 1
    assert seq.cached == [] and seq in plan.pending  # ...and the zeroed one goes at the full check
    err = capsys.readouterr().err
    for t in (0, 1):
        path = Path(store.task_file(t))
        _one_line_naming(err, path)
        assert not path.exists() and len(_moved(path)) == 1


def test_verify_cached_skips_units_of_finished_scenarios(tmp_path, monkeypatch, demo_data_root):
    from pipeline.orchestration.plan import build_plan, verify_cached

    plan = build_plan(_cfg(tmp_path, demo_data_root))
    plan.scenarios_done = {k: True for k in plan.scenarios_done}
    for u in plan.units:
        u.cached = list(u.unit.outputs)
    monkeypatch.setattr(CheckpointStore, "verify", lambda *_: pytest.fail("read a file nobody needs"))
    assert verify_cached(plan) == 0


# --------------------------------------------------------------------------------------------
# object stores: moved aside by copy and delete


def test_on_s3_a_truncated_checkpoint_is_moved_aside(capsys):
    from s3_server import ENV, s3_server

    mp = pytest.MonkeyPatch()
    for k, v in ENV.items():
        mp.setenv(k, v)
    try:
        with s3_server("integrity") as s3:
            store = CheckpointStore(storage.join(s3.uri("w"), "checkpoints", "k"))
            store.save(0, _theta(), {"task": "0"})
            path = store.task_file(0)
            assert store.verify(0)
            data = storage.read_bytes(path)
            storage.write_bytes(path, data[: len(data) // 2])
            storage.tensors._verified.clear()
            assert not store.has(0) and not storage.exists(path)
            moved = [f for f in storage.list_files(storage.join(s3.uri("w"), "checkpoints", "k"))
                     if re.search(r"task_000\.safetensors" + DAMAGED, storage.split_query(f)[0])]
            assert len(moved) == 1 and storage.read_bytes(moved[0]) == data[: len(data) // 2]
            assert "moved aside to task_000.safetensors.damaged-" in capsys.readouterr().err
            # a part on S3: verified against its sidecar there
            part = storage.join(s3.uri("w"), "results", "s", "final.parquet")
            write_unit(_rows(), part)
            assert unit_done(part)
            storage.write_bytes(part, storage.read_bytes(part)[:-10])
            assert not unit_done(part) and not storage.exists(part)
    finally:
        mp.undo()



# --------------------------------------------------------------------------------------------
# through the real entry point


@pytest.mark.slow
def test_a_rerun_recomputes_damaged_files_and_gets_a_fresh_runs_results(tmp_path, tiny_demo_run, monkeypatch,
                                                                        capsys):
    import shutil

    import pandas as pd

    from jobs import run_benchmark

    monkeypatch.chdir(run_benchmark.ROOT)
    # a copy of the suite's finished tiny demo (tests/test_end_to_end.py's), damaged below
    shutil.copytree(tiny_demo_run.storage, tmp_path / "storage")
    argv = tiny_demo_run.argv(tmp_path / "storage", "--no-report")
    run_dir = tmp_path / "storage" / "e2e"
    fresh = read_run(tiny_demo_run.run_dir / "results")
    by_unit = {(storage.read_metadata(p)["unit"], p.name): p
               for p in (tmp_path / "storage" / "checkpoints").rglob("task_*.safetensors")}
    zeroed = next(p for (unit, name), p in by_unit.items()
                  if unit.endswith("-seq") and name == "task_000.safetensors")
    truncated = next(p for (unit, name), p in by_unit.items()
                     if unit.endswith("-ind") and name == "task_001.safetensors")
    part = next((run_dir / "results").rglob("final.parquet"))
    _zero_block(zeroed)
    _truncate(truncated)
    _truncate(part)
    capsys.readouterr()

    assert run_benchmark.main(argv) == 0
    err = capsys.readouterr().err
    for path, then in ((zeroed, "fine-tuned again"), (truncated, "fine-tuned again"), (part, "run again")):
        line = _one_line_naming(err, path)
        assert line.startswith("damaged file: ") and then in line, line
        assert path.exists() and len(_moved(path)) == 1  # recomputed in place, the damaged copy kept beside
    assert storage.check_tensors_file(zeroed) and storage.check_tensors_file(truncated)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["fine_tuned_tasks"] == 2 and summary["failures"] == []
    # the same numbers as the fresh run (the config hash covers storage, which is the copy's here)
    after = read_run(run_dir / "results")
    assert after.config_hash.nunique() == 1
    pd.testing.assert_frame_equal(after.drop(columns="config_hash"), fresh.drop(columns="config_hash"))
