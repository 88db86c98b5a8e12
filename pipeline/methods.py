"""The method table: one record per method a benchmark can run.

Everything that knows about methods reads it: config validation (which names exist, which have a
λ to sweep), the plan (which fine-tunings a scenario needs, how many evaluations it makes), the
runner (what to merge, at which λ, under which result-row name), the λ sweep and the report
(display names, order, Figure 9's marks). A new merge is one function and one
:func:`register_method` call::

    from pipeline.methods import register_method

    def my_merge(tvs, ctx):             # tvs: the T task vectors of the fine-tuning it merges
        return {k: sum(tv[k] for tv in tvs) / len(tvs) for k in tvs[0]}

    register_method("my_merge", my_merge, display="My merge", finetuning="ind", lam=1.0)

after which ``methods: [..., my_merge]`` in a config runs it, writes its rows, sweeps its λ
(``merge.sweep_methods``) and shows it in the tables. The table is read in the driver; register
before loading the config.

Kinds of method:

* ``model``: the fine-tuned model itself after each task (Seq-FT, LwF, EWC, Joint, zero-shot);
* ``merge``: ``merge(tvs, ctx)`` over the T task vectors of one fine-tuning mode, applied at λ;
* ``running``: folded after each task, one task vector at a time (``fold(ctx)`` makes the running
  object, with ``.add(tv)`` and ``.value()``): MagMax in a restartable actor that persists its
  state, the continual merges (OPCM, DOP) in the driver;
* ``units``: asks for a fine-tuning mode and produces no rows of its own (``ind_ft``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from pipeline import merging

TaskVector = dict[str, torch.Tensor]

KINDS = ("model", "merge", "running", "units")
# fine-tuning modes (pipeline.units.ChainUnit.mode) plus "none" for the pre-trained model
FINETUNINGS = ("none", "joint", "seq", "ind", "lwf", "ewc", "first")


@dataclass(frozen=True)
class MergeContext:
    """What a merge may read besides the task vectors: the run's ``merge`` config section, its
    seed, and TIES's trimming options for the configured scope (``merging.trim_options``)."""

    merge: Any
    seed: int = 0
    trim: Mapping[str, Any] = field(default_factory=dict)


MergeFn = Callable[[Sequence[Mapping[str, torch.Tensor]], MergeContext], TaskVector]


@dataclass(frozen=True)
class Method:
    """One method. ``lam`` is its default λ: a number, or the name of the ``merge`` config key
    that holds it (so the config, not this table, decides). ``row_name`` is the name its result
    rows carry (Tables 4 and 6 run a merge on another fine-tuning under the paper's name; the
    ``finetuning`` column tells them apart). ``matrix``: also evaluated after every task
    (Figure 4's accuracy matrix; for a merge, the merge of the first t+1 vectors)."""

    name: str
    display: str
    kind: str
    finetuning: str
    merge: MergeFn | None = None
    lam: float | str = 1.0
    sweeps: bool = False
    row_name: str = ""
    matrix: bool = False
    builtin: bool = False
    fold: Callable[[MergeContext], Any] | None = None
    actor: bool = False
    group: str = "paper"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"method {self.name!r}: kind {self.kind!r} is not one of {KINDS}")
        if self.finetuning not in FINETUNINGS:
            raise ValueError(f"method {self.name!r}: finetuning {self.finetuning!r} is not one of {FINETUNINGS}")
        if self.kind == "merge" and not callable(self.merge):
            raise ValueError(f"method {self.name!r}: a merge needs a merge(tvs, ctx) function")
        if self.kind == "running" and not callable(self.fold):
            raise ValueError(f"method {self.name!r}: a running merge needs a fold(ctx) factory")
        if not self.row_name:
            object.__setattr__(self, "row_name", self.name)

    def default_lambda(self, merge_cfg: Any) -> float:
        """The λ its headline result uses under ``merge_cfg`` (1 after LiNeS, which scales the
        merged vector itself: ``merge.post: lines``)."""
        if getattr(merge_cfg, "post", "") == "lines":
            return 1.0
        return float(getattr(merge_cfg, self.lam) if isinstance(self.lam, str) else self.lam)

    @property
    def merged(self) -> bool:
        """Whether it is a task vector applied at λ (evaluated through the λ trials)."""
        return self.kind in ("merge", "running")


