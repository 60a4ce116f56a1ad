# %% [markdown]
# # 05 · Grad-CAM analysis
#
# Where does each network look when it matches a **masked** face to the same person's **unmasked** photo?
# Grad-CAM (Selvaraju et al., ICCV 2017, via pytorch-grad-cam) is computed on the embedding networks with a target
# that is the cosine similarity between the probe's embedding and the embedding of the person's unmasked reference
# photo; for IR-ResNets the last stage (`layer4`), for transformers the last block's first LayerNorm with a
# token-to-grid reshape. Autocast is off while computing CAMs.
#
# Beyond pictures, two numbers: the **share of CAM mass** in the eye band versus the mask region (from the aligned
# template's geometry and the synthetic mask's polygon), over many evaluation faces with bootstrap intervals; and
# a **faithfulness check**: how much the similarity drops when the most-attended 10 % of pixels are blurred,
# against blurring a random region of the same size.

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

study = start_notebook("05_gradcam_analysis", profile, run_dir, params)
cfg = study.config
display(Markdown(f"**Profile `{cfg['profile']}`**, run folder `{study.run_dir}`, data folder `{study.data_dir}`"))

# %%
from maskstudy.data import read_manifest
from maskstudy.evaluate import backbone_from_checkpoint, bootstrap_ci, load_checkpoint
from maskstudy.explain import attention_on_regions, compute_cams, deletion_check, eye_band_mask, mask_region, overlay
from maskstudy.preprocess import load_crops
from maskstudy.protocol import Split

checkpoints = {name: study.outputs / "checkpoints" / name / "last.pt" for name in ["plain", "se", "cbam", "vit", "hybrid"]}
missing = [n for n in ["plain", "se", "cbam"] if not checkpoints[n].is_file()]
if missing:
    raise FileNotFoundError(f"checkpoints of {missing} are missing under {study.outputs / 'checkpoints'}: run notebook 03 first")
skipped = [n for n, p in checkpoints.items() if not p.is_file()]
if skipped:
    display(Markdown(f"*No checkpoint for {skipped} (notebook 04 not run): they are left out.*"))
networks = {}
for name, path in checkpoints.items():
    if path.is_file():
        checkpoint = load_checkpoint(path)
        networks[name] = (backbone_from_checkpoint(checkpoint, path), int(checkpoint["config"]["input_size"]))

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
cams = {}
for name, (model, input_size) in networks.items():
    print(f"Grad-CAM: {name}", flush=True)
    cams[name] = {
        "masked": compute_cams(model, masked_crops, reference_crops, input_size, method=cfg["cam_method"]),
        "unmasked": compute_cams(model, unmasked_crops, reference_crops, input_size, method=cfg["cam_method"]),
        "side": compute_cams(model, side_crops, side_references, input_size, method=cfg["cam_method"]) if len(side) else None,
    }


# %% [markdown]
# ## Where the networks look

# %%
def cam_figure(crops, maps, title, n):
    names = list(maps)
    fig, axes = plt.subplots(n, len(names) + 1, figsize=(1.7 * (len(names) + 1), 1.8 * n), squeeze=False)
    for row in range(n):
        axes[row, 0].imshow(crops[row]); axes[row, 0].set_title("input" if row == 0 else "", fontsize=8)
        for col, name in enumerate(names, start=1):
            axes[row, col].imshow(overlay(crops[row], maps[name][row]))
            if row == 0:
                axes[row, col].set_title(name, fontsize=8)
    for ax in axes.ravel():
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig

n = min(cfg["cam_examples"], len(probes))
for kind, crops, title in [("masked", masked_crops, "Masked probes: Grad-CAM of the similarity to the unmasked reference"),
                           ("unmasked", unmasked_crops, "The same probes without masks")]:
    fig = cam_figure(crops, {name: cams[name][kind] for name in networks}, title, n)
    study.save_figure(fig, f"05_cams_{kind}")
    plt.show()
if len(side):
    fig = cam_figure(side_crops, {name: cams[name]["side"] for name in networks}, "Side faces (removed by cleaning): attention fails", len(side))
    study.save_figure(fig, "05_cams_side_faces")
    plt.show()

