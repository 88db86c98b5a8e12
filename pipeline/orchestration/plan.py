"""The plan of a benchmark: which fine-tuning units it needs, which are cached, what is left.

A config expands into units (sequential, LwF and EWC chains, independent tasks, Joint) per
scenario; units that determine the same checkpoints (same content address and tasks) appear
once however many scenarios or tables ask for them. ``--plan`` prints this without starting Ray
or decoding an image, with an estimate of the GPU-hours left; it lists each dataset's files to
fingerprint it (checkpoints are keyed by content), and where a dataset is not there it says the
cache state is unknown. The estimate's throughputs are
assumptions (``ASSUMED_THROUGHPUT``, overridable in the config), not measurements.

Each Train run also pays a fixed start-up (``STARTUP_S``): the plan counts it per run, and packs
a scenario's small independent tasks into shared runs (``ray.pack_gpu_s``) so that it stays a
small share of the GPU-hours.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from pipeline.storage import CheckpointStore, join
from pipeline.storage import name as storage_name
from pipeline import methods as method_table
from pipeline.analysis import PRUNE_KEEP
from pipeline.config import BenchmarkConfig, ScenarioConfig, scenario_methods
from pipeline.data.records import RECORDS
from pipeline.results import unit_done
from pipeline.units import ChainUnit, data_determinant, task_epochs

# Train/test sizes of the built-in datasets (their records: published sizes, ImageNet-R our
# recorded 80/20 split), so a plan needs no data on the machine that prints it.
DATASET_SIZES: Mapping[str, tuple[int, int]] = MappingProxyType({n: r.sizes for n, r in RECORDS.items()})

# Images per second on one modern data-centre GPU with bf16 autocast (train, eval). Derived from
# forward FLOPs per image (ViT-B/16 17.6 G, ViT-L/14 81 G) at ~40 % utilisation of an A100, not
# measured by this project: set ``ray.train_images_per_gpu_s`` / ``ray.eval_images_per_gpu_s``
# from your own runs (bench/finetune.py prints images/s).
ASSUMED_THROUGHPUT: dict[str, tuple[float, float]] = {
    "ViT-B-32": (3_000.0, 9_000.0), "ViT-B-16": (1_000.0, 3_000.0), "ViT-L-14": (220.0, 650.0),
}


# Fixed seconds of one Train run besides its training steps: the controller and worker group
# started (Ray actors, torch imported, the process group set up), the backbone's weights loaded,
# the scenario built in the worker (data index, zero-shot head), the run closed. Paid once per
# run whatever its size, on every GPU of its worker group; set ``ray.unit_startup_s`` from your
# own runs. (seconds, where the figure comes from)
STARTUP_S: dict[str, tuple[float, str]] = {
    # bench/finetune.py (fixed cost of a one-worker Train run over the bare loop, which builds
    # its scenario beforehand) on this project's 2-CPU VM: 23.1 s, and 28.6 s on a rerun (README)
    "tiny": (28.6, "measured, tiny CLIP on 2 CPUs (bench/finetune.py; 23.1-28.6 s)"),
    # not measured (no GPU in the sessions so far): the tiny figure, whose Python start-up and
    # scenario build a faster node shortens, plus loading ~0.6 GB of weights (ViT-B) or ~1.7 GB
    # (ViT-L/14) and moving them to the GPU with a CUDA context
    "ViT-B-32": (40.0, "an estimate, not measured"),
    "ViT-B-16": (45.0, "an estimate, not measured"),
    "ViT-L-14": (70.0, "an estimate, not measured"),
}


def startup(cfg: BenchmarkConfig) -> tuple[float, str]:
    """Fixed seconds per Train run and where the figure comes from."""
    if cfg.ray.unit_startup_s > 0:
        return cfg.ray.unit_startup_s, "ray.unit_startup_s"
    backbone = cfg.model.backbone
    # a local-dir backbone is the committed tiny CLIP (or a model of its kind): its figure is the one measured
    return STARTUP_S["tiny" if backbone.startswith("local-dir:") else backbone if backbone in STARTUP_S
                     else "ViT-B-16"]


def run_gpus(cfg: BenchmarkConfig) -> float:
    """GPUs one Train run holds (in-process mode, num_workers 0, and CPU runs count as one)."""
    gpus = cfg.ray.gpus_per_worker if cfg.ray.gpus_per_worker > 0 else 1.0
    return max(1, cfg.ray.num_workers) * gpus


def throughput(cfg: BenchmarkConfig) -> tuple[float, float]:
    """Train and evaluation images per second per GPU: the config's, else the backbone's assumed."""
    r = cfg.ray
    train, ev = ASSUMED_THROUGHPUT.get(cfg.model.backbone, ASSUMED_THROUGHPUT["ViT-B-16"])
    return (r.train_images_per_gpu_s or train, r.eval_images_per_gpu_s or ev)


def num_tasks(scenario: ScenarioConfig) -> int:
    if scenario.kind == "domain_incremental":
        rec = RECORDS.get(scenario.dataset)
        return min(scenario.tasks, rec.num_domains) if rec is not None and rec.domains else scenario.tasks
    return scenario.tasks


def train_images(cfg: BenchmarkConfig, scenario: ScenarioConfig, tasks: list[int], joint: bool = False,
                 epochs: int | None = None) -> int | None:
    """Training images that ``tasks`` read over their epochs (or ``epochs`` passes each); None
    for a dataset of unknown size.

    Tasks of one dataset are taken as equal shares of it; a multi-dataset task is its dataset.
    """
    def passes(task: int) -> int:
        return epochs or task_epochs(cfg, scenario, None if joint else task)

    if scenario.kind == "multi_dataset":
        sizes = [DATASET_SIZES.get(scenario.datasets[t]) for t in tasks]
        if any(s is None for s in sizes):
            return None
        return int(sum(s[0] * passes(t) for s, t in zip(sizes, tasks)))  # type: ignore[index]
    size = DATASET_SIZES.get(scenario.dataset)
    if size is None:
        return None
    share = 1.0 if joint else len(tasks) / num_tasks(scenario)
    return int(size[0] * share * (epochs or task_epochs(cfg, scenario, None)))


def test_images(scenario: ScenarioConfig) -> int | None:
    sizes = [DATASET_SIZES.get(d) for d in scenario.members]
    return None if any(s is None for s in sizes) else sum(s[1] for s in sizes)  # type: ignore[index]


@dataclass
class PlannedUnit:
    unit: ChainUnit
    folder: str                       # content-addressed checkpoint folder
    cached: list[int]                 # outputs already in the folder
    scenarios: list[str] = field(default_factory=list)   # every scenario label that uses it
    # how the folder's key names the data (units.data_determinant): "content" (fingerprints),
    # "path" (data_root URI: the real key), "unknown" (data not here: keyed by path, cache state unknown)
    data: str = "content"

    @property
    def done(self) -> bool:
        return len(self.cached) == len(self.unit.outputs)

    def images_left(self, cfg: BenchmarkConfig) -> int | None:
        """Training images still to process (epochs included), from published dataset sizes."""
        scenario = self.unit.scenario
        if self.unit.mode == "joint":
            return 0 if self.done else train_images(cfg, scenario, list(self.unit.tasks), joint=True)
        left = [t for t in self.unit.outputs if t not in self.cached]
        images = train_images(cfg, scenario, left)
        if images is None or self.unit.mode != "ewc":
            return images
        # EWC's Fisher pass after each task: one more epoch's worth of images
        return images + (train_images(cfg, scenario, left, epochs=1) or 0)


@dataclass
class Plan:
    cfg: BenchmarkConfig
    units: list[PlannedUnit]
    requested: int                    # units before sharing (one list per scenario)
    scenarios_done: dict[str, bool]   # scenario label -> its results exist

    @property
    def pending(self) -> list[PlannedUnit]:
        return [u for u in self.units if not u.done]

    def throughput(self) -> tuple[float, float]:
        return throughput(self.cfg)

    def fixed_hours_left(self) -> float:
        """GPU-hours of the pending units' Train runs that go to start-up, not to training."""
        return len(self.pending) * startup(self.cfg)[0] * run_gpus(self.cfg) / 3600

    def gpu_hours_left(self) -> tuple[float, float, list[str]]:
        """(fine-tuning, evaluation) GPU-hours left, and the datasets the estimate lacks sizes for."""
        train_rate, eval_rate = self.throughput()
        unknown: set[str] = set()
        train_total = 0
        for u in self.pending:
            n = u.images_left(self.cfg)
            if n is None:
                unknown.update(d for d in u.unit.scenario.members if d not in DATASET_SIZES)
            else:
                train_total += n
        eval_images = 0
        for s in self.cfg.scenarios:
            if self.scenarios_done.get(s.label):
                continue
            n = test_images(s)
            if n is None:
                unknown.update(d for d in s.members if d not in DATASET_SIZES)
                continue
            eval_images += n * evaluations_per_scenario(self.cfg, s)
        return train_total / train_rate / 3600, eval_images / eval_rate / 3600, sorted(unknown)


