# %% [markdown]
# # 05 · Where the networks look: HiResCAM, exact geometry, faithfulness curves
#
# Where does each network look when it matches a **masked** face to the same person's **unmasked** photo? The CAM
# score is the cosine similarity between the probe's embedding and the embedding of the person's unmasked reference
# photo (pytorch-grad-cam's classes, autocast off).
#
# * **Method.** The IR-ResNet head flattens the last feature map into a fully connected layer (no global pooling),
#   so every cell has its own weights. Grad-CAM (Selvaraju et al., ICCV 2017) averages the gradient over space and
#   discards them; HiResCAM (Draelos and Carin, 2020: gradient x activation, summed over channels) keeps them and
#   is the default (`cam_method`); Grad-CAM is computed beside it (`cam_compare_methods`). The transformers are
#   explained at their last block's first LayerNorm, with the same method.
# * **Geometry.** Maps stay on the layer's grid until they are brought to the 112x112 crop with each cell at the
#   centre of its receptive field (`maskstudy.explain.cell_centres`), not where a generic resize puts it.
# * **Shares on raw maps.** The share of CAM mass in the eye band and in the mask region is computed on the raw
#   ReLU'd maps (no per-image min-max rescaling), with intervals over training seeds when there are several,
#   else bootstrap intervals over images.
# * **Faithfulness.** Deletion and insertion curves (Petsiuk et al., BMVC 2018; pixels blurred as in ROAD) of each
#   map against rankings that do not look at the image (the model's mean CAM, the fixed eye band) and random
#   regions restricted to the visible face; and the weight-randomisation sanity check (Adebayo et al., 2018).

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

study = start_notebook("05_gradcam_analysis", profile, run_dir, params)
cfg = study.config
display(Markdown(f"**Profile `{cfg['profile']}`**, run folder `{study.run_dir}`, data folder `{study.data_dir}`"))

# %%
from maskstudy.datasets.build import read_manifest
from maskstudy.datasets.protocol import Split
from maskstudy.evaluate import bootstrap_ci
from maskstudy.evaluate.statistics import holm_adjust
from maskstudy.explain import (
    CONTROL_RANKINGS,
    ExplanationCache,
    attention_on_regions,
    cell_centres,
    cell_centres_2d,
    control_rankings,
    curve_areas,
    curve_fractions,
    eye_band_mask,
    grid_size,
    grid_to_crop,
    mask_region,
    mean_interval,
    overlay,
    randomized_copy,
    rank_correlation,
    receptive_grid,
    separated_after_holm,
    visible_face_region,
)
from maskstudy.faces.preprocess import load_crops
from maskstudy.models.iresnet import feature_map_size
from maskstudy.study import design
from maskstudy.study.experiment import load_network

CROP = 112
method = cfg["cam_method"]
attention_models = design.attention_models(cfg)  # name -> attention block, e.g. plain -> none
baseline = design.plain_model(cfg)

networks, notes = {}, []  # (model name, seed) -> (model, input size)
for name, seed in design.explained_networks(cfg):
    path = design.checkpoint(study.outputs, design.run_name(name, seed, cfg))
    if not path.is_file():
        if name in attention_models and seed == cfg["seed"]:
            raise FileNotFoundError(f"the checkpoint of {name} is missing ({path}): run notebook 03 first")
        notes.append(f"{design.run_name(name, seed, cfg)} (no checkpoint)")
        continue
    networks[(name, seed)] = load_network(path)
from maskstudy.study import pretrained_track as track

# the pretrained track (notebook 03's last section): dlib's network fine-tuned plain, with SE and with CBAM, over seeds;
# the whole-face models explained at its 17x17 stage (the eye band is about 3 cells tall there); the upper-face
# models (lower half blanked) are only read directly (their attention blocks, below)
track_pairs, upper_networks = [], {}
for run in track.finetuned_runs(cfg):
    path = track.checkpoint(study.outputs, run.name)
    if path.is_file():
        target = upper_networks if run.model in design.TRACK_UPPER_MODELS.values() else networks
        target[(run.model, run.seed)] = (track.load_run(path), 112)
    elif run.seed == cfg["seed"]:
        notes.append(f"{run.name} (no checkpoint: the pretrained track did not run)")
