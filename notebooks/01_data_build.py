# %% [markdown]
# # 01 · Data build
#
# Finds the photos, fixes the evaluation protocol, detects every face with **MTCNN** (P-Net, R-Net, O-Net;
# Zhang et al. 2016), aligns it onto the ArcFace 112x112 template with a similarity transform of its 5
# landmarks, and draws a synthetic **masked twin** (`<name>_mask.jpg`, the seed study's naming) in one of
# several mask styles. Everything is recorded per image in a manifest; nothing in the source folders changes.
#
# * **Evaluation**: LFW View 2 (`pairs.txt`, 10 folds x 600 pairs).
# * **Training**: identity folders disjoint from the evaluated identities (CelebA when given, else the LFW
#   identities of the folds not evaluated). The split is written to files and shown below.

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

study = start_notebook("01_data_build", profile, run_dir, params)
cfg = study.config
display(Markdown(f"**Profile `{cfg['profile']}`**, run folder `{study.run_dir}`, data folder `{study.data_dir}`"))

# %% [markdown]
# ## Data sources

# %%
from pathlib import Path

from maskstudy.core import storage
from maskstudy.datasets.build import DataNotFoundError, find_dataset

lfw_root = find_dataset("lfw", cfg["lfw_root"])
if lfw_root is None:
    if not cfg["download_lfw"]:
        raise DataNotFoundError(
            "LFW not found: set MASKSTUDY_LFW (or the lfw_root parameter) to a folder holding the identity "
            "folders and pairs.txt, or allow the download with download_lfw=True")
    from maskstudy.datasets.download import fetch_lfw
    lfw_root = fetch_lfw(study.root / cfg["download_dir"])

extra = cfg["extra_datasets"]
if extra == "auto":
    celeba = find_dataset("celeba")
    extra = {"celeba": str(celeba)} if celeba else {}
extra = {name: Path(path) for name, path in (extra or {}).items()}
sources = {"lfw": str(lfw_root), **{k: str(v) for k, v in extra.items()}}
storage.write_json(study.data_dir / "sources.json", sources)
pd.DataFrame({"dataset": list(sources), "folder": list(sources.values())})

# %% [markdown]
# ## Protocol and split

# %%
from maskstudy.datasets.protocol import (
    identity_folds,
    make_split,
    read_lfw_pairs,
    read_lfw_people,
    scan_identity_folders,
)

lfw_pairs = read_lfw_pairs(lfw_root / "pairs.txt")
people = read_lfw_people(lfw_root / "people.txt") if (lfw_root / "people.txt").is_file() else None
folds = identity_folds(lfw_pairs, people)
if cfg["lfw_pairs_per_fold"]:  # smoke runs: the first k matched and k mismatched pairs of every fold
    k = int(cfg["lfw_pairs_per_fold"])
    lfw_pairs = lfw_pairs.groupby(["fold", "label"], group_keys=False).head(k).reset_index(drop=True)
lfw_images = scan_identity_folders(lfw_root)

rng = np.random.default_rng(cfg["seed"])

def subsample(images):
    """Seeded cap on identities and images per identity (the smoke profile uses it)."""
    if cfg["max_train_identities"]:
        identities = sorted(images["identity"].unique())
        chosen = rng.choice(identities, size=min(len(identities), cfg["max_train_identities"]), replace=False)
        images = images[images["identity"].isin(chosen)]
    if cfg["max_images_per_identity"]:
        images = images.groupby("identity", group_keys=False).head(cfg["max_images_per_identity"])
    return images.reset_index(drop=True)

extra_images = {name: subsample(scan_identity_folders(path)) for name, path in extra.items()}
split = make_split(lfw_images, lfw_pairs, folds, extra_images, eval_folds=cfg["eval_folds"])
if not extra_images:
    split.train = subsample(split.train)
split.save(study.data_dir / "split")
display(Markdown(f"**Protocol `{split.protocol}`.** {split.description}"))
split_table = pd.DataFrame([{"protocol": split.protocol, **{k: v for k, v in split.counts().items() if k != "train_by_dataset"}}])
study.save_table(split_table, "01_split")
split_table

# %% [markdown]
# ## Detection, alignment and masked twins
#
# Images needed by the split (the evaluated pairs and the training set) go through batched MTCNN. The manifest
# caches every result keyed by the file's SHA-1, so a re-run only detects new or changed images and an
# interrupted run resumes. For the evaluation set (deep-funneled LFW) an image without a usable face is still
# aligned, with the median landmarks of the detected faces, and marked `aligned_by = fallback`, so that every
# protocol pair stays evaluable; cleaning (notebook 02) keeps such images out of training.

