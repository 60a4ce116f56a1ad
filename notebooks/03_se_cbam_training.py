# %% [markdown]
# # 03 · SE vs CBAM training
#
# The study's core question: on masked faces, does attention in the backbone help an ArcFace-trained IR-ResNet?
# Three variants of the same network are trained here with **the same seed, data, schedule and margin head**:
#
# * **plain** IR-ResNet (Deng et al. 2019),
# * **SE**: Squeeze-and-Excitation (Hu et al. 2018) after the residual branch's last BN,
# * **CBAM**: channel attention from an MLP over average- and max-pooled features, then 7x7 spatial attention
#   (Woo et al. 2018), at the same place, as in the seed study;
#
# plus the seed's **no-mask baseline**: the plain network trained on unmasked crops only. Training images are the
# cleaned training split of notebook 02 (their masked twins replace them with probability `train_masked_share`);
# evaluation is LFW View 2 in three scenarios (10-fold accuracy, ROC) and closed-set identification of masked
# probes against an unmasked gallery (the seed's Id column). Differences between models come with paired bootstrap
# intervals over the same pairs.

# %% tags=["parameters"]
# Parameters: papermill replaces this cell's values. In JupyterLab leave them as they are: the profile's
# defaults apply (profile None = gpu when CUDA is present, else cpu); put overrides in `params`.
profile = None
run_dir = None
params = {}

# %%
# %matplotlib inline
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import Markdown, display

from maskstudy.pipeline import start_notebook

study = start_notebook("03_se_cbam_training", profile, run_dir, params)
cfg = study.config
display(Markdown(f"**Profile `{cfg['profile']}`**, run folder `{study.run_dir}`, data folder `{study.data_dir}`"))

# %%
from maskstudy.config import train_settings
from maskstudy.data import read_manifest
from maskstudy.protocol import Split
from maskstudy.train import TrainConfig, train_or_restart

train_csv = study.data_dir / "split" / "train_clean.csv"
pairs_dir = study.data_dir / "lfw" / "pairs"
for needed in (train_csv, pairs_dir / "masked_unmasked.csv"):
    if not needed.exists():
        raise FileNotFoundError(f"{needed} is missing: run notebooks 01 and 02 first")
split = Split.load(study.data_dir / "split")
display(Markdown(f"**Protocol `{split.protocol}`.** {split.description}"))

models = {("plain" if a == "none" else a): train_settings(cfg, a) for a in cfg["attention_variants"]}
if cfg["nomask_baseline"]:
    models["plain_nomask"] = train_settings(cfg, "none", masked_share=0.0)
# the margin-loss comparison: the plain backbone under other heads (its ArcFace run is "plain" itself)
margin_models = [f"plain_{m}" for m in cfg["margin_losses"]]
for margin in cfg["margin_losses"]:
    models[f"plain_{margin}"] = train_settings(cfg, "none", margin=margin)
if not margin_models:
    display(Markdown("*This profile skips the margin-loss comparison (`margin_losses` is empty).*"))
pd.DataFrame(models).T

# %% [markdown]
# ## Training
#
# Checkpoints are written after every epoch; rerunning the notebook resumes unfinished runs and reuses finished ones.

# %%
results = {}
for name, settings in models.items():
    print(f"== {name}: {settings['backbone']}, masked share {settings['masked_share']}")
    results[name] = train_or_restart(TrainConfig.from_dict(settings), train_csv, study.data_dir,
                          study.outputs / "checkpoints" / name)
history = pd.concat([r.history.assign(model=name) for name, r in results.items()], ignore_index=True)
study.save_table(history, "03_training_log")

# %%
fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
for name, part in history[~history["model"].isin(margin_models)].groupby("model", sort=False):
    axes[0].plot(part["epoch"], part["loss"], marker="o", ms=3, label=name)
    axes[1].plot(part["epoch"], part["train_acc"], marker="o", ms=3, label=name)
    axes[2].plot(part["epoch"], part["val_acc"], marker="o", ms=3, label=name)