track_pairs = [(a, b) for a, b in track.comparisons(cfg) if b == track.MODELS[design.NO_ATTENTION]
               and (a, cfg["seed"]) in networks and (b, cfg["seed"]) in networks]
models = list(dict.fromkeys(name for name, _ in networks))  # model names, profile order
main = {name: networks[(name, cfg["seed"])] for name in models}
if notes:
    display(Markdown(f"*Left out: {', '.join(notes)}.*"))
display(Markdown(f"Models: {', '.join(models)}; seeds of the attention models found: "
                 f"{sorted({s for (n, s) in networks if n in attention_models})}. Method `{method}`."))

# %% [markdown]
# ## What the map's grid can resolve
#
# Each cell of the explained grid covers a block of the crop; a map cannot place mass more finely than that.

# %%
band, covered, visible = eye_band_mask(CROP), mask_region(CROP), visible_face_region(CROP)
band_rows = np.flatnonzero(band.any(axis=1))
band_height = band_rows[-1] - band_rows[0] + 1
geometry = []
for name in models:
    model, input_size = main[name]
    stride, first = receptive_grid(model)
    centres = cell_centres(model, CROP)
    cell = stride * CROP / input_size
    geometry.append({"model": name, "input_size": input_size, "grid": grid_size(model), "cell_px_on_crop": cell,
                     "first_centre_px": centres[0], "last_centre_px": centres[-1],
                     "resize_shift_px": (CROP / grid_size(model)) * 0.5 - centres[0],
                     "eye_band_height_in_cells": band_height / cell})
geometry = pd.DataFrame(geometry)
study.save_table(geometry, "05_cam_geometry")
display(geometry)
coarse = geometry[geometry["eye_band_height_in_cells"] < 1.5]
if len(coarse):
    grids = "; ".join(f"{r.model} {r.grid}x{r.grid} at {r.input_size} px input ({r.cell_px_on_crop:.0f} px cells: the eye "
                      f"band is {r.eye_band_height_in_cells:.2f} cells tall; a generic resize would shift them "
                      f"{r.resize_shift_px:.1f} px towards the bottom right)" for r in coarse.itertuples())
    full_size = [(r.model, feature_map_size(CROP)) for r in coarse.itertuples() if r.model in attention_models]
    display(Markdown(
        f"**Limit.** The eye band is {band_height} px tall on the {CROP} px crop; these grids are too coarse to "
        f"separate it from the mask region: {grids}. The eye band and the mask region then share cells, and the shares "
        "below say little more than which of a few cell rows carries the mass. "
        + (f"At a {CROP} px input the IR-ResNet's grid would be {full_size[0][1]}x{full_size[0][1]} "
           f"({receptive_grid(main[full_size[0][0]][0])[0]:.0f} px cells); this profile does not train at that size."
           if full_size else "")))

# %%
aligned_root = study.data_dir / "lfw" / "aligned"
split = Split.load(study.data_dir / "split")
lfw = read_manifest(study.data_dir / "lfw" / "cleaned.csv")
lfw = lfw[lfw["identity"].isin(set(split.eval_identities["identity"])) & (lfw["aligned"] != "")]
frontal = lfw[lfw["keep"]].sort_values(["identity", "image"])
# reference: each identity's first frontal photo (unmasked); probes: its other frontal photos, masked and unmasked
references = frontal.groupby("identity").head(1).set_index("identity")["aligned"]
probes = frontal[~frontal["aligned"].isin(references.values) & frontal["identity"].isin(references.index)]
probes = probes.sample(min(cfg["cam_images"], len(probes)), random_state=cfg["seed"]).reset_index(drop=True)
side = lfw[(lfw["drop_reason"] == "side_face") & lfw["identity"].isin(references.index)]
side = side.sample(min(cfg["cam_examples"], len(side)), random_state=cfg["seed"]).reset_index(drop=True)
display(Markdown(f"{len(probes)} probes from {probes['identity'].nunique()} evaluated identities; {len(side)} side faces for the failure figure."))

