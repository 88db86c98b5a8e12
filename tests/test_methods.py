"""The method table: one record per method, read by config, plan, runner, sweep and report."""

import json

import pandas as pd
import pytest
import torch

from pipeline import methods
from pipeline.config import ConfigError, load_config
from pipeline.methods import MergeContext, register_method, unregister_method


@pytest.fixture
def toy():
    def halves(tvs, ctx):  # half the sum: a merge whose answer is checked by hand below
        return {k: sum(tv[k] for tv in tvs) / 2 for k in tvs[0]}

    register_method("toy_half", halves, display="Toy half", finetuning="seq", lam=0.8)
    yield "toy_half"
    unregister_method("toy_half")


def test_a_registered_merge_is_a_config_method_and_sweepable(toy):
    cfg = load_config("configs/demo.yaml", ["methods=[zero_shot,magmax,toy_half]", "merge.sweep_methods=[toy_half]"])
    assert "toy_half" in cfg.methods and cfg.merge.sweep_methods == ("toy_half",)
    m = methods.get("toy_half")
    assert m.kind == "merge" and m.finetuning == "seq" and m.default_lambda(cfg.merge) == 0.8
    tvs = [{"w": torch.tensor([1.0, -2.0])}, {"w": torch.tensor([3.0, 4.0])}]
    assert torch.equal(m.merge(tvs, MergeContext(cfg.merge))["w"], torch.tensor([2.0, 1.0]))
    assert methods.modes_of(cfg.methods) == {"seq"}
    assert methods.display_name("toy_half") == "Toy half"


def test_unknown_or_removed_methods_are_refused(toy):
    unregister_method("toy_half")
    with pytest.raises(ConfigError, match=r"methods\[1\]: unknown method 'toy_half'"):
        load_config("configs/demo.yaml", ["methods=[zero_shot,toy_half]"])
    with pytest.raises(ConfigError, match=r"merge.sweep_methods\[0\]: 'seq_ft' is not a merge with a λ"):
        load_config("configs/demo.yaml", ["merge.sweep_methods=[seq_ft]"])
    with pytest.raises(ValueError, match="built-in"):
        unregister_method("magmax")
    with pytest.raises(ValueError, match="already registered"):
        register_method("ties", lambda tvs, ctx: tvs[0])
    with pytest.raises(ValueError, match="finetuning 'sideways'"):
        register_method("toy_bad", lambda tvs, ctx: tvs[0], finetuning="sideways")


def test_the_default_lambda_is_the_configs():
    cfg = load_config("configs/demo.yaml", ["merge.magmax_lambda=0.3", "merge.ties_lambda=0.7"])
    lams = methods.default_lambdas(cfg.merge)
    assert lams["magmax"] == 0.3 and lams["ties"] == 0.7 and lams["avg"] == 1.0 and lams["maxabs"] == 0.5
    # Table 4 and 6's variants carry the paper's name and the same config key
    assert methods.get("ties_seq").row_name == "ties" and methods.get("ties_seq").default_lambda(cfg.merge) == 0.7
    assert methods.get("magmax_first").default_lambda(cfg.merge) == 0.3


def test_evaluation_count_by_hand():
    demo = ["zero_shot", "joint", "seq_ft", "lwf", "ewc", "randmix", "maxabs", "avg", "ties", "magmax"]
    # zero-shot 1, joint 1, matrices after each of 5 tasks: LwF, EWC, Seq-FT, MaxAbs, Avg, MagMax (6 x 5),
    # one headline trial per merge: RandMix, MaxAbs, Avg, TIES, MagMax (5)
    assert methods.evaluations(demo, 5, None) == 1 + 1 + 30 + 5
    # Table 6's MagMax from θ_1 has its final trial only (no second MagMax matrix)
    assert methods.evaluations(["magmax_first"], 5, None) == 1 + 1
    assert methods.modes_of(demo) == {"joint", "seq", "lwf", "ewc", "ind"}
    assert methods.methods_of_mode("seq", demo + ["ties_seq"]) == ["seq_ft", "magmax", "ties_seq"]


def test_the_plan_counts_from_the_table(toy):
    from pipeline.orchestration.plan import evaluations_per_scenario

    base = load_config("configs/demo.yaml", ["methods=[zero_shot,magmax]", "merge.sweep_methods=[]"])
    more = load_config("configs/demo.yaml", ["methods=[zero_shot,magmax,toy_half]", "merge.sweep_methods=[toy_half]",
                                             "merge.sweep_lambdas=[0.5,1.0]"])
    s0, s1 = base.scenarios[0], more.scenarios[0]
    # the toy merge adds its headline trial and its two sweep trials, and no fine-tuning mode
    assert evaluations_per_scenario(more, s1) - evaluations_per_scenario(base, s0) == 1 + 2
    assert methods.modes_of(more.methods) == methods.modes_of(base.methods)