_TABLE: dict[str, Method] = {}


def _add(method: Method, overwrite: bool = False) -> Method:
    if method.name in _TABLE and not overwrite:
        raise ValueError(f"method {method.name!r} is already registered; pass overwrite=True to replace it")
    _TABLE[method.name] = method
    return method


def register_method(name: str, merge: MergeFn, *, display: str | None = None, finetuning: str = "ind",
                    lam: float | str = 1.0, sweeps: bool = True, matrix: bool = False, row_name: str = "",
                    overwrite: bool = False) -> Method:
    """Make ``merge(tvs, ctx) -> task vector`` runnable as method ``name`` over the task vectors
    of ``finetuning`` ("ind": independent fine-tunings, "seq": sequential ones, ...)."""
    if not name.isidentifier():
        raise ValueError(f"method name {name!r} must be a plain identifier (it is a config value and a column value)")
    return _add(Method(name, display or name, "merge", finetuning, merge, lam, sweeps, row_name, matrix,
                       group="user"), overwrite)


def unregister_method(name: str) -> None:
    """Remove a method registered with :func:`register_method` (tests; the built-ins stay)."""
    if name in _TABLE and _TABLE[name].builtin:
        raise ValueError(f"{name!r} is a built-in method")
    _TABLE.pop(name, None)


def get(name: str) -> Method:
    try:
        return _TABLE[name]
    except KeyError:
        raise KeyError(f"unknown method {name!r}; known: {known()}") from None


def known() -> list[str]:
    return list(_TABLE)


def table() -> list[Method]:
    return list(_TABLE.values())


def sweepable() -> list[str]:
    return [m.name for m in _TABLE.values() if m.sweeps]


def modes_of(names: Sequence[str]) -> set[str]:
    """The fine-tuning modes ``names`` need (what the plan fine-tunes)."""
    return {_TABLE[n].finetuning for n in names if n in _TABLE} - {"none"}


def methods_of_mode(mode: str, names: Sequence[str]) -> list[str]:
    return [n for n in names if n in _TABLE and _TABLE[n].finetuning == mode]


def display_name(row_name: str) -> str:
    """The display name of a result row's method (rows carry ``row_name``)."""
    for m in _TABLE.values():
        if m.row_name == row_name and m.name == row_name:
            return m.display
    for m in _TABLE.values():
        if m.row_name == row_name:
            return m.display
    return row_name


def headline_finetuning(row_name: str) -> str | None:
    """Which fine-tuning a result-row name's headline (Table 1) variant merges: that of the method
    whose own name is the row name (``magmax`` is sequential; ``magmax/first`` is Table 6's)."""
    m = _TABLE.get(row_name)
    return m.finetuning if m is not None else None


def default_lambdas(merge_cfg: Any) -> dict[str, float]:
    """λ per result-row name of the headline variant (Figure 9 marks these)."""
    out = {}
    for m in _TABLE.values():
        if m.merged and m.name == m.row_name:
            out[m.row_name] = m.default_lambda(merge_cfg)
    return out


def post_process(tau: TaskVector, tvs: Sequence[Mapping[str, torch.Tensor]], merge_cfg: Any) -> TaskVector:
    """``merge.post`` applied to a merged vector of ``tvs``: LiNeS with the official multi-task
    alpha (``(||Σ τ_t||₁ / ||τ||₁) / T``) and ``merge.lines_beta``; unchanged without one."""
    if getattr(merge_cfg, "post", "") != "lines":
        return tau
    alpha = merging.lines_multitask_alpha(tvs, tau)
    return merging.lines(tau, alpha=alpha, beta=merge_cfg.lines_beta)