def evaluations_per_scenario(cfg: BenchmarkConfig, scenario: ScenarioConfig) -> int:
    """How many full test-set evaluations the runner makes for one scenario."""
    T = num_tasks(scenario)
    names = scenario_methods(cfg, scenario)
    methods = set(names)
    sweep = len(cfg.merge.sweep_methods) * len(cfg.merge.sweep_lambdas)
    figures = 0
    if scenario.analyses:
        modes = ("magmax" in methods) + ("maxabs" in methods)
        figures += 3 * len(PRUNE_KEEP) * ("pruning" in scenario.analyses)
        figures += modes * T * ("kth_magnitude" in scenario.analyses)
        figures += modes * (T + 1) * ("leave_one_out" in scenario.analyses)
    return method_table.evaluations(names, T, cfg.merge) + sweep + figures


def scenario_dir(run_dir: str, scenario: ScenarioConfig) -> str:
    return join(run_dir, "results", scenario.label.replace("/", "_"))


RESULT_PARTS = ("final", "matrix", "sweep", "analysis")


def scenario_done(run_dir: str, scenario: ScenarioConfig) -> bool:
    out = scenario_dir(run_dir, scenario)
    # a recorded failure keeps the scenario open: a rerun retries the failed units
    return all(unit_done(join(out, f"{p}.parquet")) for p in RESULT_PARTS) and \
        not unit_done(join(out, FAILURES_FILE))


