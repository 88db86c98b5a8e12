"""Progress a person can follow: unit states, per-epoch reports, throttled log lines, an atomic
progress.json, and jobs/status.py on an interrupted run folder (issue 13)."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
import torch

from pipeline import storage
from pipeline.orchestration.progress.display import PlainDisplay, TtyDisplay, clock_text, overall_line, unit_line
from pipeline.orchestration.progress.monitor import Monitor, WorkerReporter
from pipeline.orchestration.progress.run_status import status_lines
from pipeline.orchestration.progress.state import (CACHED, DONE, FAILED, QUEUED, RUNNING, ProgressState,
                                                   UnitProgress, read_progress, unit_id, write_progress)

ROOT = Path(__file__).resolve().parent.parent
T0 = 1_800_000_000.0  # a fixed wall time (2027-01-15 08:00:00Z)


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _unit(name: str, gpu_h: float | None, status: str = QUEUED, outputs=(0, 1)) -> UnitProgress:
    return UnitProgress(id=f"k{name}:seq:0,1", label=name, scenario="demo", mode="seq", outputs=list(outputs),
                        key=f"k{name}", cached=[], gpu_h=gpu_h, status=status)


def _state() -> ProgressState:
    units = [_unit("a", 1.0), _unit("b", 2.0), _unit("c", None), _unit("d", 4.0, CACHED)]
    return ProgressState(run="r", units=units, train_rate=1000.0, eval_gpu_h=0.5, started_at=T0, updated_at=T0)


# --------------------------------------------------------------------------------------------
# state


def test_state_transitions_counts_and_gpu_hours():
    s = _state()
    assert (s.count(QUEUED), s.count(CACHED)) == (3, 1)
    assert s.hours() == (0.0, 3.0, 0.0)  # cached and unknown-size units count no hours
    s.started(0, T0 + 1)
    assert not s.reported("kb:seq:0,1", {"fraction": 0.5})  # b is not running: a stray message
    assert s.reported("ka:seq:0,1", {"fraction": 0.25, "task": 0, "T": 2, "epoch": 1, "epochs": 2})
    assert s.units[0].status == RUNNING and s.hours() == pytest.approx((0.25, 2.75, 0.0))
    s.started(1, T0 + 2)
    s.failed(1, "NonFiniteLossError: nan", T0 + 3)
    assert s.hours() == pytest.approx((0.25, 0.75, 2.0))  # a failed unit's hours are neither done nor left
    s.finished(0, T0 + 4)
    assert s.units[0].fraction == 1.0 and s.hours() == pytest.approx((1.0, 0.0, 2.0))
    assert s.reported("ka:seq:0,1", {"fraction": 1.0, "epoch": 2})  # a late last-epoch report of a done unit
    s.close(T0 + 5)
    assert s.state == "interrupted"  # c never ran
    s.started(2, T0 + 6)
    s.finished(2, T0 + 7)
    s.close(T0 + 8)
    assert s.state == "finished"
    assert [u.status for u in s.units] == [DONE, FAILED, DONE, CACHED]


def test_lines_say_task_epoch_speed_eta_and_the_overall_figures():
    s = _state()
    s.started(0, T0)
    assert "starting" in unit_line(s.units[0], T0 + 65) and "0:01:05" in unit_line(s.units[0], T0 + 65)
    s.reported("ka:seq:0,1", {"phase": "training", "task": 1, "T": 2, "epoch": 3, "epochs": 10,
                              "images_per_s": 123.4, "eta_s": 100.0, "loss": 0.5, "fraction": 0.6, "time": T0 + 100})
    line = unit_line(s.units[0], T0 + 130)  # 30 s after the report: ETA counts down
    assert line == "demo seq: task 2/2 epoch 3/10 [######....] 123 img/s, ETA 0:01:10, loss 0.5"
    overall = overall_line(s, T0 + 3725)
    assert overall.startswith("units 1/4 done (1 running, 2 queued, 1 cached before)")
    assert "GPU-h (est.) 0.600 done, 2.40 left, +0.500 evaluation after" in overall
    assert overall.endswith("elapsed 1:02:05")
    assert clock_text(None) == "?" and clock_text(86400 + 61) == "1d 0:01:01"


def test_worker_reporter_measures_images_per_second_and_the_unit_eta():
    sent, clock = [], Clock(100.0)
    # three tasks of 100, 100, 50 images, 2 epochs each; task 0 was finished before this start
    rep = WorkerReporter([0, 1, 2], 3, {0: 100, 1: 100, 2: 50}, {0: 2, 1: 2, 2: 2}, {0}, sent.append, clock)
    assert sent[0]["phase"] == "starting" and sent[0]["task"] == 1
    clock.now = 110.0
    rep(1, 0, 2.5)  # first epoch of task 1: 100 images in 10 s
    m = sent[-1]
    assert (m["task"], m["epoch"], m["epochs"], m["T"]) == (1, 1, 2, 3)
    assert m["images_per_s"] == pytest.approx(10.0)
    assert m["eta_s"] == pytest.approx((100 + 100) / 10.0)  # one epoch of task 1 and task 2's two
    assert m["fraction"] == pytest.approx(1 - 200 / 300)
    clock.now = 115.0
    rep(1, 1, 2.0)
    assert sent[-1]["images_per_s"] == pytest.approx(20.0) and sent[-1]["eta_s"] == pytest.approx(5.0)
    clock.now = 120.0
    rep(2, 1, 1.0)
    assert sent[-1]["fraction"] == pytest.approx(1.0) and sent[-1]["eta_s"] == 0.0

    def broken(message):
        raise ConnectionError("inbox gone")
    WorkerReporter([0], 1, {0: 1}, {0: 1}, set(), broken, clock)(0, 0, 1.0)  # never raises


def test_plain_lines_are_timestamped_and_at_most_every_30_s():
    out = io.StringIO()
    d = PlainDisplay(out, every_s=30.0)
    assert d.show(["overall", "unit a"], T0)
    assert not d.show(["overall"], T0 + 10) and not d.show(["overall"], T0 + 29.9)
    d.note("unit a done", T0 + 12)  # events are not held back
    assert d.show(["overall 2"], T0 + 30)
    assert d.show(["final"], T0 + 31, force=True)
    assert out.getvalue().splitlines() == [
        "[2027-01-15 08:00:00Z] progress: overall", "[2027-01-15 08:00:00Z]   unit: unit a",
        "[2027-01-15 08:00:12Z] unit a done", "[2027-01-15 08:00:30Z] progress: overall 2",
        "[2027-01-15 08:00:31Z] progress: final"]


def test_tty_lines_are_drawn_in_place():
    out = io.StringIO()
    d = TtyDisplay(out)
    d.show(["overall line", "unit line " + "x" * 500], T0)
    d.note("a note", T0)
    d.close()
    text = out.getvalue()
    assert "overall line" in text and "unit line" in text and "a note" in text
    assert "x" * 400 not in text  # trimmed to the terminal's width


# --------------------------------------------------------------------------------------------
# progress.json


def test_progress_json_round_trips_locally_and_through_a_uri(tmp_path):
    s = _state()
    s.started(0, T0 + 1)
    s.reported("ka:seq:0,1", {"task": 0, "epoch": 1, "fraction": 0.5})
    for run_dir in (str(tmp_path / "run"), f"file://{tmp_path}/remote/run"):
        write_progress(run_dir, s)
        back = read_progress(run_dir)
        assert back.to_json() == s.to_json()
    assert read_progress(str(tmp_path / "none")) is None
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "progress.json").write_text('{"version": 1, "units": [}')
    with pytest.raises(ValueError, match="bad/progress.json"):
        read_progress(str(tmp_path / "bad"))
    (tmp_path / "bad" / "progress.json").write_text('{"version": 99}')
    with pytest.raises(ValueError, match="progress.json: not a progress file.*version 99"):
        read_progress(str(tmp_path / "bad"))


@pytest.fixture(scope="module")
def cfg(tmp_path_factory, demo_data_root):
    from pipeline.config import load_config

    storage_dir = tmp_path_factory.mktemp("storage")
    # with its data present: checkpoint keys are the data's content, so the plan sees the cache
    return load_config(ROOT / "configs" / "demo.yaml", [f"storage={storage_dir}", "scenarios.0.tasks=2",
                                                       f"data_root={demo_data_root}", "demo_data=false"])


def _fresh(cfg, tmp_path):
    from dataclasses import replace

    return replace(cfg, storage=str(tmp_path / "storage"))


def test_the_monitor_writes_progress_json_atomically(cfg, tmp_path, monkeypatch):
    from pipeline.orchestration.plan import build_plan

    cfg = _fresh(cfg, tmp_path)
    plan = build_plan(cfg)
    clock, out, logged = Clock(), io.StringIO(), []
    mon = Monitor(cfg, plan, logged.append, out=out, tty=False, clock=clock, use_ray=False)
    mon.tick()  # (what start() does before its thread; the thread is not needed here)
    run_dir = tmp_path / "storage" / cfg.name
    first = json.loads((run_dir / "progress.json").read_text())
    assert first["state"] == "running" and {u["status"] for u in first["units"]} == {QUEUED}
    assert len(first["units"]) == len(plan.units)

    mon.started(0)
    clock.now += 1
    mon.tick()  # a unit started: written at once
    assert read_progress(str(run_dir)).units[0].status == RUNNING

    # a writer that dies before publishing leaves the previous file whole, and says so once
    def crash(*_a, **_k):
        raise OSError("disk full")
    monkeypatch.setattr(storage.files.os, "replace", crash)
    mon.finished(0)
    clock.now += 1
    mon.tick()
    monkeypatch.undo()
    assert read_progress(str(run_dir)).units[0].status == RUNNING
    assert [line for line in logged if "not written" in line and "progress.json" in line]
    assert sorted(p.name for p in run_dir.iterdir()) == ["progress.json"]  # no temp file left behind

    for i in range(1, len(plan.units)):
        mon.started(i)
        mon.finished(i)
    clock.now += 1
    mon.close()
    final = read_progress(str(run_dir))
    assert final.state == "finished" and {u.status for u in final.units} == {DONE}
    text = out.getvalue()
    assert re.search(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ\] progress: units 0/\d+ done", text, re.M)
    assert f"progress: units {len(plan.units)}/{len(plan.units)} done" in text
    assert f"unit {plan.units[0].unit.label} done in 0:00:01;" in text


# --------------------------------------------------------------------------------------------
# jobs/status.py


def _section(lines: list[str], head: str) -> list[str]:
    """Labels listed under the section whose line starts with ``head``."""
    out, inside = [], False
    for line in lines:
        if line.startswith(head):
            inside = True
        elif inside and line.startswith("  "):
            out.append(line.split()[0].rstrip(":"))
        elif inside:
            break
    return out


def test_status_of_an_interrupted_run_lists_exactly_what_a_rerun_fine_tunes(cfg, tmp_path, capsys):
    from pipeline.config import config_yaml
    from pipeline.orchestration.plan import build_plan
    from pipeline.storage import CheckpointStore

    from jobs import status

    cfg = _fresh(cfg, tmp_path)
    plan = build_plan(cfg)
    by_mode = {u.unit.mode: (i, u) for i, u in enumerate(plan.units)}
    assert {"seq", "ind", "lwf", "ewc", "joint"} <= set(by_mode)
    run_dir = str(tmp_path / "storage" / cfg.name)
    storage.write_text(storage.join(run_dir, "config.yaml"), config_yaml(cfg))

    # the driver ran for a while: ind finished, seq stopped in its second task, lwf failed, then it was killed
    clock = Clock()
    mon = Monitor(cfg, plan, print, out=io.StringIO(), tty=False, clock=clock, use_ray=False)
    i_ind, ind = by_mode["ind"]
    i_seq, seq = by_mode["seq"]
    i_lwf, lwf = by_mode["lwf"]
    for i in (i_ind, i_seq, i_lwf):
        mon.started(i)
    mon.state.reported(unit_id(seq.folder, "seq", seq.unit.outputs),
                       {"phase": "training", "task": 1, "T": 2, "epoch": 3, "epochs": 10, "fraction": 0.65,
                        "images_per_s": 50.0, "eta_s": 60.0, "loss": 1.0, "time": clock.now})
    mon.finished(i_ind)
    mon.failed(i_lwf, "NonFiniteLossError: non-finite training loss (nan) in epoch 2")
    mon.tick()  # the last progress.json before the kill (no close)
    weights = {"w": torch.zeros(2)}
    for t in ind.unit.outputs:
        CheckpointStore(ind.folder).save(t, weights, {})
    CheckpointStore(seq.folder).save(0, weights, {})

    want = {u.unit.label for u in build_plan(cfg).pending}  # what a rerun fine-tunes
    assert want == {u.unit.label for u in plan.units} - {ind.unit.label}

    lines = status_lines(run_dir, clock.now + 600)
    text = "\n".join(lines)
    assert "stopped: progress.json says fine-tuning, but it was not updated for 0:10:00" in text
    assert "source: the units this run's plan recorded in progress.json, checked against the checkpoints" in text
    assert f"units: {len(plan.units)} in the plan: 1 done, 0 running, 1 failed, {len(plan.units) - 2} left" in text
    assert _section(lines, "failed") == [lwf.unit.label]
    assert set(_section(lines, "left")) | {lwf.unit.label} == want
    assert f"  {seq.unit.label} (1/2 tasks cached; was running at the last update in task 2, epoch 3/10 done)" \
        in lines
    assert "scenarios with results: 0/1" in text

    # rebuilt from config.yaml and the data instead: the same units
    again = status_lines(run_dir, clock.now + 600, replan=True)
    assert "source: the plan rebuilt from config.yaml" in "\n".join(again)
    assert set(_section(again, "left")) == want

    # while the driver is alive, its running units are listed as running
    live = status_lines(run_dir, clock.now + 5)
    assert _section(live, "running") == [seq.unit.label] and seq.unit.label not in _section(live, "left")
    assert "task 2/2 epoch 3/10" in "\n".join(live)

    # the thin CLI
    assert status.main([run_dir]) == 0
    assert f"units: {len(plan.units)} in the plan" in capsys.readouterr().out
    assert status.main([str(tmp_path / "nowhere")]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_status_without_progress_json_rebuilds_the_plan(cfg, tmp_path):
    from pipeline.config import config_yaml
    from pipeline.orchestration.plan import build_plan

    cfg = _fresh(cfg, tmp_path)
    run_dir = str(tmp_path / "storage" / cfg.name)
    storage.write_text(storage.join(run_dir, "config.yaml"), config_yaml(cfg))
    lines = status_lines(run_dir, T0)
    assert "this run wrote no progress.json" in "\n".join(lines)
    assert set(_section(lines, "left")) == {u.unit.label for u in build_plan(cfg).units}
    # without the data the keys, and so the cache, are unknown: said, not guessed
    lines = status_lines(run_dir, T0, replan=True, data_root=str(tmp_path / "no-data"))
    assert "data is not found here" in "\n".join(lines)


# --------------------------------------------------------------------------------------------
# through Ray


@pytest.mark.slow
def test_a_real_run_leaves_progress_json_with_every_unit_done(tmp_path, demo_data_root, ray_session, monkeypatch,
                                                            capfd):
    from jobs import run_benchmark

    monkeypatch.chdir(run_benchmark.ROOT)
    # one unit (the sequential chain) and a two-trial sweep on Tune
    argv = ["--config", "configs/demo.yaml", "--no-report", "name=prog", f"storage={tmp_path / 'storage'}",
            f"data_root={demo_data_root}", "demo_data=false", "scenarios.0.tasks=2", "finetune.epochs=1",
            "finetune.batch_size=32", "methods=[zero_shot,seq_ft,magmax]", "merge.sweep_methods=[magmax]",
            "merge.sweep_lambdas=[1.0]"]
    assert run_benchmark.main(argv) == 0
    state = read_progress(str(tmp_path / "storage" / "prog"))
    assert state.state == "finished" and [u.status for u in state.units] == [DONE]
    # the Train worker's per-epoch reports reached the driver's inbox (the actor is found by name)
    assert state.units[0].report.get("phase") == "training" and state.units[0].report.get("epochs") == 1
    out = capfd.readouterr().out
    assert re.search(r"^\[[-\d :]+Z\] unit demo_shapes_2-seq done in ", out, re.M)
    assert "merge trials on Tune" in out and "Configuration for experiment" not in out  # Tune kept quiet