reference_crops = load_crops([aligned_root / references[i] for i in probes["identity"]])
masked_crops = load_crops([aligned_root / p for p in probes["masked"]])
unmasked_crops = load_crops([aligned_root / p for p in probes["aligned"]])
side_crops = load_crops([aligned_root / p for p in side["masked"]])
side_references = load_crops([aligned_root / references[i] for i in side["identity"]])


# %%
explanations = ExplanationCache(study.outputs / "explanations")  # a rerun reads every unchanged map and curve


def cams_on_crop(model, input_size, crops, refs, cam_method=method):
    """Raw maps on the layer's grid, then on the crop with exact geometry: ``(grid maps, crop maps)``."""
    grid_maps = explanations.grid_cams(model, crops, refs, input_size, method=cam_method)
    return grid_maps, grid_to_crop(grid_maps, cell_centres_2d(model, CROP), CROP)


grid_cams, cams = {}, {}  # (name, seed, input kind, method) -> maps
for (name, seed), (model, input_size) in networks.items():
    print(f"{method}: {design.run_name(name, seed, cfg)}", flush=True)
    kinds = [("masked", masked_crops, reference_crops)]
    if seed == cfg["seed"]:
        kinds += [("unmasked", unmasked_crops, reference_crops), ("side", side_crops, side_references)]
    for kind, crops, refs in kinds:
        if len(crops):
            grid_cams[(name, seed, kind, method)], cams[(name, seed, kind, method)] = cams_on_crop(model, input_size, crops, refs)
    if seed == cfg["seed"] and name in attention_models:  # the IR-ResNets, whose head makes the methods differ
        for other in cfg["cam_compare_methods"]:
            _, cams[(name, seed, "masked", other)] = cams_on_crop(model, input_size, masked_crops, reference_crops, other)


# %% [markdown]
# ## Where the networks look
#
# Each map is divided by its own maximum for display only; the numbers below use the raw maps.

# %%
def shown(cam):
    top = cam.max()
    return cam / top if top > 0 else cam


def cam_figure(crops, maps, title, n):
    names = list(maps)
    fig, axes = plt.subplots(n, len(names) + 1, figsize=(1.7 * (len(names) + 1), 1.8 * n), squeeze=False)
    for row in range(n):
        axes[row, 0].imshow(crops[row]); axes[row, 0].set_title("input" if row == 0 else "", fontsize=8)
        for col, label in enumerate(names, start=1):
            axes[row, col].imshow(overlay(crops[row], shown(maps[label][row])))
            if row == 0:
                axes[row, col].set_title(label, fontsize=8)
    for ax in axes.ravel():
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


n = min(cfg["cam_examples"], len(probes))
for kind, crops, title in [("masked", masked_crops, f"LFW masked probes: {method} of the similarity to the unmasked reference"),
                           ("unmasked", unmasked_crops, "The same probes without masks")]:
    maps = {name: cams[(name, cfg["seed"], kind, method)] for name in models}
    if kind == "masked":
        maps.update({f"{name} {other}": cams[(name, cfg["seed"], kind, other)]
                     for other in cfg["cam_compare_methods"] for name in attention_models if name in models})
    fig = cam_figure(crops, maps, title, n)
    study.save_figure(fig, f"05_cams_{kind}")
    plt.show()
if len(side):
    fig = cam_figure(side_crops, {name: cams[(name, cfg["seed"], "side", method)] for name in models},
                     "Side faces (removed by cleaning): attention fails", len(side))
    study.save_figure(fig, "05_cams_side_faces")
    plt.show()

# %% [markdown]
# ### Real masks (MFR2, evaluation only)
#
# A few MFR2 photos (real people, real masks; public figures who may appear in other face sets), detected and
# aligned with the study's MTCNN + ArcFace-template alignment; the reference is a no-mask photo of the same person.

# %%
from maskstudy.datasets.build import find_dataset
from maskstudy.evaluate import FaceRecognizer

mfr2_root = find_dataset("mfr2", cfg["mfr2_root"])
if mfr2_root is None or not (mfr2_root / "mfr2_labels.txt").is_file():
    display(Markdown("*MFR2 not found (`$MASKSTUDY_MFR2` or `../shared/data/mfr2`): no real-mask examples.*"))