FAILURES_FILE = "failures.json"


def scenario_units(cfg: BenchmarkConfig, scenario: ScenarioConfig, num_tasks: int) -> list[ChainUnit]:
    """The fine-tuning units a scenario needs for the configured methods."""
    modes = method_table.modes_of(scenario_methods(cfg, scenario))
    tasks = tuple(range(num_tasks))
    units = []
    for mode in ("seq", "ind", "lwf", "ewc", "joint", "first"):
        if mode not in modes:
            continue
        if mode == "ind" and not cfg.ray.group_independent:
            units.extend(ChainUnit(scenario, "ind", group) for group in pack_independent(cfg, scenario, tasks))
        else:
            units.append(ChainUnit(scenario, mode, tasks))
    return units


def task_gpu_s(cfg: BenchmarkConfig, scenario: ScenarioConfig, task: int) -> float | None:
    """Estimated GPU-seconds of training one independent task (None: its dataset's size is unknown)."""
    images = train_images(cfg, scenario, [task])
    return None if images is None else images / throughput(cfg)[0]


def pack_independent(cfg: BenchmarkConfig, scenario: ScenarioConfig, tasks: tuple[int, ...]) -> list[tuple[int, ...]]:
    """The Train runs of a scenario's independent tasks: tasks estimated under ``ray.pack_gpu_s``
    are grouped, in task order, into runs of at most that much work, so each run's fixed start-up
    is paid once for many small tasks; a larger task (or one of unknown size) runs alone.

    Every task keeps its own checkpoint in the scenario's one independent folder (its key does not
    depend on the grouping), so sharing, resuming and retries work per task as before; only the
    number of Train runs changes. The grouping depends on the config alone, never on what is
    cached, so a rerun plans the same units. ``ray.pack_gpu_s: 0``: one run per task.
    """
    limit = cfg.ray.pack_gpu_s
    if limit <= 0:
        return [(t,) for t in tasks]
    groups: list[tuple[int, ...]] = []
    small: list[tuple[int, float]] = []   # consecutive small tasks since the last large one
    for t in tasks:
        sec = task_gpu_s(cfg, scenario, t)
        if sec is not None and sec < limit:
            small.append((t, sec))
            continue
        groups += _pack(small, limit)
        small = []
        groups.append((t,))
    groups += _pack(small, limit)
    # consecutive groups in task order: the runner lists a mode's checkpoints unit by unit
    return groups