# %% [markdown]
# ## How much attention falls on the eyes and on the mask

# %%
eye, mouth = eye_band_mask(112), mask_region(112)
fig, ax = plt.subplots(1, 2, figsize=(5, 2.6))
mean_face = masked_crops.mean(axis=0).astype(np.uint8)
ax[0].imshow(mean_face); ax[0].set_title("mean masked probe", fontsize=8)
regions = np.zeros((112, 112, 3)); regions[eye] = [0.1, 0.8, 0.2]; regions[mouth] = [0.9, 0.2, 0.2]
ax[1].imshow(mean_face); ax[1].imshow(regions, alpha=0.45); ax[1].set_title("eye band (green), mask region (red)", fontsize=8)
for a in ax:
    a.axis("off")
study.save_figure(fig, "05_regions")
plt.show()

rows = []
for name in networks:
    for kind in ("masked", "unmasked", "side"):
        if cams[name][kind] is None:
            continue
        shares = attention_on_regions(cams[name][kind]).dropna()
        eye_ci = bootstrap_ci(shares["eye_share"].to_numpy(), n=cfg["bootstrap_samples"], seed=cfg["seed"])
        mask_ci = bootstrap_ci(shares["mask_share"].to_numpy(), n=cfg["bootstrap_samples"], seed=cfg["seed"])
        rows.append({"model": name, "input": kind, "images": len(shares),
                     "eye_share": shares["eye_share"].mean(), "eye_ci_low": eye_ci[0], "eye_ci_high": eye_ci[1],
                     "mask_share": shares["mask_share"].mean(), "mask_ci_low": mask_ci[0], "mask_ci_high": mask_ci[1]})
attention = pd.DataFrame(rows)
attention["eye_band_area_share"] = eye.mean()
attention["mask_area_share"] = mouth.mean()
study.save_table(attention, "05_attention_regions")
attention

# %%
fig, ax = plt.subplots(figsize=(8, 3.4))
part = attention[attention["input"] == "masked"]
x = np.arange(len(part))
ax.bar(x - 0.2, part["eye_share"], 0.4, yerr=[part["eye_share"] - part["eye_ci_low"], part["eye_ci_high"] - part["eye_share"]], capsize=3, label="eye band")
ax.bar(x + 0.2, part["mask_share"], 0.4, yerr=[part["mask_share"] - part["mask_ci_low"], part["mask_ci_high"] - part["mask_share"]], capsize=3, label="mask region")
ax.axhline(eye.mean(), color="tab:blue", ls=":", lw=1, label="eye band's share of the crop area")
ax.axhline(mouth.mean(), color="tab:orange", ls=":", lw=1, label="mask's share of the crop area")
ax.set_xticks(x, part["model"]); ax.set_ylabel("share of CAM mass (95% CI)"); ax.set_title("Masked probes: where the CAM mass lies")
ax.legend(fontsize=7)
fig.tight_layout()
study.save_figure(fig, "05_attention_regions")
plt.show()

# %% [markdown]
# ## Faithfulness: blur what the CAM points at, or a random region of the same size

# %%
k = min(cfg["faithfulness_images"], len(probes))
faith = []
for name, (model, input_size) in networks.items():
    check = deletion_check(model, masked_crops[:k], reference_crops[:k], cams[name]["masked"][:k], input_size, seed=cfg["seed"])
    difference = (check["drop_top"] - check["drop_random"]).to_numpy()
    ci = bootstrap_ci(difference, n=cfg["bootstrap_samples"], seed=cfg["seed"])
    faith.append({"model": name, "images": k, "drop_top_cam": check["drop_top"].mean(), "drop_random": check["drop_random"].mean(),
                  "difference": difference.mean(), "ci_low": ci[0], "ci_high": ci[1], "share_top_larger": float((difference > 0).mean())})
faith = pd.DataFrame(faith)
study.save_table(faith, "05_faithfulness")
display(faith)
display(Markdown("A positive difference with an interval above 0 means the CAM points at pixels the match really depends on."))