else:
    labels = pd.read_csv(mfr2_root / "mfr2_labels.txt", header=None, names=["name", "number", "mask_type"],
                         skipinitialspace=True)
    labels["path"] = [mfr2_root / name / f"{name}_{int(k):04d}.png" for name, k in zip(labels["name"], labels["number"])]
    bare = labels[labels["mask_type"] == "no-mask"].groupby("name").head(1).set_index("name")["path"]
    chosen = labels[(labels["mask_type"] != "no-mask") & labels["name"].isin(bare.index)].groupby("name").head(1)
    chosen = chosen.head(cfg["cam_mfr2_examples"]).reset_index(drop=True)
    aligner = FaceRecognizer(*main[models[0]], device="cpu")
    mfr2_crops, found, fallback = aligner.align(list(chosen["path"]))
    mfr2_refs, ref_found, ref_fallback = aligner.align(list(bare[chosen["name"]]))
    ok = found & ~fallback & ref_found & ~ref_fallback
    display(Markdown(f"{int(ok.sum())} of {len(chosen)} MFR2 masked photos (and their references) detected and aligned; "
                     f"mask types: {', '.join(chosen.loc[ok, 'mask_type'])}."))
    if ok.any():
        mfr2_maps = {name: cams_on_crop(*main[name], mfr2_crops[ok], mfr2_refs[ok])[1] for name in models}
        fig = cam_figure(mfr2_crops[ok], mfr2_maps, f"MFR2 real masks: {method} of the similarity to a no-mask photo", int(ok.sum()))
        study.save_figure(fig, "05_cams_mfr2")
        plt.show()
        mfr2_shares = pd.concat([attention_on_regions(m).mean().rename(name) for name, m in mfr2_maps.items()], axis=1).T
        display(Markdown("Shares on these few MFR2 photos (real masks do not follow the synthetic mask's outline; "
                         "illustration, not a measurement):"), mfr2_shares)

# %% [markdown]
# ## How much of the raw map falls on the eyes and on the mask

# %%
fig, ax = plt.subplots(1, 2, figsize=(5, 2.6))
mean_face = masked_crops.mean(axis=0).astype(np.uint8)
ax[0].imshow(mean_face); ax[0].set_title("mean masked probe", fontsize=8)
regions = np.zeros((CROP, CROP, 3)); regions[visible] = [0.2, 0.4, 0.9]; regions[band] = [0.1, 0.8, 0.2]; regions[covered] = [0.9, 0.2, 0.2]
ax[1].imshow(mean_face); ax[1].imshow(regions, alpha=0.45)
ax[1].set_title("eye band (green), mask (red),\nrest of the visible face (blue)", fontsize=7)
for a in ax:
    a.axis("off")
study.save_figure(fig, "05_regions")
plt.show()

per_seed = []
for (name, seed, kind, cam_method), maps in cams.items():
    shares = attention_on_regions(maps)
    per_seed.append({"model": name, "seed": seed, "method": cam_method, "input": kind, "images": int(shares["eye_share"].notna().sum()),
                     "eye_share": shares["eye_share"].mean(), "mask_share": shares["mask_share"].mean(),
                     "_eye": shares["eye_share"].to_numpy(), "_mask": shares["mask_share"].to_numpy()})
per_seed = pd.DataFrame(per_seed)
study.save_table(per_seed.drop(columns=["_eye", "_mask"]), "05_attention_seeds")

rows = []
for (name, cam_method, kind), part in per_seed.groupby(["model", "method", "input"], sort=False):
    eye = mean_interval(list(part["_eye"]), cfg["bootstrap_samples"], cfg["seed"])
    mask = mean_interval(list(part["_mask"]), cfg["bootstrap_samples"], cfg["seed"])
    rows.append({"model": name, "method": cam_method, "input": kind, "seeds": eye["seeds"], "images": eye["images"],
                 "interval": eye["interval"], "eye_share": eye["value"], "eye_ci_low": eye["ci_low"], "eye_ci_high": eye["ci_high"],
                 "mask_share": mask["value"], "mask_ci_low": mask["ci_low"], "mask_ci_high": mask["ci_high"]})
attention = pd.DataFrame(rows)
attention["eye_band_area_share"] = band.mean()
attention["mask_area_share"] = covered.mean()
attention = attention.merge(geometry[["model", "input_size", "grid"]], on="model", how="left")
study.save_table(attention, "05_attention_regions")
display(attention)


