# %% [markdown]
# # 06 · Result tables
#
# Everything here is **read** from what notebooks 02–05 saved; no number is recomputed or typed, except the
# published anchors, which are shown apart, with their sources. A missing upstream file stops this notebook with
# the name of the notebook to run. The summary at the end becomes the top of the run's `index.html`.

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

study = start_notebook("06_result_tables", profile, run_dir, params)
cfg = study.config
display(Markdown(f"**Profile `{cfg['profile']}`**, run folder `{study.run_dir}`, data folder `{study.data_dir}`"))

# %%
import json

from maskstudy.report import PUBLISHED_ANCHORS, read_results, write_summary

required = ["01_split", "02_cleaning_summary", "03_verification", "03_identification", "03_differences", "03_masked_gap",
            "03_seed_table", "03_training", "04_vit", "04_data_size", "04_data_size_gap", "05_attention_regions", "05_faithfulness",
            "05_attention_differences", "05_faithfulness_contrasts", "05_randomization_check", "05_cam_geometry"]
results = read_results(study.tables, required, optional=("03_margin_losses",))
split = json.loads((study.data_dir / "split" / "split.json").read_text())
display(Markdown(f"**Protocol `{split['protocol']}`.** {split['description']}"))

# %% [markdown]
# ## Identification and verification per method (the seed study's table)

# %%
verification = results["03_verification"]
vit = results["04_vit"]
extra = vit[vit["model"].isin(["vit", "hybrid"])]
key = results["03_seed_table"].copy()
for name in ["vit", "hybrid"]:
    part = extra[extra["model"] == name].set_index("scenario")
    if len(part):
        row = {"model": name, "Id %": float("nan")}
        for scenario in ["unmasked_unmasked", "masked_unmasked", "masked_masked"]:
            row[f"Ver % {scenario}"] = round(100 * part.loc[scenario, "accuracy_mean"], 2)
            row[f"± {scenario}"] = round(100 * part.loc[scenario, "accuracy_std"], 2)
        key = pd.concat([key, pd.DataFrame([row])], ignore_index=True)
key = key[~key["model"].str.startswith("plain_") | (key["model"] == "plain_nomask")]
study.save_table(key, "06_key_results")
display(Markdown("Id %: rank-1 of masked probes against an unmasked gallery (ViT/hybrid: not measured). "
                 "Ver %: LFW 10-fold accuracy ± std over folds."), key)

# %%
fig, axes = plt.subplots(1, 3, figsize=(15, 3.8), sharey=True)
both = pd.concat([verification, extra], ignore_index=True)
both = both[~both["model"].isin([m for m in both["model"].unique() if m.startswith("plain_") and m != "plain_nomask"])]
for ax, scenario in zip(axes, ["unmasked_unmasked", "masked_unmasked", "masked_masked"]):
    part = both[both["scenario"] == scenario]
    ax.bar(part["model"], part["accuracy_mean"], yerr=[part["accuracy_mean"] - part["acc_ci_low"], part["acc_ci_high"] - part["accuracy_mean"]],
           capsize=3, color=plt.cm.tab10(np.arange(len(part))))
    ax.set_title(scenario); ax.tick_params(axis="x", rotation=35)
axes[0].set_ylabel("LFW 10-fold accuracy (95% bootstrap CI)")
axes[0].set_ylim(max(0.4, both["acc_ci_low"].min() - 0.05), 1)
fig.tight_layout()
study.save_figure(fig, "06_accuracy_by_scenario")
plt.show()

# %% [markdown]
# ## ROC curves per scenario

# %%
from sklearn.metrics import roc_curve

scores_file = study.outputs / "03_pair_scores.npz"
if not scores_file.is_file():
    raise FileNotFoundError(f"{scores_file} is missing: run notebook 03 first")
