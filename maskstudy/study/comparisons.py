"""Tables that compare the trained models: spread over seeds, differences with Holm-corrected tests, subsets.

Inputs are what :func:`maskstudy.study.testsets.evaluate_model` returns per training run and the runs of
:func:`maskstudy.study.design.training_runs`; outputs are plain DataFrames that notebooks save and plot.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from ..evaluate.statistics import holm_adjust, paired_cluster_bootstrap, seed_difference, seed_spread

#: The name under which MFR2 appears beside the LFW scenarios.
MFR2 = "mfr2"


def accuracy_long(verification: pd.DataFrame, mfr2: pd.DataFrame | None) -> pd.DataFrame:
    """One row per (run, test): LFW scenarios from ``verification`` and MFR2 as test ``mfr2``; columns run,
    model, seed, kind, test, accuracy, auc."""
    parts = [verification.rename(columns={"scenario": "test", "accuracy_mean": "accuracy"})]
    if mfr2 is not None and len(mfr2):
        parts.append(mfr2.assign(test=MFR2).rename(columns={"accuracy_mean": "accuracy"}))
    keep = ["run", "model", "seed", "kind", "test", "accuracy", "auc"]
    return pd.concat([p[keep] for p in parts], ignore_index=True)


def seed_summary(long: pd.DataFrame, kinds: Sequence[str] = ("attention",)) -> pd.DataFrame:
    """Mean, std (ddof=1), min and max over seeds of each model's accuracy on each test (runs of ``kinds``)."""
    rows = []
    part = long[long["kind"].isin([kinds] if isinstance(kinds, str) else kinds)]
    for (model, test), group in part.groupby(["model", "test"], sort=False):
        spread = seed_spread(group.sort_values("seed")["accuracy"])
        rows.append({"model": model, "test": test, **{f"accuracy_{k}" if k != "seeds" else k: v
                                                         for k, v in spread.items()},
                     "auc_mean": float(group["auc"].mean())})
    return pd.DataFrame(rows)


def differences(long: pd.DataFrame, per_pair: Mapping[str, Mapping[str, dict]], comparisons: Sequence[tuple[str, str]],
                main_seed: int, n_boot: int = 2000, seed: int = 0, alpha: float = 0.05,
                kinds: Sequence[str] = ("attention",)) -> pd.DataFrame:
    """Each comparison ``(a, b)`` on each test: the difference of accuracies paired by training seed (mean, t
    interval over seeds, p) and, for the main seed, a paired bootstrap over identities (difference, interval, p).
    Both p-value columns are Holm-adjusted over the whole family (all comparisons x tests); ``separated`` means
    the Holm-adjusted seed test rejects at ``alpha`` (when there is one seed, the bootstrap test decides). Models
    are those of runs of ``kinds`` (trained over seeds)."""
    rows = []
    attention = long[long["kind"].isin(kinds)]
    for a, b in comparisons:
        for test in dict.fromkeys(attention["test"]):
            acc = attention[attention["test"] == test].pivot(index="seed", columns="model", values="accuracy")
            if a not in acc or b not in acc:
                continue
            both = acc[[a, b]].dropna()
            by_seed = seed_difference(both[a], both[b], alpha=alpha)
            run_a, run_b = _main_run(attention, a, main_seed), _main_run(attention, b, main_seed)
            first, second = per_pair[run_a][test], per_pair[run_b][test]
            boot = paired_cluster_bootstrap(first["correct"], second["correct"], first["clusters"], n=n_boot,
                                            seed=seed, alpha=alpha)
            rows.append({"comparison": f"{a} - {b}", "test": test, "seeds": by_seed["seeds"],
                         "diff_seed_mean": by_seed["diff"], "diff_seed_std": by_seed["std"],
                         "seed_ci_low": by_seed["low"], "seed_ci_high": by_seed["high"],
                         "p_seed": by_seed["p_value"], "diff_main_seed": boot["diff"], "boot_ci_low": boot["low"],
                         "boot_ci_high": boot["high"], "p_boot": boot["p_value"]})
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    for column in ("p_seed", "p_boot"):
        finite = table[column].notna()
        table[f"{column}_holm"] = np.nan
        if finite.any():
            table.loc[finite, f"{column}_holm"] = holm_adjust(table.loc[finite, column])
    decided_by = table["p_seed_holm"].where(table["p_seed_holm"].notna(), table["p_boot_holm"])
    table["separated"] = decided_by < alpha
    return table


def _main_run(attention: pd.DataFrame, model: str, main_seed: int) -> str:
    runs = attention[(attention["model"] == model) & (attention["seed"] == main_seed)]["run"]
    if runs.empty:
        raise KeyError(f"no run of {model!r} with the main seed {main_seed}")
    return str(runs.iloc[0])


