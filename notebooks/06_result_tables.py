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

from maskstudy.report.pipeline import start_notebook

study = start_notebook("06_result_tables", profile, run_dir, params)
cfg = study.config
display(Markdown(f"**Profile `{cfg['profile']}`**, run folder `{study.run_dir}`, data folder `{study.data_dir}`"))

# %%
import json

from maskstudy.report.figures import forest_plot
from maskstudy.report.outputs import PUBLISHED_ANCHORS, read_results, write_summary
from maskstudy.study import answer, comparisons, design

results = read_results(study.tables, answer.REQUIRED_TABLES, optional=answer.OPTIONAL_TABLES)
split = json.loads((study.data_dir / "split" / "split.json").read_text())
display(Markdown(f"**Protocol `{split['protocol']}`.** {split['description']}"))

# %% [markdown]
# ## Two tracks
#
# **From scratch** (the seed study's setup at this profile's scale): IR-ResNets trained here, plain, SE and CBAM.
# **Pretrained** (a recogniser in use): dlib's ResNet-29 fine-tuned on masked faces, plain, SE and CBAM inserted at
# full strength, the same three on the upper face only (cropping + attention), the plain network fine-tuned on clean
# crops alone (the control of what the synthetic twins cost) and the pretrained network as it is (notebook 03, last
# section). Mean over training seeds, ± the standard deviation over seeds.

# %%
if "03_track_seed_table" in results:
    display(Markdown("**Pretrained track**"), results["03_track_seed_table"],
            Markdown("**Pretrained track: attention differences** (seed-paired, Holm over the track's family)"),
            results.get("03_track_differences", pd.DataFrame()).round(4),
            Markdown("**The upper face minus the whole face** (plain, seed-paired):"),
            results.get("03_track_upper_face", pd.DataFrame()).round(4),
            Markdown("**Fine-tuned on clean crops alone** (main seed, identity bootstrap):"),
            results.get("03_track_clean_control", pd.DataFrame()).round(4))
    if "03_track_mask_aware" in results:
        from maskstudy.study.findings import recognizer_findings

        display(Markdown("**The mask-aware recognizer** against the pretrained network and the whole-face fine-tune "
                         "(main seed, identity bootstrap), and how often its mask detector is right:"),
                results["03_track_mask_aware"].round(4), results.get("03_mask_presence", pd.DataFrame()).round(4),
                Markdown("\n\n".join(recognizer_findings(results))))
else:
    display(Markdown("*No pretrained track in this run (off in the profile, or the `teacher` extra is missing).*"))

# %% [markdown]
# ## Identification and verification per method (the seed study's table)
#
# Attention models: mean over training seeds, ± the standard deviation over seeds. Baselines, ViT and hybrid: one
# run (main seed; ± left blank). Besides the seed study's three scenarios: masked photos detected by themselves,
# mask styles never seen in training, and MFR2's real masks.

# %%
verification = results["03_verification"]
vit = results["04_vit"]
key = results["03_seed_table"].copy()
key = key[~key["model"].isin(design.margin_runs(cfg))]  # the margin-loss comparison has its own table
mfr2_04 = results.get("04_mfr2", pd.DataFrame(columns=["model"])).set_index("model")
for name in design.TRANSFORMER_MODELS:
    part = vit[vit["model"] == name].set_index("scenario")
    if len(part):
        row = {"model": name, "seeds": 1, "Id %": float("nan")}
        for column in [c for c in key.columns if c.startswith("Ver % ")]:
            test = column[len("Ver % "):]
            if test == comparisons.MFR2:
                row[column] = round(100 * mfr2_04.loc[name, "accuracy_mean"], 2) if name in mfr2_04.index else float("nan")
            elif test in part.index:
                row[column] = round(100 * part.loc[test, "accuracy_mean"], 2)
        key = pd.concat([key, pd.DataFrame([row])], ignore_index=True)
study.save_table(key, "06_key_results")
display(Markdown("Id %: rank-1 of masked probes against an unmasked gallery (ViT/hybrid: not measured). "
                 "Ver %: LFW 10-fold accuracy (MFR2: its 848 pairs in 10 folds)."), key)

