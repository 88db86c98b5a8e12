"""Bad input gets a clear error naming what is wrong, and nothing already done is lost.

Complements the per-module tests, which already cover: missing/incomplete torchvision-style
dataset folders and an unreadable CUB image (test_data_registry), mis-shaped/missing tensors in
memory and a truncated safetensors file (test_models_and_vectors), unknown keys, wrong types and
λ outside [0, 2] (test_config), a Ctrl-C inside a Parquet write (test_results), a tampered CIFAR
pickle (test_data_registry). Here: the ImageFolder path users bring their own data through, an
unreadable image in the middle of a fine-tuning chain, checkpoints of another backbone on disk,
corrupt and pickled "safetensors", more tasks than classes, a hard kill during a results write,
and the security rules (nothing unpickled, no credentials written).
"""

from __future__ import annotations

import json
import os
import pickle
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.config import ConfigError, config_hash, load_config, save_config
from pipeline.data import DATASETS, DatasetNotFoundError, ImageReadError, load_dataset
from pipeline.data.image_folder import image_folder_loader
from pipeline.models import CheckpointMismatchError, backbone_id
from pipeline.results import make_rows, read_run, unit_done, write_unit
from pipeline.storage import CorruptCheckpointError, open_mapped, open_tensors, read_tensors, write_tensors

ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------------------------
# datasets in the ImageFolder layout (root/<name>/{train,test}/<class>/<image>)


def _png(path: Path, value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, dtype=np.uint8)).save(path)


def _image_folder(root: Path, name: str, classes=("red_ring", "blue_bar", "cyan_cross"), per_class: int = 2) -> Path:
    for split in ("train", "test"):
        for c in classes:
            for i in range(per_class):
                _png(root / name / split / c / f"{i}.png", 40 * i)
    return root / name


@pytest.fixture
def folder_dataset(monkeypatch):
    """Register an ImageFolder dataset under a throwaway name, removed after the test."""
    def register(name: str) -> str:
        monkeypatch.setitem(DATASETS, name, image_folder_loader(name))
        return name
    return register


def test_image_folder_missing_root_names_path_and_layout(tmp_path, folder_dataset):
    name = folder_dataset("userdata")
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset(name, tmp_path)
    msg = str(info.value)
    assert str(tmp_path / "userdata") in msg and "folder not found" in msg
    assert "expected layout" in msg and "train/<class_name>/<image>" in msg