def test_summary_reads_each_methods_headline_variant():
    from pipeline.orchestration.scenario_results import summarize

    rows = [("magmax", "seq", 40.0), ("magmax", "first", 30.0), ("ties", "ind", 20.0), ("ties", "seq", 10.0),
            ("seq_ft", "seq", 5.0), ("toy_half", "seq", 7.0)]
    df = pd.DataFrame([{"role": "final", "metric": "accuracy", "method": m, "finetuning": f, "value": v}
                       for m, f, v in rows] + [{"role": "analysis", "metric": "chance", "method": "chance",
                                                "finetuning": "none", "value": 1.0}])
    out = summarize(df)
    assert out["magmax"] == 40.0 and out["ties"] == 20.0 and out["seq_ft"] == 5.0 and out["joint"] is None
    assert "toy_half" not in out  # not registered here: not a method's headline row
    # every variant under its config name (one the table does not know: row and fine-tuning)
    assert out["variants"] == {"magmax": 40.0, "magmax_first": 30.0, "ties": 20.0, "ties_seq": 10.0,
                               "seq_ft": 5.0, "toy_half_seq": 7.0}
    json.dumps(out)


@pytest.mark.slow
def test_a_registered_merge_and_the_newer_merges_run_end_to_end_over_two_seeds(tmp_path, demo_data_root,
                                                                               ray_session, toy, monkeypatch):
    """The toy merge is registered here and nowhere else: its rows, its λ sweep on Tune and its
    table row appear; TSV-M and OPCM run from the config on sequential fine-tunings; two seeds give
    a mean, a std and a paired test against MagMax."""
    from jobs import run_benchmark
    from pipeline.results import read_run

    monkeypatch.chdir(run_benchmark.ROOT)
    argv = ["--config", "configs/demo.yaml", "name=toy", f"storage={tmp_path / 'storage'}",
            f"data_root={demo_data_root}", "demo_data=false", "scenarios.0.tasks=2", "finetune.epochs=1",
            "finetune.batch_size=32", "max_eval_per_class=10", "seeds=[5,6]",
            "methods=[zero_shot,magmax,toy_half,tsv_seq,opcm_seq]",
            "merge.sweep_methods=[toy_half]", "merge.sweep_lambdas=[0.4,0.8]",
            # the method table's reach is tested, not Train's worker group: the loop runs in its
            # driving task (the λ sweep still runs on Tune)
            "ray.num_workers=0"]
    assert run_benchmark.main(argv) == 0
    run_dir = tmp_path / "storage" / "toy"
    assert (run_dir / "seed-5" / "summary.json").is_file() and (run_dir / "seed-6" / "summary.json").is_file()
    df = read_run(run_dir)
    assert set(df.seed) == {5, 6}
    for seed, d in df.groupby("seed"):
        final = d[d.role == "final"].set_index("method")
        assert final.loc["toy_half", "lam"] == 0.8 and final.loc["toy_half", "finetuning"] == "seq"
        assert final.loc["tsv", "finetuning"] == "seq" and final.loc["opcm", "finetuning"] == "seq"
        sweep = d[(d.role == "sweep") & (d.method == "toy_half")]
        assert sorted(sweep.lam) == [0.4, 0.8]
        # the headline trial and the sweep's λ = 0.8 trial evaluate the same model
        assert sweep[sweep.lam == 0.8].value.iloc[0] == pytest.approx(final.loc["toy_half", "value"])
        # OPCM, a continual merge, is evaluated after every task (its Figure 4 matrix)
        opcm = d[(d.role == "matrix") & (d.method == "opcm") & (d.eval_task == -1)]
        assert sorted(opcm.after_task) == [0, 1]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["seeds"] == [5, 6]
    for key in ("magmax", "toy_half", "tsv", "opcm"):
        assert key in summary["mean"] and key in summary["std"], key
    assert set(summary["vs_magmax"]) >= {"toy_half", "tsv", "opcm"}
    assert set(summary["variants"]["vs_magmax"]) == {"zero_shot", "toy_half", "tsv_seq", "opcm_seq"}
    table = (run_dir / "report" / "table.md").read_text()
    assert "Toy half" in table and "TSV-M" in table and "OPCM" in table and "±" in table
    seeds = (run_dir / "report" / "seeds.md").read_text()  # each variant's paired test against MagMax
    assert "| Toy half |" in seeds and "| OPCM |" in seeds and "(p " in seeds