# %%
long = comparisons.accuracy_long(verification, results.get("03_mfr2"))
main = long[long["seed"] == int(cfg["seed"])]
main = main[main["kind"].isin(design.FIGURE_KINDS)]
extra = vit[vit["model"].isin(design.TRANSFORMER_MODELS)].rename(columns={"scenario": "test", "accuracy_mean": "accuracy"})
if "04_mfr2" in results:
    extra = pd.concat([extra, results["04_mfr2"][results["04_mfr2"]["model"].isin(design.TRANSFORMER_MODELS)]
                       .assign(test=comparisons.MFR2).rename(columns={"accuracy_mean": "accuracy"})], ignore_index=True)
both = pd.concat([main[["model", "test", "accuracy"]], extra[["model", "test", "accuracy"]]], ignore_index=True)
tests_shown = list(dict.fromkeys(both["test"]))
spread = results["03_seed_summary"].set_index(["model", "test"])
ncols = min(5, len(tests_shown))
nrows = -(-len(tests_shown) // ncols)
fig, axes = plt.subplots(nrows, ncols, figsize=(3.0 * ncols, 3.6 * nrows), sharey=True, squeeze=False)
for ax in axes.ravel()[len(tests_shown):]:
    ax.axis("off")
for ax, test in zip(axes.ravel(), tests_shown):
    part = both[both["test"] == test].drop_duplicates("model")
    errors = [spread.loc[(m, test), "accuracy_std"] if (m, test) in spread.index else 0.0 for m in part["model"]]
    means = [spread.loc[(m, test), "accuracy_mean"] if (m, test) in spread.index else a for m, a in zip(part["model"], part["accuracy"])]
    ax.bar([design.model_label(m) for m in part["model"]], means, yerr=np.nan_to_num(errors), capsize=3,
           color=plt.cm.tab10(np.arange(len(part))))
    ax.set_title(design.test_label(test), fontsize=8); ax.tick_params(axis="x", rotation=60, labelsize=7)
for row in axes:
    row[0].set_ylabel("accuracy (attention models:\nmean ± sd over seeds)")
axes[0, 0].set_ylim(max(0.4, both["accuracy"].min() - 0.05), 1)
fig.tight_layout()
study.save_figure(fig, "06_accuracy_by_scenario")
plt.show()

# %% [markdown]
# ## Real masks (MFR2), unseen masks, and masks detected on the photo

# %%
if "03_mfr2" in results:
    mfr2_table = results["03_mfr2"]
    display(Markdown("**MFR2** per run (10-fold accuracy ± std over folds, identity-bootstrap interval, AUC, accuracy "
                     "per pair kind, share of photos where MTCNN found a face):"), mfr2_table.round(4))
else:
    display(Markdown("*MFR2 was not found when notebook 03 ran: no real-mask results.*"))
if "03_mask_scenarios" in results:
    display(Markdown("**Seen vs unseen mask styles, shared alignment vs detection on the masked photo** (mean over seeds):"),
            results["03_mask_scenarios"].round(4))
if "01_masked_detection" in results:
    display(Markdown("**MTCNN on masked photos**:"), results["01_masked_detection"].round(4))
if "03_leave_one_style_out" in results:
    display(Markdown("**Leave one style out**:"), results["03_leave_one_style_out"].round(4))
fnmr = results["03_fnmr"]
display(Markdown("**False non-match rate at a fixed threshold** (set on unmasked pairs of the other folds), mean over seeds:"),
        fnmr[fnmr["kind"] == design.RunKind.ATTENTION].groupby(["model", "scenario", "fmr_target"])["fnmr"].mean().unstack("fmr_target").round(4))

# %% [markdown]
# ## ROC curves per scenario (main seed)

# %%
from sklearn.metrics import roc_curve

scores_file = study.outputs / "03_pair_scores.npz"
if not scores_file.is_file():
    raise FileNotFoundError(f"{scores_file} is missing: run notebook 03 first")
scores = np.load(scores_file)
names = design.roc_runs(cfg)
roc_tests = design.roc_tests(entry.split("__")[1] for entry in scores.files  # entries: run__test__array
                             if entry.startswith(f"{names[0]}__") and entry.endswith("__labels"))
fig, axes = plt.subplots(1, len(roc_tests), figsize=(4.2 * len(roc_tests), 3.8), squeeze=False)
for ax, test in zip(axes[0], roc_tests):
    for name in names:
        if f"{name}__{test}__labels" in scores.files:
            fpr, tpr, _ = roc_curve(scores[f"{name}__{test}__labels"], scores[f"{name}__{test}__scores"])
            ax.plot(fpr, tpr, label=design.model_label(name))
    ax.plot([0, 1], [0, 1], "k:", lw=0.8); ax.set_xscale("log"); ax.set_xlim(1e-3, 1)
    ax.set_xlabel("false accept rate"); ax.set_title(design.test_label(test), fontsize=9); ax.grid(alpha=0.3)
axes[0, 0].set_ylabel("true accept rate"); axes[0, 0].legend(fontsize=8, loc="lower right")
fig.tight_layout()
study.save_figure(fig, "06_roc")
plt.show()

# %% [markdown]
# ## Differences between models
#
# Paired by training seed (mean and t interval over seeds); the p-values are Holm-adjusted over each track's family.
# The forest plot shows the tests that carry the answer, masked tests first, both tracks side by side; the tables
# hold every test.

# %%
display(results["03_differences"].round(4))
forest = answer.forest_rows(results, cfg)
if len(forest):
    fig = forest_plot(forest)
    study.save_figure(fig, answer.FOREST_FIGURE, min_dpi=answer.FOREST_DPI)
    plt.show()
display(Markdown("**Training with masked twins, margin losses** (main seed, identity bootstrap):"),
        results["03_baseline_differences"].round(4))

# %% [markdown]
# ## Pretrained reference and teacher-guided students
#
# The reference row is a recogniser trained elsewhere on about 3 million faces (not trained here), evaluated on the same
# pairs with the same detector; the guided students are the study's networks trained with its embeddings as a target.

# %%
if "03_teacher" in results and len(results["03_teacher"]):
    display(Markdown("**Teacher pass and guided trainings** (seconds on this machine):"), results["03_teacher"].round(2))
    if "03_teacher_coverage" in results:
        display(Markdown("**Faces the reference was given** (MTCNN boxes; fallbacks use the photo's centre square):"),
                results["03_teacher_coverage"])
    if "03_guided_vs_reference" in results:
        display(Markdown("**Guided students against the pretrained reference** (seed mean vs the reference; main seed: "
                         "paired identity bootstrap):"), results["03_guided_vs_reference"].round(4))
    if "03_guided_differences" in results:
        display(Markdown("**Guidance and attention among the guided students** (paired by seed; Holm over this table):"),
                results["03_guided_differences"].round(4))
else:
    display(Markdown("*No pretrained teacher in this run (profile `teacher` null, or the optional extra is missing: "
                     "`pip install -e .[teacher]`).*"))

# %% [markdown]
# ## Margin losses, ViT and hybrid

# %%
if "03_margin_losses" in results:
    display(Markdown("**Margin losses** on the plain backbone (ArcFace is `plain`):"), results["03_margin_losses"])
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
from maskstudy.study.findings import cam_findings

attention = results["05_attention_regions"]
display(attention[attention["input"] == "masked"],
        results["05_attention_differences"][results["05_attention_differences"]["input"] == "masked"],
        results["05_faithfulness"], results["05_faithfulness_contrasts"], results["05_randomization_check"])
display(Markdown("\n\n".join(cam_findings(results, cfg, []))))

# %% [markdown]
# ## The attention blocks read directly (notebook 05)
#
# How strongly each attention block changes its input (`|A(x) − x| / |x|`, mean over blocks and per block), and
# CBAM's own spatial map: its weight on the eye band and the mask region, and whether the mask region's weight falls
# when the mask is there.

# %%
from maskstudy.study.findings import cbam_map_findings, strength_findings

if "05_attention_strength" in results:
    strength_table = results["05_attention_strength"]
    display(strength_table[strength_table["block"] == "all blocks"].round(4),
            Markdown("\n\n".join(strength_findings(results, cfg))))
if "05_cbam_spatial_differences" in results:
    display(results["05_cbam_spatial_differences"].round(4), Markdown("\n\n".join(cbam_map_findings(results))))

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
key_table = answer.key_table(results, cfg)
study.save_table(key_table, answer.KEY_TABLE)
summary = answer.summarise(results, split, cfg)
write_summary(study.run_dir, summary)
display(Markdown(f"**Question:** {summary['question']}\n\n"
                 + "\n".join(f"* **{v['heading']}:** {v['text']}" for v in summary["verdicts"])), key_table,
        Markdown("**What limits the answer**\n\n" + "\n".join(f"* {w}" for w in summary["short_warnings"])))
display(Markdown("\n\n".join(f"**{group['heading']}**\n\n" + "\n".join(f"* {f}" for f in group["sentences"])
                               for group in summary["findings"])
                 + "\n\n**Warnings**\n\n" + "\n".join(f"* {w}" for w in summary["warnings"])))