def test_image_folder_partial_trees_name_what_is_missing(tmp_path, folder_dataset):
    name = folder_dataset("userdata")
    base = _image_folder(tmp_path, name)
    # the test split is missing
    os.rename(base / "test", base / "test_moved")
    with pytest.raises(DatasetNotFoundError, match=re.escape(str(base / "test"))):
        load_dataset(name, tmp_path)
    os.rename(base / "test_moved", base / "test")
    # a class folder without images
    (base / "train" / "green_dot").mkdir()
    (base / "test" / "green_dot").mkdir()
    with pytest.raises(DatasetNotFoundError, match="'green_dot' has no images"):
        load_dataset(name, tmp_path)
    # train and test disagree on the classes
    _png(base / "train" / "green_dot" / "0.png")
    with pytest.raises(DatasetNotFoundError, match=re.escape(str(base / "test" / "green_dot"))):
        load_dataset(name, tmp_path)
    _png(base / "test" / "green_dot" / "0.png")
    os.rename(base / "test" / "green_dot", base / "test" / "green_dots")
    with pytest.raises(DatasetNotFoundError, match="same class folders"):
        load_dataset(name, tmp_path)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_unreadable_image_names_the_file(tmp_path, folder_dataset, damage):
    name = folder_dataset("userdata")
    _image_folder(tmp_path, name)
    bundle = load_dataset(name, tmp_path)
    broken = Path(bundle.train.paths[1])
    data = broken.read_bytes()
    broken.write_bytes({"garbage": b"not an image at all", "truncated": data[: len(data) // 2],
                        "empty": b""}[damage])
    assert bundle.train[0][0].shape[0] == 3  # the other images still read
    with pytest.raises(ImageReadError, match=re.escape(str(broken))):
        bundle.train[1]
    loader = torch.utils.data.DataLoader(bundle.train, batch_size=4)
    with pytest.raises(ImageReadError, match=re.escape(str(broken))):
        list(loader)


# --------------------------------------------------------------------------------------------
# a fine-tuning chain meets bad data or a foreign checkpoint: finished work is kept


@pytest.fixture(scope="module")
def small_scenario(tmp_path_factory):
    """A 4-class ImageFolder dataset in 2 tasks, its images left on disk (not decoded into
    memory), so they are read while training, as for datasets over the in-memory limit."""
    import pipeline.scenario as S

    root = tmp_path_factory.mktemp("bad_input_data")
    _image_folder(root, "four_classes", classes=("red ring", "blue bar", "cyan cross", "green dot"),
                  per_class=3)
    cfg = load_config(None, [f"data_root={root}", "scenarios.0.dataset=four_classes", "scenarios.0.tasks=2",
                             "finetune.epochs=1", "finetune.batch_size=4", "finetune.warmup_steps=1",
                             "finetune.lr=1e-4", "finetune.loader_workers=0", "eval_batch_size=64"])
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(DATASETS, "four_classes", image_folder_loader("four_classes"))
        mp.setattr(S, "IN_MEMORY_BYTES", 0)
        yield S.build_scenario(cfg, cfg.scenarios[0])


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_unreadable_image_mid_chain_keeps_finished_tasks(small_scenario, tmp_path):
    from pipeline.chain import run_chain
    from pipeline.units import ChainUnit, checkpoint_path

    scn = small_scenario
    assert not isinstance(scn.data.train, torch.utils.data.TensorDataset)  # images read lazily
    task1 = set(scn.task_classes[1])
    victim = next(Path(p) for p, y in zip(scn.data.train.paths, scn.data.train.targets) if int(y) in task1)
    good = victim.read_bytes()
    victim.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    unit = ChainUnit(scn.scenario, "seq", (0, 1))
    unit_dir = tmp_path / "unit"
    try:
        with pytest.raises(ImageReadError, match=re.escape(str(victim))):
            run_chain(scn, unit, unit_dir)
        # task 0 finished before the bad image was reached: its checkpoint is whole and kept;
        # task 1 left nothing behind (no partial checkpoint, no temp file)
        assert _files(unit_dir) == ["task_000.safetensors"]
        first = Path(checkpoint_path(unit_dir, 0)).read_bytes()
        read_tensors(checkpoint_path(unit_dir, 0), scn.theta0)
    finally:
        victim.write_bytes(good)
    # the rerun trains task 1 only: task 0 is not redone, nothing is duplicated
    done = []
    run_chain(scn, unit, unit_dir, on_task_done=lambda task, path, stats: done.append(task))
    assert done == [1]
    assert _files(unit_dir) == ["task_000.safetensors", "task_001.safetensors"]
    assert Path(checkpoint_path(unit_dir, 0)).read_bytes() == first


def _foreign_state(theta0: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """Checkpoints that do not fit: another backbone's, one missing a tensor, one mis-shaped."""
    other = {k.replace("transformer.", "trunk."): v for k, v in theta0.items()}
    missing = dict(theta0)
    missing.pop("proj")
    shaped = dict(theta0)
    shaped["conv1.weight"] = torch.zeros(3, 3, 3, 3)
    return {"other_backbone": other, "missing": missing, "misshaped": shaped}


@pytest.mark.parametrize("kind,tensor", [("other_backbone", "'trunk."), ("missing", "'proj'"),
                                         ("misshaped", "'conv1.weight'")])
def test_foreign_checkpoint_names_file_and_tensor(small_scenario, tmp_path, kind, tensor):
    from pipeline.models import load_visual_state
    from pipeline.chain import run_chain
    from pipeline.units import ChainUnit, checkpoint_path

    scn = small_scenario
    bad = _foreign_state(scn.theta0)[kind]
    path = Path(write_tensors(bad, tmp_path / f"{kind}.safetensors"))
    for load in (read_tensors, open_mapped, open_tensors):
        with pytest.raises(ValueError, match=re.escape(str(path))) as info:
            load(path, scn.theta0)
        assert tensor in str(info.value)
        if kind == "other_backbone":
            assert "missing tensor 'transformer." in str(info.value) and "another backbone" in str(info.value)
    with pytest.raises(CheckpointMismatchError, match=r"'transformer\.|'proj'|'conv1\.weight'"):
        load_visual_state(scn.classifier().visual, bad)
    # a chain whose folder holds such a file stops with the same message and leaves it alone
    unit_dir = tmp_path / "unit"
    target = Path(checkpoint_path(unit_dir, 0))
    target.parent.mkdir(parents=True)
    target.write_bytes(path.read_bytes())
    before = target.read_bytes()
    with pytest.raises(ValueError, match=re.escape(tensor)):
        run_chain(scn, ChainUnit(scn.scenario, "seq", (0, 1)), unit_dir)
    assert target.read_bytes() == before and _files(unit_dir) == ["task_000.safetensors"]


# --------------------------------------------------------------------------------------------
# corrupt safetensors, and pickles passed off as weights


class _Payload:
    """Unpickling this creates a file: proof that a loader ran code from a weights file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _corrupt_files(tmp_path: Path) -> dict[str, Path]:
    good = Path(write_tensors({"a": torch.arange(1000.0), "b": torch.ones(4, 4)}, tmp_path / "good.safetensors"))
    blob = good.read_bytes()
    files = {
        "truncated_header": blob[:20],
        "truncated_data": blob[:-100],
        "garbage": os.urandom(4096),
        "empty": b"",
        "pickle": pickle.dumps({"a": _Payload(tmp_path / "PWNED")}),
    }
    out = {}
    for name, data in files.items():
        out[name] = tmp_path / f"{name}.safetensors"
        out[name].write_bytes(data)
    # torch.save's format (a zip holding a pickle), as a user might mistake for weights
    torch.save({"a": _Payload(tmp_path / "PWNED")}, tmp_path / "torch_save.safetensors")
    out["torch_save"] = tmp_path / "torch_save.safetensors"
    return out


@pytest.mark.parametrize("kind", ["truncated_header", "truncated_data", "garbage", "empty", "pickle", "torch_save"])
def test_corrupt_or_pickled_weights_are_refused_without_running_code(tmp_path, kind):
    path = _corrupt_files(tmp_path)[kind]
    for load in (read_tensors, open_mapped, open_tensors):
        with pytest.raises(CorruptCheckpointError, match=re.escape(str(path))):
            load(path)
    assert not (tmp_path / "PWNED").exists()


def test_missing_weights_file_names_it(tmp_path):
    for load in (read_tensors, open_mapped, open_tensors):
        with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nope.safetensors"))):
            load(tmp_path / "nope.safetensors")


# --------------------------------------------------------------------------------------------
# configs: more tasks than there are classes (or domains)


@pytest.mark.parametrize("overrides,message", [
    (["scenarios.0.dataset=cifar100", "scenarios.0.tasks=101"],
     r"scenarios\[0\]\.tasks: 101 tasks is more than the 100 classes of cifar100"),
    (["scenarios=[{dataset: cars, tasks: 5}, {dataset: cars, tasks: 200}]"],
     r"scenarios\[1\]\.tasks: 200 tasks is more than the 196 classes of cars"),
    (["scenarios.0.dataset=imagenet_r", "scenarios.0.kind=domain_incremental", "scenarios.0.tasks=16"],
     r"scenarios\[0\]\.tasks: 16 tasks, but imagenet_r has only 15 domains"),
    (["scenarios.0.dataset=cifar100", "scenarios.0.kind=domain_incremental"],
     r"scenarios\[0\]\.kind: cifar100 has no domains"),
])
def test_more_tasks_than_classes_is_refused_when_the_config_is_read(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_more_tasks_than_classes_in_a_users_dataset_is_refused_at_build(tmp_path, folder_dataset):
    from pipeline.scenario import build_scenario

    name = folder_dataset("three_classes")
    _image_folder(tmp_path, name)
    cfg = load_config(None, [f"data_root={tmp_path}", f"scenarios.0.dataset={name}", "scenarios.0.tasks=5"])
    with pytest.raises(ValueError, match=r"tasks=5 is more than the 3 classes of three_classes"):
        build_scenario(cfg, cfg.scenarios[0])


# --------------------------------------------------------------------------------------------
# a hard kill in the middle of a results write


def _rows(after_task: int) -> list[dict]:
    common = {"run": "r", "scenario": "s/2", "dataset": "s", "backbone": "b", "method": "magmax",
              "finetuning": "seq", "seed": 5, "config_hash": "h", "code_version": "v", "role": "matrix",
              "metric": "top1"}
    return make_rows(common, [{"after_task": after_task, "eval_task": e, "value": 50.0 + e} for e in range(3)])


def test_hard_kill_during_parquet_write_loses_and_duplicates_nothing(tmp_path):
    run = tmp_path / "run"
    first, second = run / "unit_a.parquet", run / "unit_b.parquet"
    write_unit(_rows(0), first)
    # another process dies (SIGKILL: no cleanup runs) after half of unit_b's bytes are written
    script = textwrap.dedent(f"""
        import io, json, os, signal, sys
        sys.path.insert(0, {str(ROOT)!r})
        import pyarrow.parquet as pq
        import pipeline.results as R
        def dying(table, sink):
            buf = io.BytesIO(); pq.write_table(table, buf)
            sink.write(buf.getvalue()[: len(buf.getvalue()) // 2]); sink.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        R._write_parquet = dying
        R.write_unit(json.loads({json.dumps(_rows(1))!r}), {str(second)!r})
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not unit_done(second)  # nothing at the unit's path
    leftovers = [p for p in _files(run) if p not in ("unit_a.parquet", "unit_a.parquet.sha256")]
    assert len(leftovers) == 1 and leftovers[0].startswith(".unit_b.parquet.")  # the dead writer's temp
    assert sorted(read_run(run)["after_task"]) == [0, 0, 0]  # the temp file is not read as results
    # the rerun skips the finished unit and completes the other one
    for path, rows in ((first, _rows(0)), (second, _rows(1))):
        if not unit_done(path):
            write_unit(rows, path)
    df = read_run(run)
    assert sorted(df["after_task"]) == [0, 0, 0, 1, 1, 1]
    assert not df.duplicated(subset=["after_task", "eval_task"]).any()


# --------------------------------------------------------------------------------------------
# security: nothing user-supplied is unpickled, no credentials are written


_UNPICKLING = re.compile(  # matched on code with spaces, strings and comments removed
    r"torch\.load\(|pickle\.loads?\(|Unpickler\b|cloudpickle\.loads?\(|dill\.loads?\(|joblib\.load\(|"
    r"allow_pickle=True|yaml\.load\(|yaml\.unsafe_load|torch\.jit\.load\(|pd\.read_pickle\(")
# Explicitly allowed, each with its reason. CIFAR-100's official files *are* pickles; they are read
# by an Unpickler whose find_class admits only numpy array reconstruction (a tampered file cannot
# run code: test_data_registry.test_cifar100_refuses_pickles_that_run_code).
_ALLOWED = {("pipeline/data/loaders/cifar.py", "class _CifarUnpickler(pickle.Unpickler):"),
            ("pipeline/data/loaders/cifar.py", "return _CifarUnpickler(f, encoding=\"latin1\").load()")}


def _code_lines(path: Path) -> dict[int, str]:
    """Each line's code with string literals and comments blanked (docstrings may name calls)."""
    import io
    import tokenize

    lines: dict[int, list[str]] = {}
    with open(path, "rb") as fh:
        for tok in tokenize.tokenize(fh.readline):
            if tok.type in (tokenize.STRING, tokenize.COMMENT, tokenize.ENCODING) or not tok.string.strip():
                continue
            if sys.version_info >= (3, 12) and tok.type in (tokenize.FSTRING_START, tokenize.FSTRING_MIDDLE,
                                                            tokenize.FSTRING_END):
                continue
            lines.setdefault(tok.start[0], []).append(tok.string)
    return {no: "".join(parts) for no, parts in lines.items()}


def test_no_code_path_unpickles_files():
    hits = []
    for folder in ("pipeline", "jobs", "bench"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            source = path.read_text().splitlines()
            for no, code in _code_lines(path).items():
                line = source[no - 1].strip()
                if _UNPICKLING.search(code) and (rel, line) not in _ALLOWED:
                    hits.append(f"{rel}:{no}: {line}")
    assert not hits, "unpickling of files found (only safetensors may be read):\n" + "\n".join(hits)


SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYzEXAMPLEKEY"
KEY_ID = "AKIAIOSFODNN7EXAMPLE"


def test_no_credentials_in_saved_config_or_result_rows(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    cfg = load_config(None, [
        f"storage=s3://{KEY_ID}:{SECRET}@bucket/runs",
        f"data_root=s3://bucket/datasets?region=eu-west-1&secret_key={SECRET}&X-Amz-Security-Token=tok{SECRET}",
        f"model.pretrained=https://user:{SECRET}@models.example/vit.safetensors",
        "model.backbone=ViT-B-16",
        f"ray.address=ray://admin:{SECRET}@head:10001",
    ])
    saved = save_config(cfg, tmp_path / "config.yaml").read_text()
    assert SECRET not in saved and KEY_ID not in saved
    assert "s3://***@bucket/runs" in saved and "region=eu-west-1" in saved and "secret_key=***" in saved
    # the columns of a result row that come from the config (as the runner fills them)
    backbone = backbone_id(cfg.model.backbone, cfg.model.pretrained)
    rows = make_rows({"run": cfg.name, "scenario": cfg.scenarios[0].label, "dataset": cfg.scenarios[0].dataset,
                      "backbone": backbone, "method": "magmax", "finetuning": "seq", "seed": cfg.seed,
                      "config_hash": config_hash(cfg), "code_version": "v", "role": "final",
                      "metric": "top1"}, [{"value": 1.0}])
    write_unit(rows, tmp_path / "results" / "final.parquet")
    blob = (tmp_path / "results" / "final.parquet").read_bytes()
    assert SECRET.encode() not in blob and KEY_ID.encode() not in blob
    # a unit's error, as progress.json, failures.json and the log get it, may quote a storage path
    from pipeline.orchestration.scenario_results import short_error

    line = short_error(RuntimeError(f"task failed\nOSError: When reading s3://{KEY_ID}:{SECRET}@bucket/runs/x: denied"))
    assert SECRET not in line and KEY_ID not in line and "s3://***@bucket/runs/x" in line
    assert backbone == "ViT-B-16/https://***@models.example/vit.safetensors"


def test_summary_json_is_rewritten_only_when_it_changes(tmp_path, monkeypatch):
    # a finished run (one seed or several) on read-only storage reruns: the same summary, its
    # wall time aside, is not written again; a write that fails after nothing new was computed
    # is said, not raised
    import json

    from pipeline import storage
    from pipeline.orchestration.runner import _write_summary

    said = []
    _write_summary(str(tmp_path), {"magmax": 0.5, "wall_seconds": 10.0}, said.append, finished=False)
    path = tmp_path / "summary.json"
    stamp = path.stat().st_mtime_ns

    def refuse(p, *_a, **_k):
        raise PermissionError(f"read-only: {p}")

    monkeypatch.setattr(storage, "write_text", refuse)
    _write_summary(str(tmp_path), {"magmax": 0.5, "wall_seconds": 3.0}, said.append, finished=True)
    assert path.stat().st_mtime_ns == stamp and not said
    _write_summary(str(tmp_path), {"magmax": 0.6, "wall_seconds": 3.0}, said.append, finished=True)
    assert said and "not rewritten" in said[0]
    with pytest.raises(PermissionError):
        _write_summary(str(tmp_path), {"magmax": 0.6, "wall_seconds": 3.0}, said.append, finished=False)
    assert json.loads(path.read_text())["magmax"] == 0.5