# %%
import time

from maskstudy.datasets.build import BuildSettings, build_aligned_dataset

settings = BuildSettings.from_config(cfg)
eval_images = split.eval_images
jobs = {}
for name in sources:
    train_part = split.train[split.train["dataset"] == name][["identity", "image"]]
    wanted = pd.concat([eval_images, train_part]) if name == "lfw" else train_part
    jobs[name] = wanted.drop_duplicates("image").sort_values("image").reset_index(drop=True)

manifests, timings = {}, []
for name, wanted in jobs.items():
    began = time.perf_counter()
    manifests[name] = build_aligned_dataset(
        name, sources[name], wanted, study.data_dir, settings, batch_size=cfg["detect_batch_size"],
        fallback_alignment=(name == "lfw"), save_masked_photos=cfg["save_masked_photos"],
        mask_styles=tuple(cfg["mask_styles"]))
    timings.append({"dataset": name, "images": len(wanted), "seconds": round(time.perf_counter() - began, 1)})
manifest = pd.concat(manifests.values(), ignore_index=True)
timing_table = pd.DataFrame(timings)
timing_table["images_per_s"] = (timing_table["images"] / timing_table["seconds"].clip(lower=1e-3)).round(1)
study.save_table(timing_table, "01_detection_time")
timing_table

# %% [markdown]
# ## What the detector found

# %%
status = manifest.groupby(["dataset", "status"]).size().unstack(fill_value=0)
status["total"] = status.sum(axis=1)
status_table = status.reset_index()
fallback = manifest[manifest["aligned_by"] == "fallback"].groupby("dataset").size().rename("fallback_aligned")
status_table = status_table.merge(fallback.reset_index(), on="dataset", how="left").fillna({"fallback_aligned": 0})
study.save_table(status_table, "01_detection_status")
notes = manifest.loc[manifest["load_notes"].fillna("") != "", ["dataset", "image", "load_notes"]]
display(status_table)
if len(notes):
    display(Markdown(f"{len(notes)} images needed a conversion on load:"), notes.head(20))

# %%
from maskstudy.faces.detect import STATUSES

fig, ax = plt.subplots(figsize=(8, 1.4 + 0.5 * len(status)))
status.drop(columns="total").rename(columns=STATUSES).plot.barh(stacked=True, ax=ax, colormap="tab10", legend=False)
for row, counts in enumerate(status.to_dict("records")):
    missed = int(counts["total"] - counts.get("ok", 0))
    ax.annotate(f"{missed:,} of {int(counts['total']):,} without a usable face ({100 * missed / counts['total']:.1f} %)",
                (counts["total"], row), xytext=(5, 0), textcoords="offset points", va="center", fontsize=8)
ax.set_xlim(0, 1.6 * status["total"].max()); ax.set_ylabel("")
ax.set_xlabel("photos"); ax.set_title("MTCNN outcome per dataset")
ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=2, fontsize=8, frameon=False)  # below: covers no bar
study.save_figure(fig, "01_detection_status")
plt.show()

# %%
from maskstudy.report.figures import detection_grid, image_grid

shown = []
for name in sources:
    ok = manifest[(manifest["dataset"] == name) & (manifest["status"] == "ok")]
    shown.append((name, ok.sample(min(6, len(ok)), random_state=cfg["seed"])))
for name, sample in shown:
    if len(sample):
        fig = detection_grid(sample.to_dict("records"), sources, ncols=6,
                             titles=[f"p={p:.3f}" for p in sample["prob"]],
                             suptitle=f"{name}: chosen face, 5 landmarks, box centre (+) and eye centre (x)")
        study.save_figure(fig, f"01_detections_{name}")
        plt.show()

# %%
ok = manifest[manifest["status"] == "ok"].sample(min(8, int((manifest["status"] == "ok").sum())), random_state=cfg["seed"])
aligned_root = lambda row: study.data_dir / row["dataset"] / "aligned"
images, titles = [], []
for row in ok.to_dict("records"):
    images += [aligned_root(row) / row["aligned"], aligned_root(row) / row["masked"]]
    titles += [row["identity"][:14], row["mask_style"]]
fig = image_grid(images, titles, ncols=8, suptitle="Aligned 112x112 crops and their masked twins")
study.save_figure(fig, "01_aligned_and_masked")
plt.show()