def _pack(small: list[tuple[int, float]], limit: float) -> list[tuple[int, ...]]:
    """As few consecutive groups of at most ``limit`` seconds as there can be, then the least work
    in the largest of them (bisection on the cap), so the last of them ends as early as it can."""
    if not small:
        return []
    fewest = len(_fill(small, limit))
    low, high = max(sec for _, sec in small), limit
    for _ in range(40):
        mid = (low + high) / 2
        low, high = (low, mid) if len(_fill(small, mid)) <= fewest else (mid, high)
    return _fill(small, high)


def _fill(costs: list[tuple[int, float]], cap: float) -> list[tuple[int, ...]]:
    """Consecutive groups of ``(task, seconds)``, each closed before it would pass ``cap``."""
    groups: list[tuple[int, ...]] = []
    current: list[int] = []
    work = 0.0
    for t, sec in costs:
        if current and work + sec > cap:
            groups.append(tuple(current))
            current, work = [], 0.0
        current.append(t)
        work += sec
    if current:
        groups.append(tuple(current))
    return groups


def build_plan(cfg: BenchmarkConfig) -> Plan:
    """Expand ``cfg`` into shared units and look up what ``storage`` already holds."""
    ckpt_root = join(cfg.storage, "checkpoints")
    run_dir = join(cfg.storage, cfg.name)
    by_id: dict[tuple[str, tuple[str, tuple[int, ...]]], PlannedUnit] = {}
    requested = 0
    for scenario in cfg.scenarios:
        basis = data_determinant(cfg, scenario)[0]
        for unit in scenario_units(cfg, scenario, num_tasks(scenario)):
            requested += 1
            key = unit.key(cfg)
            planned = by_id.get((key, unit.identity))
            if planned is None:
                folder = join(ckpt_root, key)
                store = CheckpointStore(folder)
                # without the data the key is only a stand-in: what its folder holds says nothing
                cached = [] if basis == "unknown" else [t for t in unit.outputs if store.has(t)]
                planned = PlannedUnit(unit, folder, cached, data=basis)
                by_id[(key, unit.identity)] = planned
            planned.scenarios.append(scenario.label)
    done = {s.label: scenario_done(run_dir, s) for s in cfg.scenarios}
    return Plan(cfg, list(by_id.values()), requested, done)


def verify_cached(plan: Plan) -> int:
    """Check every cached checkpoint that a scenario still to run will read, byte for byte,
    against its digest (``build_plan`` looked at headers and sizes only). A damaged one is moved
    aside and said in one line, and its unit becomes pending: this run fine-tunes it again.
    Returns how many were damaged. Costs one read of each such file (sha256 at ~1.5 GB/s), and
    the runner's own reads of them in this process then skip the hash."""
    damaged = 0
    for u in plan.units:
        if all(plan.scenarios_done.get(label, False) for label in u.scenarios):
            continue  # nothing will read it in this run
        store = CheckpointStore(u.folder)
        intact = [t for t in u.cached if store.verify(t)]
        damaged += len(u.cached) - len(intact)
        u.cached = intact
    return damaged


def format_plan(plan: Plan) -> str:
    cfg = plan.cfg
    lines = [f"plan for run {cfg.name!r}: backbone {cfg.model.backbone} {cfg.model.pretrained}".rstrip(),
             f"storage {cfg.storage}", ""]
    header = f"{'unit':<40} {'tasks':>5} {'cached':>7} {'GPU-h left':>10}  folder"
    lines += [header, "-" * len(header)]
    train_rate, _ = plan.throughput()
    for u in plan.units:
        n = u.images_left(cfg)
        hours = "?" if n is None else f"{n / train_rate / 3600:.2f}"
        cached = "?" if u.data == "unknown" else str(len(u.cached))
        where = {"content": "", "path": "  (keyed by data_root's path)",
                 "unknown": "  (data not found: cache state unknown)"}[u.data]
        lines.append(f"{u.unit.label:<40} {len(u.unit.outputs):>5} "
                     f"{cached:>3}/{len(u.unit.outputs):<3} {hours:>10}  {storage_name(u.folder)}{where}")
    train_h, eval_h, unknown = plan.gpu_hours_left()
    fixed_h = plan.fixed_hours_left()
    pending = plan.pending
    lines += ["",
              f"units: {len(plan.units)} ({plan.requested} requested by scenario; "
              f"{plan.requested - len(plan.units)} shared), {len(plan.units) - len(pending)} cached, "
              f"{len(pending)} to fine-tune",
              f"scenarios with results: {sum(plan.scenarios_done.values())}/{len(plan.scenarios_done)}",
              f"estimated GPU-hours left: {train_h + fixed_h + eval_h:.2f} (fine-tuning {train_h:.2f}, "
              f"Train start-up {fixed_h:.2f}, evaluation {eval_h:.2f}) at an assumed {train_rate:.0f} train / "
              f"{plan.throughput()[1]:.0f} eval images/s per GPU",
              startup_line(plan.cfg, len(pending), fixed_h, train_h + fixed_h + eval_h)]
    if unknown:
        lines.append(f"(no size known for {', '.join(unknown)}: not in the estimate)")
    missing = sorted({d for u in plan.units if u.data == "unknown" for d in u.unit.scenario.members})
    if missing:
        lines.append(f"(cache state unknown for {sum(u.data == 'unknown' for u in plan.units)} units: "
                     f"{', '.join(missing)} not found (or not registered) under data_root {cfg.data_root} here, and checkpoints "
                     f"are keyed by their data's content; counted as still to fine-tune)")
    if any(u.data == "path" for u in plan.units):
        lines.append("(units keyed by data_root's path: their data is at a URI or of a kind without a "
                     "content fingerprint; the same data elsewhere is trained again)")
    return "\n".join(lines)