for ax, title in zip(axes, ["training loss (ArcFace)", "training accuracy (margin logits)",
                            "validation: masked-unmasked pairs of held-out training identities"]):
    ax.set_xlabel("epoch"); ax.set_title(title, fontsize=9); ax.grid(alpha=0.3)
axes[0].legend()
fig.tight_layout()
study.save_figure(fig, "03_learning_curves")
plt.show()

# %%
from maskstudy.evaluate import backbone_from_checkpoint, load_checkpoint
from maskstudy.models import count_flops, count_parameters

backbones = {name: backbone_from_checkpoint(load_checkpoint(r.checkpoint)) for name, r in results.items()}
training_table = pd.DataFrame([{
    "model": name, "backbone": models[name]["backbone"], "masked_share": models[name]["masked_share"],
    "params": count_parameters(backbones[name]), "gflops": count_flops(backbones[name], models[name]["input_size"]) / 1e9,
    "epochs": int(r.history["epoch"].max()), "final_loss": float(r.history["loss"].iloc[-1]),
    "final_val_acc": float(r.history["val_acc"].iloc[-1]), "train_seconds": float(r.history["seconds"].sum()),
    "images_per_s": float(r.history["images_per_s"].mean()),
} for name, r in results.items()])
study.save_table(training_table, "03_training")
training_table

# %% [markdown]
# ## Evaluation on LFW: verification in three scenarios and masked identification

# %%
from maskstudy.evaluate import evaluate_scenarios, identification_rank1

aligned_root = study.data_dir / "lfw" / "aligned"
lfw = read_manifest(study.data_dir / "lfw" / "cleaned.csv")
eval_ids = set(split.eval_identities["identity"])
id_images = lfw[lfw["identity"].isin(eval_ids) & (lfw["aligned"] != "")][["identity", "aligned", "masked"]]
verification, identification, details = [], [], {}
for name, backbone in backbones.items():
    cache = {}
    table, per_pair = evaluate_scenarios(backbone, models[name]["input_size"], pairs_dir, aligned_root, crops_cache=cache,
                                         batch_size=cfg["eval_batch_size"], n_boot=cfg["bootstrap_samples"], seed=cfg["seed"])
    verification.append(table.assign(model=name))
    details[name] = per_pair
    ident = identification_rank1(backbone, models[name]["input_size"], id_images, aligned_root, crops_cache=cache,
                                 seed=cfg["seed"], n_boot=cfg["bootstrap_samples"], batch_size=cfg["eval_batch_size"])
    identification.append({"model": name, "rank1": ident["rank1"], "ci_low": ident["ci"][0], "ci_high": ident["ci"][1],
                           "probes": ident["probes"], "gallery": ident["gallery"]})
verification = pd.concat(verification, ignore_index=True)[["model"] + [c for c in verification[0].columns if c != "model"]]
identification = pd.DataFrame(identification)
study.save_table(verification, "03_verification")
study.save_table(identification, "03_identification")
np.savez_compressed(study.outputs / "03_pair_scores.npz", **{
    f"{name}__{scenario}__{key}": value[key] for name, per_pair in details.items()
    for scenario, value in per_pair.items() for key in ("scores", "labels", "folds", "correct")})
note = next(iter(next(iter(details.values())).values()))["accuracy"].get("note")
if note:
    display(Markdown(f"*Note:* {note}"))

# %%
# the seed study's table: Id % (masked probes, unmasked gallery) and Ver % per scenario
seed_table = identification[["model", "rank1"]].rename(columns={"rank1": "Id %"})
for scenario in ["unmasked_unmasked", "masked_unmasked", "masked_masked"]:
    part = verification[verification["scenario"] == scenario].set_index("model")
    seed_table[f"Ver % {scenario}"] = seed_table["model"].map(part["accuracy_mean"])
    seed_table[f"± {scenario}"] = seed_table["model"].map(part["accuracy_std"])