scores = np.load(scores_file)
names = sorted({k.split("__")[0] for k in scores.files}, key=list(verification["model"].unique()).index)
names = [n for n in names if not n.startswith("plain_") or n == "plain_nomask"]
fig, axes = plt.subplots(1, 3, figsize=(15, 4))
for ax, scenario in zip(axes, ["unmasked_unmasked", "masked_unmasked", "masked_masked"]):
    for name in names:
        fpr, tpr, _ = roc_curve(scores[f"{name}__{scenario}__labels"], scores[f"{name}__{scenario}__scores"])
        ax.plot(fpr, tpr, label=name)
    ax.plot([0, 1], [0, 1], "k:", lw=0.8); ax.set_xscale("log"); ax.set_xlim(1e-3, 1)
    ax.set_xlabel("false accept rate"); ax.set_title(scenario); ax.grid(alpha=0.3)
axes[0].set_ylabel("true accept rate"); axes[0].legend(fontsize=8)
fig.tight_layout()
study.save_figure(fig, "06_roc")
plt.show()

# %% [markdown]
# ## Differences between models (paired bootstrap over the same pairs)

# %%
differences = results["03_differences"]
display(differences)
fig, ax = plt.subplots(figsize=(8, 0.35 * len(differences) + 1))
labels = differences["comparison"] + "  ·  " + differences["scenario"]
y = np.arange(len(differences))
ax.errorbar(differences["difference"] * 100, y, xerr=[(differences["difference"] - differences["ci_low"]) * 100,
            (differences["ci_high"] - differences["difference"]) * 100], fmt="o", capsize=3)
ax.axvline(0, color="k", lw=0.8); ax.set_yticks(y, labels, fontsize=8); ax.invert_yaxis()
ax.set_xlabel("accuracy difference, points (95% CI)")
fig.tight_layout()
study.save_figure(fig, "06_differences")
plt.show()

# %% [markdown]
# ## No-mask baseline, margin losses, ViT and hybrid

# %%
display(Markdown("**Masked-unmasked gap** (unmasked accuracy minus masked-unmasked accuracy) per model:"), results["03_masked_gap"])
if "03_margin_losses" in results:
    margins = results["03_margin_losses"]
    display(Markdown("**Margin losses** on the plain backbone (ArcFace is `plain`):"), margins)
else:
    display(Markdown("*This profile did not train the margin-loss comparison (`margin_losses` empty).*"))
display(Markdown("**ViT and hybrid** against the best CNN (same head, data, seed, evaluation):"), vit)
display(Markdown("**Data-size curve**, CNN minus ViT on masked-unmasked pairs:"), results["04_data_size_gap"])

# %% [markdown]
# ## Attention on the eyes (HiResCAM / Grad-CAM, notebook 05)
#
# Shares of raw CAM mass (exact cell geometry) on masked probes with intervals over seeds (or images); differences
# from the model without attention; deletion/insertion areas of each model's maps against image-independent and
# face-restricted controls; the weight-randomisation check; and the verdict read from these tables.

# %%
from maskstudy import study as design
from maskstudy.explain import attention_verdict

attention = results["05_attention_regions"]
cam_method = cfg["cam_method"]
attention_differences, faith_contrasts, randomization = (results["05_attention_differences"], results["05_faithfulness_contrasts"],
                                                         results["05_randomization_check"])
cam_baseline = next((n for n, a in design.attention_models(cfg).items() if a == "none"), None)
attention_verdicts = [attention_verdict(attention_differences, faith_contrasts, randomization, model=n, baseline=cam_baseline, method=cam_method)
                      for n, a in design.attention_models(cfg).items() if a != "none" and cam_baseline is not None]
display(attention[attention["input"] == "masked"], attention_differences[attention_differences["input"] == "masked"],
        results["05_faithfulness"], faith_contrasts, randomization)
display(Markdown("\n\n".join(attention_verdicts)))

# %% [markdown]
# ## Cleaning statistics and split

# %%
display(results["02_cleaning_summary"], results["01_split"])

# %% [markdown]
# ## Published anchors (typed from the papers; far larger training sets)
#
# These come from networks trained on millions of images and a thousand times more identities than this study's training set; they show the scale of the gap, not a comparison of methods.

# %%
anchors = pd.DataFrame(PUBLISHED_ANCHORS)
study.save_table(anchors, "06_published_anchors")
anchors


# %% [markdown]
# ## Summary

# %%
def pct(x):
    return f"{100 * x:.1f} %"