def startup_line(cfg: BenchmarkConfig, runs: int, fixed_h: float, total_h: float) -> str:
    """How much of the estimate is fixed start-up, and from which figure."""
    sec, source = startup(cfg)
    share = 100 * fixed_h / total_h if total_h > 0 else 0.0
    pack = (f"independent tasks under {cfg.ray.pack_gpu_s:g} GPU-s packed into shared runs (ray.pack_gpu_s)"
            if cfg.ray.pack_gpu_s > 0 and not cfg.ray.group_independent else
            "independent tasks in one run per scenario (ray.group_independent)" if cfg.ray.group_independent
            else "one run per independent task (ray.pack_gpu_s 0)")
    return (f"fixed start-up: {runs} Train runs x {sec:g} s ({source}) x {run_gpus(cfg):g} GPU = "
            f"{fixed_h:.2f} GPU-h, {share:.1f}% of the GPU-hours left; {pack}")


def suite_hours(plans: list[Plan]) -> tuple[int, float, float, float]:
    """(Train runs, fine-tuning, start-up, evaluation GPU-hours) left for several configs run
    together, each shared unit once."""
    seen: dict[tuple[str, tuple[str, tuple[int, ...]]], tuple[Plan, PlannedUnit]] = {}
    for plan in plans:
        for u in plan.units:
            seen.setdefault((u.folder, u.unit.identity), (plan, u))
    train_h = fixed_h = 0.0
    runs = 0
    for plan, u in seen.values():
        if u.done:
            continue
        n = u.images_left(plan.cfg)
        if n is not None:
            train_h += n / plan.throughput()[0] / 3600
        runs += 1
        fixed_h += startup(plan.cfg)[0] * run_gpus(plan.cfg) / 3600
    return runs, train_h, fixed_h, sum(p.gpu_hours_left()[1] for p in plans)


def suite_summary(plans: list[Plan]) -> str:
    """Units and GPU-hours of several configs run together (a suite such as configs/paper/all.yaml).

    A unit several configs need (same content address and tasks) is fine-tuned once: it is
    counted once here, and its GPU-hours once.
    """
    unique = len({(u.folder, u.unit.identity) for p in plans for u in p.units})
    requested = sum(p.requested for p in plans)
    per_config = sum(len(p.units) for p in plans)
    runs, train_h, fixed_h, eval_h = suite_hours(plans)
    total_h = train_h + fixed_h + eval_h
    share = 100 * fixed_h / total_h if total_h > 0 else 0.0
    return "\n".join([
        f"suite of {len(plans)} configs ({', '.join(p.cfg.name for p in plans)}):",
        f"units: {unique} unique ({per_config} over the configs' own plans, {requested} requested by "
        f"scenario; {requested - unique} shared)",
        f"estimated GPU-hours left for the suite: {total_h:.2f} (fine-tuning {train_h:.2f}, "
        f"Train start-up {fixed_h:.2f} for {runs} runs = {share:.1f}%, evaluation {eval_h:.2f})",
    ])