# %%
def paired_difference(name, kind, column, baseline):
    """``name`` minus ``baseline`` of a per-image share: over the seeds both have (>= 2), else over the main seed's images."""
    mine = per_seed[(per_seed["model"] == name) & (per_seed["input"] == kind) & (per_seed["method"] == method)].set_index("seed")
    base = per_seed[(per_seed["model"] == baseline) & (per_seed["input"] == kind) & (per_seed["method"] == method)].set_index("seed")
    common = [s for s in mine.index if s in base.index]
    if len(common) >= 2:
        out = mean_interval([mine.loc[s, column] - base.loc[s, column] for s in common], cfg["bootstrap_samples"], cfg["seed"])
    else:  # the same probes for both models: a paired bootstrap over images
        difference = mine.loc[cfg["seed"], column] - base.loc[cfg["seed"], column]
        out = mean_interval([difference], cfg["bootstrap_samples"], cfg["seed"])
    return out


differences = []
cam_pairs = [(m, baseline) for m in models if baseline is not None and m != baseline and m not in track.MODEL_NAMES]
for name, against in cam_pairs + track_pairs:
    for kind in ("masked", "unmasked"):
        for measure, column in (("eye_share", "_eye"), ("mask_share", "_mask")):
            d = paired_difference(name, kind, column, against)
            differences.append({"comparison": f"{name} - {against}", "model": name, "baseline": against, "method": method,
                                "input": kind, "measure": measure, "difference": d["value"], "ci_low": d["ci_low"],
                                "ci_high": d["ci_high"], "p_value": d["p_value"], "seeds": d["seeds"], "images": d["images"],
                                "interval": d["interval"]})
differences = pd.DataFrame(differences, columns=["comparison", "model", "baseline", "method", "input", "measure", "difference",
                                                 "ci_low", "ci_high", "p_value", "seeds", "images", "interval"])
# one family per input and measure: every CAM comparison of the run (from scratch and pretrained), Holm-corrected
differences["p_holm"] = np.nan
for _, part in differences.groupby(["input", "measure"]):
    finite = part[np.isfinite(part["p_value"])]
    if len(finite):
        differences.loc[finite.index, "p_holm"] = holm_adjust(finite["p_value"].to_numpy())
differences["separated"] = differences.apply(separated_after_holm, axis=1)
study.save_table(differences, "05_attention_differences")
display(differences)

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), sharey=True)
for ax, kind in zip(axes, ["masked", "unmasked"]):
    part = attention[(attention["input"] == kind) & (attention["method"] == method)]
    x = np.arange(len(part))
    ax.bar(x - 0.2, part["eye_share"], 0.4, yerr=[part["eye_share"] - part["eye_ci_low"], part["eye_ci_high"] - part["eye_share"]], capsize=3, label="eye band")
    ax.bar(x + 0.2, part["mask_share"], 0.4, yerr=[part["mask_share"] - part["mask_ci_low"], part["mask_ci_high"] - part["mask_share"]], capsize=3, label="mask region")
    ax.axhline(band.mean(), color="tab:blue", ls=":", lw=1, label="eye band's share of the crop")
    ax.axhline(covered.mean(), color="tab:orange", ls=":", lw=1, label="mask's share of the crop")
    ax.set_xticks(x, [f"{design.model_label(m)}\n({i})" for m, i in zip(part["model"], part["interval"].str.replace("bootstrap over ", "").str.replace("t over ", ""))], fontsize=7)
    ax.set_title(f"{kind} probes: share of raw {method} mass")
axes[0].set_ylabel("share of CAM mass (95% interval)")
axes[0].legend(fontsize=7, loc="upper center", bbox_to_anchor=(1.05, -0.25), ncol=4, frameon=False)  # below the bars
fig.tight_layout()
study.save_figure(fig, "05_attention_regions")
plt.show()

# %% [markdown]
# ## Faithfulness: deletion and insertion curves against controls
#
# For each model (main seed) and probe, pixels are blurred in the order of a ranking (deletion) or put back into
# the blurred crop in that order (insertion), and the similarity to the reference is followed. Rankings: the
# probe's own map (`cam`), the model's mean map over all probes (`mean_cam`), the fixed eye band (`eye_band`) and
# random blobs inside the visible face (`random_face`). The area is the curve's mean similarity: a faithful map
# has a smaller deletion area and a larger insertion area than every control.

