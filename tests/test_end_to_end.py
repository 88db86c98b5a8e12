"""The real entry point, through Ray Train, the MagMax actor and Tune, on a tiny config."""

import json
import shutil
import time

import pandas as pd
import pytest
from conftest import PAPER_METHODS

from pipeline.results import KEY_COLUMNS, read_run

pytestmark = pytest.mark.slow


def _argv(tmp_path, data_root, name="e2e"):
    return [
        "--config", "configs/demo.yaml",
        f"name={name}", f"storage={tmp_path / 'storage'}", f"data_root={data_root}", "demo_data=false",
        "scenarios.0.tasks=2", "finetune.epochs=1", "finetune.batch_size=32",
        "merge.sweep_lambdas=[0.5,1.0]", PAPER_METHODS,
    ]


def test_run_benchmark_end_to_end_and_resume(tiny_demo_run, tmp_path, monkeypatch):
    # the run itself is the shared tiny_demo_run (conftest.py): its argv is _argv's with name=e2e
    from jobs import run_benchmark

    monkeypatch.chdir(run_benchmark.ROOT)
    first = tiny_demo_run.seconds
    storage_dir = tiny_demo_run.storage
    run_dir = tiny_demo_run.run_dir
    summary = json.loads((run_dir / "summary.json").read_text())
    for key in ("chance", "zero_shot", "joint", "seq_ft", "lwf", "ewc", "randmix", "maxabs", "avg", "ties",
                "magmax", "seq_ft_first_task_forgetting", "sign_conflicts_ind", "sign_conflicts_seq"):
        assert summary[key] is not None, key
    assert summary["chance"] == pytest.approx(1.0)
    df = read_run(run_dir / "results")
    assert not df.duplicated(list(KEY_COLUMNS)).any()
    final = df[df.role == "final"].set_index("method")
    assert set(final.index) == {"zero_shot", "joint", "seq_ft", "lwf", "ewc", "randmix", "maxabs", "avg",
                                "ties", "magmax"}
    assert final.loc["magmax", "lam"] == 0.5 and final.loc["ties", "lam"] == 0.55
    sweep = df[df.role == "sweep"]
    assert set(sweep.lam) == {0.5, 1.0}
    # the headline MagMax trial and the sweep's λ=0.5 trial are the same model
    same = sweep[(sweep.method == "magmax") & (sweep.lam == 0.5)].value.iloc[0]
    assert same == pytest.approx(final.loc["magmax", "value"])
    mat = df[(df.role == "matrix") & (df.method == "seq_ft") & (df.eval_task >= 0)]
    assert len(mat) == 4
    assert (run_dir / "config.yaml").is_file() and (run_dir / "report" / "table.md").is_file()
    ckpts = sorted((storage_dir / "checkpoints").rglob("task_*.safetensors"))
    assert len(ckpts) == 2 + 2 + 2 + 2 + 1  # seq, ind, lwf, ewc chains and joint

    # a rerun of the finished plan fine-tunes nothing and writes no new rows
    mtimes = {p: p.stat().st_mtime for p in ckpts}
    start = time.time()
    assert run_benchmark.main(tiny_demo_run.argv(storage_dir)) == 0
    again = time.time() - start
    assert {p: p.stat().st_mtime for p in ckpts} == mtimes
    pd.testing.assert_frame_equal(read_run(run_dir / "results"), df)
    assert again < first

    # a finished run on read-only storage still runs (nothing is rewritten); the storage folder
    # moved elsewhere is the same run (a copy: the shared run's folder stays where it is)
    from pipeline import storage

    def refuse(path, *_a, **_k):
        raise PermissionError(f"read-only: {path}")

    moved = tmp_path / "moved"
    shutil.copytree(storage_dir, moved)
    away = storage_dir.with_name("away")  # while the copy runs, nothing is at the old path
    storage_dir.rename(away)
    try:
        with monkeypatch.context() as m:
            for where in (storage, storage.files):  # the package's names and the ones its modules call
                m.setattr(where, "write_text", refuse)
                m.setattr(where, "write_bytes", refuse)
                m.setattr(where, "atomic_output", refuse)
            assert run_benchmark.main([*tiny_demo_run.argv(moved), "--no-report"]) == 0
    finally:
        away.rename(storage_dir)