@pytest.mark.parametrize("plus, paper", [("table1_plus", "table1"), ("table2_plus", "table2")])
def test_beyond_configs_fine_tune_nothing_the_papers_do_not(tmp_path, plus, paper):
    from pipeline.orchestration.plan import build_plan, evaluations_per_scenario
    from pipeline.orchestration.runner import resolve_paths

    def units(name, folder):
        cfg = resolve_paths(load_config(f"configs/{folder}/{name}.yaml", [f"storage={tmp_path}"]))
        return cfg, {(u.unit.key(cfg), u.unit.identity) for u in build_plan(cfg).units}

    cfg, mine = units(plus, "beyond")
    _, theirs = units(paper, "paper")
    assert mine <= theirs
    assert set(cfg.methods) >= set(methods.BEYOND)  # every newer method, on both fine-tunings
    # each newer merge adds its headline trial and its sweep; the continual ones a matrix too
    assert all(evaluations_per_scenario(cfg, s) > len(methods.BEYOND) * len(cfg.merge.sweep_lambdas)
               for s in cfg.scenarios)


def test_paired_difference_by_hand():
    from pipeline.metrics import paired_difference

    # d = [2, 3, 1]: mean 2, sd 1, t = 2 / (1 / sqrt 3) = sqrt 12 on 2 degrees of freedom, where the
    # two-sided p-value is 1 - t / sqrt(2 + t^2) = 1 - sqrt(12 / 14)
    diff, p = paired_difference([3.0, 5.0, 4.0], [1.0, 2.0, 3.0])
    assert diff == pytest.approx(2.0) and p == pytest.approx(1 - (12 / 14) ** 0.5, rel=1e-9)
    assert paired_difference([1.0, 2.0], [0.0, 1.0]) == (1.0, None)  # constant difference: no t
    assert paired_difference([1.0], [0.0]) == (1.0, None)
    with pytest.raises(ValueError, match="equal-length"):
        paired_difference([1.0, 2.0], [1.0])


def test_seed_summary_means_stds_and_tests_against_magmax():
    from pipeline.orchestration.runner import seed_summary

    per_seed = {5: {"magmax": 40.0, "ties": 37.0, "joint": None, "chance": 1.0, "failures": [], "wall_seconds": 9.0},
                6: {"magmax": 42.0, "ties": 38.0, "joint": None, "chance": 1.0, "failures": [], "wall_seconds": 8.0},
                7: {"magmax": 44.0, "ties": 42.0, "joint": None, "chance": 1.0, "failures": [], "wall_seconds": 7.0}}
    out = seed_summary(per_seed)
    assert out["seeds"] == [5, 6, 7] and "joint" not in out["mean"] and "wall_seconds" not in out["mean"]
    assert out["mean"]["magmax"] == 42.0 and out["std"]["magmax"] == 2.0
    assert out["mean"]["ties"] == 39.0 and out["std"]["ties"] == pytest.approx(2.65, abs=0.01)
    # ties - magmax = [-3, -4, -2]: mean -3, sd 1 -> |t| = 3 sqrt 3 = sqrt 27 on 2 df: p = 1 - sqrt(27 / 29)
    assert out["vs_magmax"]["ties"]["difference"] == -3.0
    assert out["vs_magmax"]["ties"]["p_value"] == pytest.approx(round(1 - (27 / 29) ** 0.5, 4))
    assert "chance" not in out["vs_magmax"] and set(out["per_seed"]) == {"5", "6", "7"}
    # each variant apart (ties_seq beside ties), by the same rule
    for s, (ind, seq) in zip((5, 6, 7), ((37.0, 41.0), (38.0, 41.0), (42.0, 44.0))):
        per_seed[s]["variants"] = {"magmax": per_seed[s]["magmax"], "ties": ind, "ties_seq": seq}
    out = seed_summary(per_seed)
    assert out["variants"]["vs_magmax"]["ties"] == out["vs_magmax"]["ties"]
    # ties_seq - magmax = [1, -1, 0]: mean 0, sd 1 -> t = 0, p = 1
    assert out["variants"]["vs_magmax"]["ties_seq"] == {"difference": 0.0, "p_value": 1.0}
    assert out["variants"]["mean"]["ties_seq"] == pytest.approx(42.0)


def test_seeds_are_checked():
    cfg = load_config("configs/demo.yaml", ["seeds=[5,6,7]"])
    assert cfg.seeds == (5, 6, 7)
    with pytest.raises(ConfigError, match=r"seeds: each seed once"):
        load_config("configs/demo.yaml", ["seeds=[5,5]"])