def single_difference(per_pair: Mapping[str, Mapping[str, dict]], run_a: str, run_b: str, test: str,
                      n_boot: int = 2000, seed: int = 0, subset: np.ndarray | None = None) -> dict:
    """Paired identity-bootstrap difference of two single runs on one test (optionally a subset of its pairs)."""
    first, second = per_pair[run_a][test], per_pair[run_b][test]
    chosen = np.ones(len(first["correct"]), bool) if subset is None else np.asarray(subset, bool)
    boot = paired_cluster_bootstrap(first["correct"][chosen], second["correct"][chosen],
                                    np.asarray(first["clusters"])[chosen], n=n_boot, seed=seed)
    return {"comparison": f"{run_a} - {run_b}", "test": test, "pairs": int(chosen.sum()), "diff": boot["diff"],
            "ci_low": boot["low"], "ci_high": boot["high"], "p_value": boot["p_value"]}


def seed_table(long: pd.DataFrame, identification: pd.DataFrame, tests: Sequence[str],
               kinds: Sequence[str]) -> pd.DataFrame:
    """The seed study's table: per model (runs of ``kinds``), the seeds, Id % (rank-1 of masked probes, mean over
    seeds) and, per test, Ver % (mean over seeds) and ± (standard deviation over seeds; blank for single runs)."""
    rows = []
    for model, part in long[long["kind"].isin(kinds)].groupby("model", sort=False):
        ident = identification[identification["model"] == model]
        row = {"model": model, "seeds": int(part["seed"].nunique()),
               "Id %": 100 * ident["rank1"].mean() if len(ident) else np.nan}
        for test in tests:
            acc = part[part["test"] == test]["accuracy"]
            row[f"Ver % {test}"] = 100 * acc.mean()
            row[f"± {test}"] = 100 * acc.std(ddof=1) if len(acc) > 1 else np.nan
        rows.append(row)
    return pd.DataFrame(rows).round(2)


def baseline_differences(per_pair: Mapping[str, Mapping[str, dict]], pairs: Sequence[tuple[str, str]],
                         n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """:func:`single_difference` of each single-run comparison ``(a, b)`` on every test both runs met (in
    ``a``'s order), with Holm-adjusted p-values over the whole table (``p_holm``)."""
    rows = [single_difference(per_pair, a, b, test, n_boot=n_boot, seed=seed)
            for a, b in pairs for test in per_pair[a] if test in per_pair[b]]
    table = pd.DataFrame(rows)
    if len(table):
        table["p_holm"] = holm_adjust(table["p_value"])
    return table


def leave_one_style_out(per_pair: Mapping[str, Mapping[str, dict]], run: str, style: str, reference: str,
                        references: Sequence[str], left_out: np.ndarray, scenario: str, n_boot: int = 2000,
                        seed: int = 0) -> pd.DataFrame:
    """The run trained without mask ``style`` against the ``reference`` run that saw it, on the pairs of
    ``scenario`` masked with that style (``left_out``) and on the others: each run's accuracy (``run`` and the
    ``references`` that exist), then the paired identity-bootstrap difference run - reference."""
    rows = []
    left_out = np.asarray(left_out, bool)
    for subset, chosen in [(f"masked with {style} (unseen by {run})", left_out),
                           ("masked with the other styles", ~left_out)]:
        for name in [run, *references]:
            if name in per_pair:
                correct = per_pair[name][scenario]["correct"][chosen]
                rows.append({"pairs": subset, "run": name, "n_pairs": int(chosen.sum()),
                             "accuracy": float(correct.mean())})
        difference = single_difference(per_pair, run, reference, scenario, n_boot=n_boot, seed=seed, subset=chosen)
        rows.append({"pairs": subset, "run": f"{run} - {reference}", "n_pairs": int(chosen.sum()),
                     **{k: v for k, v in difference.items() if k in ("diff", "ci_low", "ci_high", "p_value")}})
    return pd.DataFrame(rows)


def against_reference(long: pd.DataFrame, per_pair: Mapping[str, Mapping[str, dict]], models: Sequence[str],
                      reference: str, tests: Sequence[str], main_seed: int, n_boot: int = 2000,
                      seed: int = 0) -> pd.DataFrame:
    """Each model (trained over seeds) against a single reference run (e.g. a pretrained recogniser) on each test:
    the model's mean and sd over seeds, the reference's accuracy, the difference of the seed mean from it, and the
    main seed's paired identity-bootstrap difference with its interval."""
    rows = []
    ref = long[long["run"] == reference].set_index("test")["accuracy"]
    for model in models:
        part = long[long["model"] == model]
        for test in tests:
            acc = part[part["test"] == test]["accuracy"]
            if acc.empty or test not in ref.index:
                continue
            run = _main_run(part, model, main_seed)
            boot = single_difference(per_pair, run, reference, test, n_boot=n_boot, seed=seed)
            rows.append({"model": model, "test": test, "seeds": int(len(acc)), "accuracy_mean": float(acc.mean()),
                         "accuracy_std": float(acc.std(ddof=1)) if len(acc) > 1 else np.nan,
                         "reference": reference, "reference_accuracy": float(ref.loc[test]),
                         "diff_seed_mean": float(acc.mean() - ref.loc[test]), "diff_main_seed": boot["diff"],
                         "boot_ci_low": boot["ci_low"], "boot_ci_high": boot["ci_high"], "p_boot": boot["p_value"]})
    return pd.DataFrame(rows)