# %%
k = min(cfg["faithfulness_images"], len(probes))
fractions = curve_fractions(cfg["faithfulness_steps"], cfg["faithfulness_max_fraction"])
curves, areas = [], []
for name in models:
    model, input_size = main[name]
    maps = cams[(name, cfg["seed"], "masked", method)]
    mean_map = (maps / np.maximum(maps.sum(axis=(1, 2), keepdims=True), 1e-12)).mean(axis=0)
    rankings = {"cam": maps[:k], **control_rankings(mean_map, k, seed=cfg["seed"])}
    print(f"curves: {name}", flush=True)
    table = explanations.deletion_insertion_curves(model, masked_crops[:k], reference_crops[:k], rankings, input_size, fractions, seed=cfg["seed"])
    curves.append(table.assign(model=name))
    areas.append(curve_areas(table).assign(model=name))
curves, areas = pd.concat(curves, ignore_index=True), pd.concat(areas, ignore_index=True)

summary = []
for (name, ranking, curve), part in areas.groupby(["model", "ranking", "curve"], sort=False):
    low, high = bootstrap_ci(part["area"].to_numpy(), n=cfg["bootstrap_samples"], seed=cfg["seed"])
    summary.append({"model": name, "ranking": ranking, "curve": curve, "images": len(part), "area": part["area"].mean(), "ci_low": low, "ci_high": high})
faith = pd.DataFrame(summary)
study.save_table(faith, "05_faithfulness")

contrasts = []
wide = areas.pivot_table(index=["model", "curve", "image"], columns="ranking", values="area")
for (name, curve), part in wide.groupby(level=["model", "curve"], sort=False):
    for control in CONTROL_RANKINGS:
        difference = (part["cam"] - part[control]).to_numpy()
        low, high = bootstrap_ci(difference, n=cfg["bootstrap_samples"], seed=cfg["seed"])
        better = high < 0 if curve == "deletion" else low > 0
        contrasts.append({"model": name, "control": control, "curve": curve, "images": len(difference), "difference": difference.mean(),
                          "ci_low": low, "ci_high": high, "cam_better": bool(better)})
contrasts = pd.DataFrame(contrasts)
study.save_table(contrasts, "05_faithfulness_contrasts")
mean_curves = curves.groupby(["model", "ranking", "curve", "fraction"], sort=False)["similarity"].agg(["mean", "count"]).reset_index()
study.save_table(mean_curves.rename(columns={"mean": "similarity", "count": "images"}), "05_faithfulness_curves")
display(faith, contrasts)

# %%
fig, axes = plt.subplots(2, len(models), figsize=(2.8 * len(models), 5.2), squeeze=False, sharex=True)
for col, name in enumerate(models):
    for row, curve in enumerate(["deletion", "insertion"]):
        ax = axes[row, col]
        for ranking in ["cam", *CONTROL_RANKINGS]:
            part = mean_curves[(mean_curves["model"] == name) & (mean_curves["ranking"] == ranking) & (mean_curves["curve"] == curve)]
            area = faith[(faith["model"] == name) & (faith["ranking"] == ranking) & (faith["curve"] == curve)]["area"].iloc[0]
            ax.plot(part["fraction"], part["mean"], marker=".", lw=2 if ranking == "cam" else 1, label=f"{ranking} ({area:.3f})")
        ax.set_title(f"{design.model_label(name)}: {curve}", fontsize=8); ax.legend(fontsize=6); ax.tick_params(labelsize=7)
    axes[1, col].set_xlabel("share of pixels blurred / restored", fontsize=7)
axes[0, 0].set_ylabel("cosine similarity to reference", fontsize=7); axes[1, 0].set_ylabel("cosine similarity to reference", fontsize=7)
fig.suptitle("Deletion (lower area = more faithful) and insertion (higher = more faithful); legend: mean area", fontsize=9)
fig.tight_layout()
study.save_figure(fig, "05_faithfulness_curves")
plt.show()