ver = verification.set_index(["model", "scenario"])
findings, warnings = [], []
train_images = int(results["01_split"]["train_images"].iloc[0])
findings.append(f"Protocol {split['protocol']}: trained on {train_images:,} photos ({split['counts']['train_identities']:,} identities) before cleaning; "
                f"evaluated on {split['counts']['eval_pairs']:,} LFW pairs.")
for name in ["plain", "se", "cbam"]:
    if (name, "masked_unmasked") in ver.index:
        findings.append(f"{name}: {pct(ver.loc[(name, 'unmasked_unmasked'), 'accuracy_mean'])} unmasked, "
                        f"{pct(ver.loc[(name, 'masked_unmasked'), 'accuracy_mean'])} masked-unmasked, "
                        f"{pct(ver.loc[(name, 'masked_masked'), 'accuracy_mean'])} masked-masked (LFW 10-fold).")
for row in differences.itertuples():
    if row.comparison in ("se - plain", "cbam - plain") and row.scenario == "masked_unmasked":
        verdict = "a difference this run can separate from 0" if row.separated else "not separable from 0 at this size"
        findings.append(f"{row.comparison} on masked-unmasked pairs: {100 * row.difference:+.1f} points "
                        f"[{100 * row.ci_low:+.1f}, {100 * row.ci_high:+.1f}], {verdict}.")
if ("plain_nomask", "masked_unmasked") in ver.index:
    findings.append(f"Training with masked twins vs without (plain): masked-unmasked {pct(ver.loc[('plain', 'masked_unmasked'), 'accuracy_mean'])} vs "
                    f"{pct(ver.loc[('plain_nomask', 'masked_unmasked'), 'accuracy_mean'])}.")
vit_mu = vit.set_index(["model", "scenario"])
if ("vit", "masked_unmasked") in vit_mu.index:
    findings.append(f"ViT {pct(vit_mu.loc[('vit', 'masked_unmasked'), 'accuracy_mean'])} and hybrid "
                    f"{pct(vit_mu.loc[('hybrid', 'masked_unmasked'), 'accuracy_mean'])} on masked-unmasked pairs.")
masked_attention = attention[(attention["input"] == "masked") & (attention["method"] == cam_method)]
if len(masked_attention):
    findings.append(f"Share of raw {cam_method} mass in the eye band on masked probes: "
                    + ", ".join(f"{r.model} {pct(r.eye_share)} [{pct(r.eye_ci_low)}, {pct(r.eye_ci_high)}]" for r in masked_attention.itertuples())
                    + f" (95 % intervals: {'; '.join(masked_attention['interval'].unique())}; the band is "
                    f"{pct(masked_attention['eye_band_area_share'].iloc[0])} of the crop).")
findings += attention_verdicts
coarse_cams = results["05_cam_geometry"][results["05_cam_geometry"]["eye_band_height_in_cells"] < 1.5]
if len(coarse_cams):
    warnings.append("CAM grids too coarse to separate the eye band from the mask region: "
                    + ", ".join(f"{r.model} {r.grid}x{r.grid} at {r.input_size} px (band {r.eye_band_height_in_cells:.2f} cells tall)"
                                for r in coarse_cams.itertuples()) + "; the attention verdict is limited by that.")
unseparated = differences[~differences["separated"]]
if len(unseparated):
    warnings.append(f"{len(unseparated)} of {len(differences)} model comparisons have 95% intervals that include 0: "
                    "at this profile's size those models cannot be told apart.")
if cfg["profile"] == "smoke":
    warnings.append("smoke profile: a few training steps on a handful of images; the numbers test the pipeline, not the methods.")
warnings.append("CelebA identity numbers cannot be matched to LFW names: a person in both sets cannot be excluded from training.")
write_summary(study.run_dir, findings, warnings, ["06_key_results"],
              ["06_accuracy_by_scenario", "06_differences", "03_learning_curves", "04_data_size", "05_cams_masked", "05_attention_regions",
               "05_faithfulness_curves"])
display(Markdown("\n".join(f"* {f}" for f in findings) + "\n\n**Warnings**\n\n" + "\n".join(f"* {w}" for w in warnings)))