def test_a_diverging_unit_fails_alone_and_is_recorded(tmp_path, demo_data_root, ray_session, monkeypatch):
    from jobs import run_benchmark

    monkeypatch.chdir(run_benchmark.ROOT)
    # λ = 1e300 overflows float32 in EWC's penalty: task 2 of the EWC chain meets a NaN loss. What
    # is tested is the driver's bookkeeping of a failed unit, so the units run Train's loop in their
    # driving task (num_workers=0) and the λ trials as plain tasks: the same code reads the loop's
    # return value as behind a worker group (test_run_benchmark_end_to_end_and_resume's)
    argv = _argv(tmp_path, demo_data_root, name="nan") + ["finetune.ewc_lambda=1e300",
                                                        "methods=[zero_shot,seq_ft,magmax,ewc]",
                                                        "ray.num_workers=0", "ray.tune_sweep=false"]
    assert run_benchmark.main(argv) == 1
    run_dir = tmp_path / "storage" / "nan"
    failures = json.loads((run_dir / "results" / "demo_shapes_2" / "failures.json").read_text())
    assert [(f["mode"], f["methods"]) for f in failures] == [("ewc", ["ewc"])]
    assert "NonFiniteLossError" in failures[0]["error"] and "non-finite training loss" in failures[0]["error"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["ewc"] is None and summary["magmax"] is not None and summary["seq_ft"] is not None
    df = read_run(run_dir / "results")
    assert set(df[df.role == "final"].method) == {"zero_shot", "seq_ft", "magmax"}
    seq = sorted(p for p in (tmp_path / "storage" / "checkpoints").rglob("task_*.safetensors")
                 if ".epoch." not in p.name)
    mtimes = {p: p.stat().st_mtime_ns for p in seq}

    # the failure keeps the scenario open: a rerun retries the EWC chain (and fails the same
    # way), reuses everything else and still writes each row once
    assert run_benchmark.main(argv) == 1
    assert {p: p.stat().st_mtime_ns for p in seq} == mtimes
    again = read_run(run_dir / "results")
    key = list(KEY_COLUMNS)
    pd.testing.assert_frame_equal(again.sort_values(key).reset_index(drop=True),
                                  df.sort_values(key).reset_index(drop=True))


class _Planted:
    """A pickle that, when loaded, creates a file: proof that storage content ran as code."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickles_planted_in_the_sweep_state_never_run_through_the_entry_point(tiny_demo_run, tmp_path, monkeypatch):
    # whoever can write the storage plants pickles wherever Tune keeps (or kept) state; a rerun
    # that resumes the sweep reads its own JSON records and loads none of them
    import pickle

    from jobs import run_benchmark

    monkeypatch.chdir(run_benchmark.ROOT)
    storage_dir = tmp_path / "storage"
    shutil.copytree(tiny_demo_run.storage, storage_dir)
    before = read_run(storage_dir / "e2e" / "results")
    shutil.rmtree(storage_dir / "e2e" / "results")  # the scenario runs again, its sweep from the records
    sweeps = list((storage_dir / "ray_tune").glob("sweep-e2e-*"))
    records = sorted(p for s in sweeps for p in (s / "trials").glob("*.json"))
    assert sweeps and len(records) >= 4
    for p in records[::2]:
        p.unlink()  # half the trials left to run: Tune starts again
    marker = tmp_path / "planted-pickle-ran"
    payload = pickle.dumps(_Planted(str(marker)))
    for s in sweeps:
        for d in (s, s / "tune-planted", s / "tune-planted" / "trial_0"):
            d.mkdir(parents=True, exist_ok=True)
            for name in ("tuner.pkl", "trainable.pkl", "experiment_state.pkl", "params.pkl"):
                (d / name).write_bytes(payload)

    assert run_benchmark.main(tiny_demo_run.argv(storage_dir, "--no-report")) == 0
    assert not marker.exists(), "a pickle from storage was loaded"
    after = read_run(storage_dir / "e2e" / "results")
    cols = ["method", "finetuning", "lam", "role", "after_task", "eval_task", "metric", "value"]
    for role in ("final", "sweep"):
        want = before[before.role == role][cols].sort_values(cols[:-1]).reset_index(drop=True)
        got = after[after.role == role][cols].sort_values(cols[:-1]).reset_index(drop=True)
        pd.testing.assert_frame_equal(got, want)
    # Tune's own state stayed off the storage: only the records are there
    assert not [p for s in sweeps for p in s.rglob("*.pkl") if "tune-planted" not in str(p)
                and p.parent != s]


def test_changed_data_is_refused_under_its_run_name_and_fine_tuned_again_under_another(
        tiny_demo_run, demo_data_root, tmp_path, monkeypatch, capsys):
    from jobs import run_benchmark

    monkeypatch.chdir(run_benchmark.ROOT)
    storage_dir, data = tmp_path / "storage", tmp_path / "data"
    shutil.copytree(tiny_demo_run.storage, storage_dir)
    shutil.copytree(demo_data_root, data)
    for split in ("train", "test"):  # the probe: one class folder deleted, at the same path
        shutil.rmtree(sorted((data / "demo_shapes" / split).iterdir())[0])

    capsys.readouterr()
    assert run_benchmark.main(tiny_demo_run.argv(storage_dir, f"data_root={data}", "--no-report")) == 2
    err = capsys.readouterr().err
    assert "differs in ['data of demo_shapes']" in err and "\n" not in err.strip()

    # under a new name nothing trained on the old data is reused (the same data is: see the
    # moved-storage and user-dataset runs)
    assert run_benchmark.main(tiny_demo_run.argv(storage_dir, f"data_root={data}", "name=changed", "--plan")) == 0
    out = capsys.readouterr().out
    assert "0 cached, 5 to fine-tune" in out, out
    assert run_benchmark.main(tiny_demo_run.argv(storage_dir, "name=same_data_new_name", "--plan")) == 0
    assert "5 cached, 0 to fine-tune" in capsys.readouterr().out