def evaluations(names: Sequence[str], num_tasks: int, merge_cfg: Any) -> int:
    """Full test-set evaluations the runner makes for ``names`` on a T-task scenario, before the
    sweep and the figures: zero-shot, one model per task for each matrix, one λ trial per merge."""
    chosen = [_TABLE[n] for n in names if n in _TABLE]
    matrices = sum(m.matrix for m in chosen)
    finals = sum(m.merged for m in chosen)
    joint = any(m.kind == "model" and m.finetuning == "joint" for m in chosen)
    return 1 + joint + matrices * num_tasks + finals


# --------------------------------------------------------------------------------------------
# the built-in methods: the paper's (Table 1 order), then Tables 4 and 6's variants

def _avg(tvs, ctx: MergeContext) -> TaskVector:
    return merging.average(tvs)


def _ties(tvs, ctx: MergeContext) -> TaskVector:
    return merging.ties(tvs, top_k=ctx.merge.ties_top_k, **ctx.trim)


def _randmix(tvs, ctx: MergeContext) -> TaskVector:
    return merging.random_mix(tvs, seed=ctx.seed)


def _task_arithmetic(tvs, ctx: MergeContext) -> TaskVector:
    return merging.task_arithmetic(tvs)


def _running_magmax(ctx: MergeContext) -> Any:
    return merging.RunningMagMax()


def _builtin(name: str, display: str, kind: str, finetuning: str, merge: MergeFn | None = None,
             lam: float | str = 1.0, *, sweeps: bool = False, row_name: str = "", matrix: bool = False,
             fold: Callable[[MergeContext], Any] | None = None, group: str = "paper") -> None:
    if kind == "running" and fold is None:
        fold = _running_magmax
    _add(Method(name, display, kind, finetuning, merge, lam, sweeps, row_name, matrix, builtin=True, fold=fold,
                actor=fold is _running_magmax, group=group))


_builtin("zero_shot", "Zero-shot", "model", "none")
_builtin("joint", "Joint", "model", "joint")
_builtin("lwf", "LwF", "model", "lwf", matrix=True)
_builtin("ewc", "EWC", "model", "ewc", matrix=True)
_builtin("seq_ft", "Seq-FT", "model", "seq", matrix=True)
_builtin("randmix", "RandMix", "merge", "ind", _randmix, "randmix_lambda", sweeps=True)
_builtin("maxabs", "MaxAbs", "running", "ind", None, "maxabs_lambda", sweeps=True, matrix=True)
_builtin("avg", "Avg", "merge", "ind", _avg, 1.0, sweeps=True, matrix=True)
_builtin("ties", "TIES", "merge", "ind", _ties, "ties_lambda", sweeps=True)
_builtin("magmax", "MagMax", "running", "seq", None, "magmax_lambda", sweeps=True, matrix=True)
_builtin("ind_ft", "Ind-FT", "units", "ind")
_builtin("task_arithmetic", "Task Arithmetic", "merge", "ind", _task_arithmetic, 1.0, sweeps=True)
_builtin("lwf_magmax", "LwF + MagMax", "running", "lwf", None, "magmax_lambda", sweeps=True, matrix=True)
_builtin("ewc_magmax", "EWC + MagMax", "running", "ewc", None, "magmax_lambda", sweeps=True, matrix=True)
# Table 4: the merges over sequential fine-tunings; Table 6: MagMax over chains whose task t
# starts from θ_1 (its final row only: a second MagMax matrix would make Figure 4 ambiguous)
_builtin("randmix_seq", "RandMix", "merge", "seq", _randmix, "randmix_lambda", sweeps=True, row_name="randmix")
_builtin("avg_seq", "Avg", "merge", "seq", _avg, 1.0, sweeps=True, row_name="avg")
_builtin("ties_seq", "TIES", "merge", "seq", _ties, "ties_lambda", sweeps=True, row_name="ties")
_builtin("magmax_first", "MagMax", "running", "first", None, "magmax_lambda", sweeps=True, row_name="magmax")