# %% [markdown]
# ## Sanity check: do the maps change when the weights are randomised?
#
# Adebayo et al. ("Sanity Checks for Saliency Maps", NeurIPS 2018): a map that stays the same when every weight is
# re-drawn does not explain the trained network. Spearman rank correlation between the trained and the
# randomised model's raw maps on the grid, per probe (near 1: the map ignores the weights).

# %%
s = min(cfg["cam_sanity_images"], len(probes))
sanity = []
for name in models:
    model, input_size = main[name]
    randomised = explanations.grid_cams(randomized_copy(model, seed=cfg["seed"]), masked_crops[:s], reference_crops[:s], input_size, method=method)
    rho = rank_correlation(grid_cams[(name, cfg["seed"], "masked", method)][:s], randomised)
    rho = rho[np.isfinite(rho)]
    low, high = bootstrap_ci(rho, n=cfg["bootstrap_samples"], seed=cfg["seed"]) if len(rho) else (np.nan, np.nan)
    sanity.append({"model": name, "method": method, "images": len(rho), "rank_correlation": rho.mean() if len(rho) else np.nan,
                   "ci_low": low, "ci_high": high})
sanity = pd.DataFrame(sanity)
study.save_table(sanity, "05_randomization_check")
sanity

# %% [markdown]
# ## The attention blocks read directly: how strongly they act, and CBAM's own spatial map
#
# Grad-CAM says where the similarity is sensitive; the attention blocks can also be read directly, on the same masked
# probes and on the same photos without masks:
#
# * **strength** of each block: `|A(x) - x| / |x|` between what enters its attention and what leaves it (the gate
#   included where there is one): 0 means the block does nothing, an SE block whose gates are all `g` has `1 - g`;
# * **CBAM's own spatial map** `Ms` (Woo et al. 2018) at every block, its mean weight on the eye band and on the mask
#   region, each cell at the centre of its receptive field on the crop. If CBAM learns to switch the mask off, the
#   mask region's weight falls when the mask is there (masked minus the same probes unmasked, paired by image;
#   intervals over seeds, Holm over every CBAM block of the run).

# %%
from maskstudy.explain.attention_readout import block_label, read_attention
from maskstudy.explain.attention_summary import (
    map_verdict,
    per_image_tables,
    spatial_differences,
    spatial_summary,
    strength_summary,
)

attended = {key: value for key, value in {**networks, **upper_networks}.items()
            if design.attention_block(key[0], cfg) != design.NO_ATTENTION}
strength_parts, spatial_parts, main_maps = [], [], {}
for (name, seed), (model, input_size) in attended.items():
    print(f"attention read directly: {design.run_name(name, seed, cfg)}", flush=True)
    readouts = {"masked": read_attention(model, masked_crops, input_size),
                "unmasked": read_attention(model, unmasked_crops, input_size)}
    per_strength, per_spatial = per_image_tables(name, seed, model, readouts, CROP)
    strength_parts += [per_strength] if len(per_strength) else []
    spatial_parts += [per_spatial] if len(per_spatial) else []
    if seed == cfg["seed"] and readouts["masked"].spatial:
        main_maps[name] = (model, readouts)
strength_images = pd.concat(strength_parts, ignore_index=True) if strength_parts else pd.DataFrame()
spatial_images = pd.concat(spatial_parts, ignore_index=True) if spatial_parts else pd.DataFrame()
strength = strength_summary(strength_images, cfg["bootstrap_samples"], cfg["seed"])
cbam_spatial = spatial_summary(spatial_images, cfg["bootstrap_samples"], cfg["seed"])
cbam_differences = spatial_differences(spatial_images, cfg["bootstrap_samples"], cfg["seed"])
study.save_table(strength, "05_attention_strength")
study.save_table(cbam_spatial, "05_cbam_spatial")
study.save_table(cbam_differences, "05_cbam_spatial_differences")
display(Markdown("**Strength** (mean over images; intervals over seeds):"),
        strength[strength["block"] == "all blocks"].round(4) if len(strength) else strength)