def test_lines_after_any_merge_by_hand():
    cfg = load_config("configs/demo.yaml", ["merge.post=lines", "merge.lines_beta=0.5"])
    tau = {"transformer.resblocks.0.w": torch.ones(2), "transformer.resblocks.1.w": torch.ones(2),
           "conv1.weight": torch.ones(2)}
    # one task vector merged into itself: alpha = (|Σ τ|₁ / |τ|₁) / T = 1; block l of L = 2 gets
    # alpha + beta * l / (L - 1): 1 and 1.5; outside the blocks, alpha
    out = methods.post_process(tau, [tau], cfg.merge)
    assert out["transformer.resblocks.0.w"].tolist() == [1.0, 1.0]
    assert out["transformer.resblocks.1.w"].tolist() == [1.5, 1.5] and out["conv1.weight"].tolist() == [1.0, 1.0]
    # two task vectors averaged: alpha = (|τ1 + τ2|₁ / |avg|₁) / 2 = 1 again
    avg = methods.post_process({k: v.clone() for k, v in tau.items()}, [tau, tau], cfg.merge)
    assert avg["transformer.resblocks.1.w"].tolist() == [1.5, 1.5]
    # the LiNeS-scaled vector is applied as it is
    assert methods.get("magmax").default_lambda(cfg.merge) == 1.0 and methods.get("ties").default_lambda(cfg.merge) == 1.0
    assert methods.post_process(tau, [tau], load_config("configs/demo.yaml").merge) is tau
    with pytest.raises(ConfigError, match=r"merge.post: 'linez'"):
        load_config("configs/demo.yaml", ["merge.post=linez"])


def _final(method, finetuning, scenario, value, seed=5, backbone="ViT-B-16/openai", lam=1.0):
    return {"run": "r", "scenario": scenario, "dataset": scenario.split("/")[0], "backbone": backbone, "seed": seed,
            "method": method, "finetuning": finetuning, "lam": lam, "after_task": 4, "eval_task": -1, "role": "final",
            "metric": "accuracy", "value": value, "config_hash": "h", "code_version": "v"}


def test_the_beyond_table_sets_each_newer_merge_on_both_fine_tunings_beside_the_papers_magmax():
    from pipeline import paper
    from pipeline.report.tables import beyond_table

    rows = []
    for seed, shift in ((5, 0.0), (6, 2.0)):
        rows += [_final("tsv", "ind", "cifar100/5", 60.0 + shift, seed), _final("tsv", "seq", "cifar100/5", 70.0 + shift, seed),
                 _final("magmax", "seq", "cifar100/5", 75.0 + shift, seed, lam=0.5),
                 _final("ties", "ind", "cifar100/5", 65.0, seed, lam=0.55),
                 _final("seq_ft", "seq", "cifar100/5", 50.0, seed)]  # not in the table
    t = beyond_table(pd.DataFrame(rows))
    assert list(t.index) == ["TIES", "MagMax", "TSV-M (ind)", "TSV-M (seq)", "MagMax (paper)"]
    assert t.loc["TSV-M (seq)", "cifar100/5"] == 71.0 and t.loc["TSV-M (ind)", "cifar100/5"] == 61.0
    assert t.attrs["std"][("TSV-M (seq)", "cifar100/5")] == pytest.approx(2 ** 0.5)
    assert t.loc["MagMax (paper)", "cifar100/5"] == paper.lookup("table1", "magmax", "seq", "cifar100",
                                                                 "class_incremental", 5)
    assert beyond_table(pd.DataFrame(rows[2:5])).empty  # no newer merge: no table


def test_the_report_draws_each_continual_merge_matrix_and_the_beyond_table(tmp_path):
    from pipeline.report import write_report

    rows = []
    for ft in ("ind", "seq"):
        for r in range(2):
            for c in range(2):
                rows.append({**_final("opcm", ft, "demo_shapes/2", 40.0 + r + c), "after_task": r, "eval_task": c,
                             "role": "matrix", "backbone": "tiny"})
        rows.append({**_final("opcm", ft, "demo_shapes/2", 41.0), "after_task": 1, "backbone": "tiny"})
    paths = write_report(pd.DataFrame(rows), tmp_path, suffixes=(".png",))
    assert paths["continual_matrices"].is_file()
    beyond = paths["beyond_md"].read_text()
    assert "OPCM (ind)" in beyond and "OPCM (seq)" in beyond and "paper" not in beyond  # not the paper's backbone
    assert "Beyond the paper" in paths["index"].read_text()