# --------------------------------------------------------------------------------------------
# beyond the paper: newer data-free merges and continual merges (pipeline/merging/), each on the
# independent fine-tunings (<name>) and on the sequential ones (<name>_seq, rows named <name>).
# Their λ is the scale on top of the merged vector: 1.0 where the method's own paper applies it
# as is (TSV-M, Iso-C/CTS, WUDI, OPCM, DOP), TA_LAMBDA for the sum-based ones (Breadcrumbs,
# DARE, consensus), whose papers pick it on validation data this protocol does not have; the
# λ sweep gives each method's whole curve.
TA_LAMBDA = 0.3


def _breadcrumbs(tvs, ctx: MergeContext) -> TaskVector:
    return merging.breadcrumbs(tvs)


def _dare(tvs, ctx: MergeContext) -> TaskVector:
    return merging.dare(tvs, p=0.9, seed=ctx.seed)


def _dare_ties(tvs, ctx: MergeContext) -> TaskVector:
    return merging.dare(tvs, p=0.9, seed=ctx.seed, base="ties",
                        ties_kwargs={"top_k": ctx.merge.ties_top_k, **ctx.trim})


def _consensus(tvs, ctx: MergeContext) -> TaskVector:
    return merging.consensus(tvs, k=2, lam_tall=0.4)


def _tsv(tvs, ctx: MergeContext) -> TaskVector:
    return merging.tsv_merge(tvs)


def _iso_c(tvs, ctx: MergeContext) -> TaskVector:
    return merging.iso_c(tvs)


def _iso_cts(tvs, ctx: MergeContext) -> TaskVector:
    return merging.iso_cts(tvs)


def _wudi(tvs, ctx: MergeContext) -> TaskVector:
    return merging.wudi(tvs, seed=ctx.seed)


def _opcm(ctx: MergeContext) -> Any:
    return merging.OPCM()


def _dop(ctx: MergeContext) -> Any:
    return merging.DOP(seed=ctx.seed)


for _name, _display, _fn, _lam in (("breadcrumbs", "Breadcrumbs", _breadcrumbs, TA_LAMBDA),
                                   ("dare", "DARE", _dare, TA_LAMBDA),
                                   ("dare_ties", "DARE-TIES", _dare_ties, "ties_lambda"),
                                   ("consensus", "Consensus", _consensus, TA_LAMBDA),
                                   ("tsv", "TSV-M", _tsv, 1.0),
                                   ("iso_c", "Iso-C", _iso_c, 1.0),
                                   ("iso_cts", "Iso-CTS", _iso_cts, 1.0),
                                   ("wudi", "WUDI", _wudi, 1.0)):
    _builtin(_name, _display, "merge", "ind", _fn, _lam, sweeps=True, group="beyond")
    _builtin(f"{_name}_seq", _display, "merge", "seq", _fn, _lam, sweeps=True, row_name=_name, group="beyond")
for _name, _display, _factory in (("opcm", "OPCM", _opcm), ("dop", "DOP", _dop)):
    _builtin(_name, _display, "running", "ind", lam=1.0, sweeps=True, matrix=True, fold=_factory, group="beyond")
    _builtin(f"{_name}_seq", _display, "running", "seq", lam=1.0, sweeps=True, matrix=True, fold=_factory,
             row_name=_name, group="beyond")

BEYOND: tuple[str, ...] = tuple(m.name for m in _TABLE.values() if m.group == "beyond")

# The paper's Table 1 rows, in its order (the report's default row order)
PAPER_ORDER: tuple[str, ...] = ("zero_shot", "joint", "lwf", "ewc", "seq_ft", "randmix", "maxabs", "avg",
                                "ties", "magmax")
# Upper and lower bounds the paper prints above the line and leaves out of the ranking
REFERENCES: tuple[str, ...] = ("zero_shot", "joint")


def summary_keys(present: Sequence[str] = ()) -> list[str]:
    """The demo summary's method keys: Table 1's rows, then any other headline row name in ``present``."""
    rest = [m.row_name for m in _TABLE.values() if m.name == m.row_name and m.kind != "units"
            and m.row_name not in PAPER_ORDER and m.row_name in present]
    return [*PAPER_ORDER, *rest]