# %%
if len(strength):
    per_block = strength[strength["block"] != "all blocks"]
    shown_models = list(dict.fromkeys(per_block["model"]))
    fig, axes = plt.subplots(1, len(shown_models), figsize=(2.6 * len(shown_models), 3.0), squeeze=False, sharey=True)
    for ax, name in zip(axes[0], shown_models):
        part = per_block[per_block["model"] == name]
        blocks = list(dict.fromkeys(part["block"]))
        x = np.arange(len(blocks))
        for offset, kind in ((-0.2, "masked"), (0.2, "unmasked")):
            rows = part[part["input"] == kind].set_index("block").loc[blocks]
            ax.bar(x + offset, 100 * rows["strength"], 0.4, label=f"{kind} probes",
                   yerr=[100 * (rows["strength"] - rows["ci_low"]), 100 * (rows["ci_high"] - rows["strength"])], capsize=2)
        ax.set_xticks(x, [block_label(b).replace("stage ", "").replace(" block ", ".") for b in blocks], fontsize=6,
                      rotation=90)
        ax.set_title(design.model_label(name), fontsize=7)
    axes[0, 0].set_ylabel("|A(x) − x| / |x|  (%)")
    axes[0, 0].legend(fontsize=6)
    fig.suptitle("How strongly each attention block changes its input (stage.block; 95 % intervals)", fontsize=9)
    fig.tight_layout()
    study.save_figure(fig, "05_attention_strength")
    plt.show()

# %%
from maskstudy.explain.attention_readout import attention_blocks, block_centres

if main_maps:
    display(Markdown("**CBAM's spatial map**, mean over the probes (main seed), on the crop; green: eye band, red: "
                     "mask region. Each model's row pair: masked probes, then the same photos without masks."),
            cbam_differences[cbam_differences["block"] == "all blocks"].round(4))
    columns = max(len(readouts["masked"].spatial) for _, readouts in main_maps.values())
    fig, axes = plt.subplots(2 * len(main_maps), columns, figsize=(1.45 * columns, 1.55 * 2 * len(main_maps)),
                             squeeze=False)
    for row, (name, (model, readouts)) in enumerate(main_maps.items()):
        blocks = {b.name: b for b in attention_blocks(model)}
        for k, kind in enumerate(("masked", "unmasked")):
            ax_row = axes[2 * row + k]
            for col, (block, maps) in enumerate(readouts[kind].spatial.items()):
                mean_map = maps.mean(axis=0)
                on_crop = grid_to_crop(mean_map, block_centres(model, blocks[block], mean_map.shape, CROP), CROP)
                ax_row[col].imshow(on_crop, cmap="viridis", vmin=float(on_crop.min()), vmax=float(on_crop.max()) + 1e-6)
                ax_row[col].contour(band, levels=[0.5], colors="lime", linewidths=0.6)
                ax_row[col].contour(covered, levels=[0.5], colors="red", linewidths=0.6)
                ax_row[col].set_title(f"{block_label(block)}\n[{on_crop.min():.3f}, {on_crop.max():.3f}]", fontsize=5)
            ax_row[0].set_ylabel(f"{design.model_label(name)}\n{kind}", fontsize=6)
    for ax in axes.ravel():
        ax.set_xticks([]); ax.set_yticks([])
    fig.suptitle("CBAM's own spatial map per block (colour range per panel in brackets)", fontsize=9)
    fig.tight_layout()
    study.save_figure(fig, "05_cbam_spatial_maps")
    plt.show()

# %% [markdown]
# ## Verdict

# %%
from maskstudy.explain import attention_verdict

display(Markdown("**From scratch** (the seed study's setup at this profile's scale)"))
for name in [m for m in attention_models if m in models and m != baseline]:
    display(Markdown(attention_verdict(differences, contrasts, sanity, model=name, baseline=baseline, method=method)))
if track_pairs:
    display(Markdown("**Pretrained track** (dlib's ResNet-29 fine-tuned on masked faces; 17x17 grid)"))
    for name, against in track_pairs:
        display(Markdown(attention_verdict(differences, contrasts, sanity, model=name, baseline=against, method=method)))
if len(cbam_differences):
    display(Markdown("**CBAM's own spatial map**"))
    for name in dict.fromkeys(cbam_differences["model"]):
        display(Markdown(map_verdict(cbam_differences, cbam_spatial, name, label=design.model_label)))