# %%
if cfg["save_masked_photos"] and len(ok):
    photos = [study.data_dir / r["dataset"] / "masked_photos" / r["masked"] for r in ok.head(6).to_dict("records")]
    fig = image_grid(photos, [r["mask_style"] for r in ok.head(6).to_dict("records")], ncols=6, size=2.0,
                     suptitle="Masked photos (full frame): what a recognizer meets in the wild")
    study.save_figure(fig, "01_masked_photos")
    plt.show()

# %% [markdown]
# ## Masked evaluation photos as a user meets them
#
# The twins above are aligned with the *clean* photo's landmarks: an idealised test. For every evaluation image
# the masked photo is also **detected and aligned by itself** (MTCNN on the masked photo, as `FaceRecognizer`
# does; photos without a usable face get its centre-crop fallback), once with the usual 5-point fit and once with
# eye-weighted landmarks, and a twin is drawn in a mask style the models **never see in training**.

# %%
from maskstudy.datasets.masked_photos import build_masked_variants, detection_summary

detector = settings.detector()  # one MTCNN for both builds, with the profile's detection settings
if cfg["masked_variants"]:
    began = time.perf_counter()
    eval_rows = manifests["lfw"][manifests["lfw"]["image"].isin(set(eval_images["image"]))]
    variants = build_masked_variants(
        eval_rows, sources["lfw"], study.data_dir / "lfw",
        detector, seed=cfg["seed"],
        crop_size=cfg["crop_size"], styles=tuple(cfg["mask_styles"]), unseen_styles=tuple(cfg["unseen_mask_styles"]),
        batch_size=cfg["detect_batch_size"])
    timing_table = pd.concat([timing_table, pd.DataFrame([{
        "dataset": "lfw masked variants", "images": len(eval_rows), "seconds": round(time.perf_counter() - began, 1)}])])
    timing_table["images_per_s"] = (timing_table["images"] / timing_table["seconds"].clip(lower=1e-3)).round(1)
    study.save_table(timing_table, "01_detection_time")
    masked_detection = detection_summary(variants)
    study.save_table(masked_detection, "01_masked_detection")
    display(Markdown("**MTCNN on masked evaluation photos** (found: a face above the probability threshold; "
                     "misplaced: landmarks more than 0.25 inter-ocular distances from the clean photo's, on average):"),
            masked_detection)
    sample = variants[variants["unseen_style"] != ""].sample(min(6, len(variants)), random_state=cfg["seed"])
    root = study.data_dir / "lfw" / "aligned"
    from maskstudy.datasets.masked_photos import variant_name
    from maskstudy.study.design import variant_titles

    images, titles = [], []
    for row in sample.to_dict("records"):
        for variant, title in variant_titles(row["seen_style"], row["unseen_style"]).items():
            images.append(root / variant_name(row["aligned"], variant))
            titles.append(title)
    fig = image_grid(images, titles, ncols=5, size=1.8,
                     suptitle="Masked crops: shared alignment, detected on the masked photo, unseen styles")
    study.save_figure(fig, "01_masked_variants")
    plt.show()
else:
    display(Markdown("*`masked_variants` is off: the detected-on-masked-photo and unseen-style scenarios are skipped.*"))
if cfg["detected_twins_run"]:  # training twins detected on the masked photo, for the run that trains on them
    for name in sources:
        train_rows = manifests[name][manifests[name]["image"].isin(set(split.train[split.train["dataset"] == name]["image"]))]
        if len(train_rows):
            began = time.perf_counter()
            build_masked_variants(train_rows, sources[name], study.data_dir / name, detector, seed=cfg["seed"],
                                  crop_size=cfg["crop_size"], styles=tuple(cfg["mask_styles"]), unseen_styles=(),
                                  batch_size=cfg["detect_batch_size"])
            timing_table = pd.concat([timing_table, pd.DataFrame([{
                "dataset": f"{name} detected training twins", "images": len(train_rows),
                "seconds": round(time.perf_counter() - began, 1)}])])
    timing_table["images_per_s"] = (timing_table["images"] / timing_table["seconds"].clip(lower=1e-3)).round(1)
    study.save_table(timing_table, "01_detection_time")

# %% [markdown]
# Outputs: `manifest.csv` per dataset, aligned crops and masked twins under `aligned/`, the split under `split/`, all in the data folder shown at the top.