seed_table = seed_table.assign(**{c: seed_table[c] * 100 for c in seed_table.columns if c != "model"}).round(2)
study.save_table(seed_table, "03_seed_table")
seed_table

# %%
fig, axes = plt.subplots(1, 2, figsize=(13, 3.8), gridspec_kw={"width_ratios": [3, 1]})
scenarios = list(dict.fromkeys(verification["scenario"]))
names = [n for n in backbones if n not in margin_models]
width = 0.8 / len(names)
for i, name in enumerate(names):
    part = verification[verification["model"] == name].set_index("scenario").loc[scenarios]
    x = np.arange(len(scenarios)) + i * width
    axes[0].bar(x, part["accuracy_mean"], width, label=name,
                yerr=[part["accuracy_mean"] - part["acc_ci_low"], part["acc_ci_high"] - part["accuracy_mean"]], capsize=3)
axes[0].set_xticks(np.arange(len(scenarios)) + width * (len(names) - 1) / 2, scenarios)
lowest = verification["acc_ci_low"].min()
axes[0].set_ylim(max(0.45, lowest - 0.05), 1.0); axes[0].set_ylabel("10-fold accuracy (95% bootstrap CI)")
axes[0].legend(fontsize=8); axes[0].set_title("LFW verification")
shown = identification[identification["model"].isin(names)]
axes[1].bar(shown["model"], shown["rank1"], yerr=[shown["rank1"] - shown["ci_low"], shown["ci_high"] - shown["rank1"]], capsize=3)
axes[1].set_title("Masked identification, rank-1"); axes[1].tick_params(axis="x", rotation=30)
fig.tight_layout()
study.save_figure(fig, "03_accuracy")
plt.show()

# %% [markdown]
# ## Differences between models, with paired bootstrap intervals
#
# Same pairs, same folds: each comparison resamples the pairs and recomputes the difference in accuracy. An interval that contains 0 means this run cannot tell the two models apart.

# %%
from maskstudy.evaluate import paired_bootstrap_difference

comparisons = [(a, b) for a, b in [("se", "plain"), ("cbam", "plain"), ("cbam", "se"), ("plain", "plain_nomask")]
               if a in details and b in details] + [("plain", m) for m in margin_models]
differences = []
for a, b in comparisons:
    for scenario in scenarios:
        d = paired_bootstrap_difference(details[a][scenario]["correct"], details[b][scenario]["correct"],
                                        n=cfg["bootstrap_samples"], seed=cfg["seed"])
        differences.append({"comparison": f"{a} - {b}", "scenario": scenario, "difference": d["diff"],
                            "ci_low": d["low"], "ci_high": d["high"], "p_value": d["p_value_two_sided"],
                            "separated": not (d["low"] <= 0 <= d["high"])})
differences = pd.DataFrame(differences)
study.save_table(differences, "03_differences")
gap = verification.pivot(index="model", columns="scenario", values="accuracy_mean")
gap = pd.DataFrame({"model": gap.index, "unmasked": gap["unmasked_unmasked"], "masked_unmasked": gap["masked_unmasked"],
                    "masked_masked": gap["masked_masked"], "masked_gap": gap["unmasked_unmasked"] - gap["masked_unmasked"]}).reset_index(drop=True)
study.save_table(gap, "03_masked_gap")
display(differences, gap)
separated = differences[differences["separated"]]
display(Markdown(
    f"{len(separated)} of {len(differences)} comparisons have a 95% interval that excludes 0"
    + (": " + "; ".join(f"{r.comparison} on {r.scenario} ({100 * r.difference:+.1f} points)" for r in separated.itertuples()) if len(separated) else
       ": at this profile's size the models cannot be told apart.")))

# %%
if margin_models:
    margin_table = verification[verification["model"].isin(["plain"] + margin_models)].copy()
    margin_table.insert(1, "margin", margin_table["model"].map(lambda m: models[m]["margin"]))
    study.save_table(margin_table, "03_margin_losses")
    display(Markdown("### Margin losses on the plain backbone (same data and schedule)"), margin_table)
