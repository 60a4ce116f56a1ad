# %% [markdown]
# # 02 · MTCNN cleaning
#
# The seed study's rule: a face whose **eye centre** (mean of the two eye landmarks) deviates too far from the
# **centre of the detection window** is a side face, and side faces mislead attention, so they leave the
# training set. The deviation rate is `|eye_x - box_centre_x| / box_width`. A landmark-only yaw estimate is
# reported beside it. Cleaning only writes a new manifest (`cleaned.csv`) with a `keep` column and a
# `drop_reason`; the photos and the detection manifest are never changed or deleted.
#
# The evaluation pairs follow the official protocol and keep all their pairs; pair files for the three
# scenarios unmasked–unmasked, masked–unmasked and masked–masked are written here.

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

study = start_notebook("02_mtcnn_cleaning", profile, run_dir, params)
cfg = study.config
display(Markdown(f"**Profile `{cfg['profile']}`**, run folder `{study.run_dir}`, data folder `{study.data_dir}`"))

# %%
import json

from maskstudy.core import storage
from maskstudy.datasets.build import read_manifest
from maskstudy.datasets.cleaning import clean_manifest, cleaning_summary
from maskstudy.datasets.protocol import Split

sources_file = study.data_dir / "sources.json"
if not sources_file.is_file():
    raise FileNotFoundError(f"{sources_file} is missing: run notebook 01 (data build) first")
sources = json.loads(sources_file.read_text())
manifest = pd.concat([read_manifest(study.data_dir / name / "manifest.csv") for name in sources], ignore_index=True)
split = Split.load(study.data_dir / "split")
cleaned = clean_manifest(manifest, max_deviation=cfg["max_deviation"], min_prob=cfg["min_prob"])
for name, part in cleaned.groupby("dataset"):
    storage.write_csv(study.data_dir / name / "cleaned.csv", part)
display(Markdown(f"Side-face threshold: deviation rate > **{cfg['max_deviation']}**; minimum face probability **{cfg['min_prob']}**."))

# %% [markdown]
# ## Counts per reason

# %%
summary = cleaning_summary(cleaned)
study.save_table(summary, "02_cleaning_summary")
summary

# %% [markdown]
# ## Deviation rate and yaw

# %%
detected = cleaned[cleaned["deviation_rate"].notna() & (cleaned["status"] == "ok")]
fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
for name, part in detected.groupby("dataset"):
    axes[0].hist(part["deviation_rate"], bins=np.linspace(0, max(0.4, detected["deviation_rate"].max()), 60),
                 alpha=0.6, label=f"{name} (n={len(part)})", density=True)
axes[0].axvline(cfg["max_deviation"], color="red", ls="--", label=f"threshold {cfg['max_deviation']}")
axes[0].set_xlabel("deviation rate |eye centre - box centre| / box width"); axes[0].set_ylabel("density")
axes[0].legend(); axes[0].set_title("Eye-centre deviation from the detection window's centre")
colors = np.where(detected["deviation_rate"] > cfg["max_deviation"], "tab:red", "tab:blue")
axes[1].scatter(detected["yaw_deg"], detected["deviation_rate"], s=3, c=colors, alpha=0.5)
axes[1].axhline(cfg["max_deviation"], color="red", ls="--")
axes[1].set_xlabel("yaw estimate from landmarks (degrees)"); axes[1].set_ylabel("deviation rate")
axes[1].set_title("Deviation rate against estimated yaw (red: removed)")
fig.tight_layout()
study.save_figure(fig, "02_deviation_rate")
plt.show()
corr = detected[["deviation_rate", "yaw_deg"]].assign(abs_yaw=detected["yaw_deg"].abs()).corr(method="spearman").loc["deviation_rate", "abs_yaw"]
display(Markdown(f"Spearman correlation of the deviation rate with |yaw|: **{corr:.2f}** over {len(detected)} detected faces."))

# %% [markdown]
# ## Kept frontal faces and removed side faces

# %%
from maskstudy.report.figures import detection_grid, image_grid

kept = detected[detected["keep"]].sample(min(12, int(detected["keep"].sum())), random_state=cfg["seed"])
side = cleaned[cleaned["drop_reason"] == "side_face"].sort_values("deviation_rate", ascending=False).head(12)
for title, rows, name in [("Kept: frontal faces", kept, "02_kept_frontal"), ("Removed: side faces", side, "02_removed_side")]:
    if len(rows) == 0:
        display(Markdown(f"*{title}: none in this run.*"))
        continue
    records = rows.to_dict("records")
    fig = detection_grid(records, sources, ncols=6, suptitle=f"{title} (box centre +, eye centre x)",
                         titles=[f"{r['dataset']} dev={r['deviation_rate']:.2f} yaw={r['yaw_deg']:.0f}" for r in records])
    study.save_figure(fig, name)
    plt.show()

# %% [markdown]
# ## Masked twins per style

# %%
ok = cleaned[(cleaned["status"] == "ok") & cleaned["keep"]]
styles = sorted(ok["mask_style"].unique())
images, titles = [], []
for style in styles:
    for row in ok[ok["mask_style"] == style].sample(min(6, int((ok["mask_style"] == style).sum())), random_state=cfg["seed"]).to_dict("records"):
        images.append(study.data_dir / row["dataset"] / "aligned" / row["masked"])
        titles.append(style)
fig = image_grid(images, titles, ncols=6, suptitle="Masked twins, by mask style")
study.save_figure(fig, "02_mask_styles")
plt.show()
style_table = ok.groupby(["dataset", "mask_style"]).size().rename("images").reset_index()
study.save_table(style_table, "02_mask_styles")
style_table

# %% [markdown]
# ## Verification pairs
#
# `a b 1|0` per line, paths relative to the dataset's `aligned/` folder. LFW pairs come from `pairs.txt` (same
# folds, same labels, same order) in three scenarios; in masked–unmasked exactly one image of each pair wears the
# mask, which one is chosen per pair from the seed. For each training identity-folder set, balanced pairs are
# generated in identity-disjoint folds from the images that cleaning kept (for validation during training).

# %%
from maskstudy.datasets.pairs import (
    SCENARIOS,
    VARIANT_SCENARIOS,
    generate_pairs,
    scenario_pairs,
    variant_scenario_pairs,
    write_pair_folds,
    write_pairs,
)
from maskstudy.train.data import TRAIN_LIST_COLUMNS

to_jpg = lambda s: s.str.replace(r"\.[^.]+$", ".jpg", regex=True)
pair_counts = []
lfw_pairs = split.eval_pairs.assign(image_a=to_jpg(split.eval_pairs["image_a"]), image_b=to_jpg(split.eval_pairs["image_b"]))
for scenario in SCENARIOS:
    pairs = scenario_pairs(lfw_pairs, scenario, seed=cfg["seed"])
    write_pairs(pairs, study.data_dir / "lfw" / "pairs" / f"{scenario}.txt")
    write_pair_folds(pairs, study.data_dir / "lfw" / "pairs" / f"{scenario}.csv")
    pair_counts.append({"dataset": "lfw", "scenario": scenario, "pairs": len(pairs), "positive": int(pairs["label"].sum()),
                        "folds": pairs["fold"].nunique()})
if cfg["masked_variants"] and (study.data_dir / "lfw" / "masked_variants.csv").is_file():
    # the same pairs and masked sides, with masked crops detected on the masked photo or in unseen styles
    for scenario in VARIANT_SCENARIOS:
        pairs = variant_scenario_pairs(lfw_pairs, scenario, seed=cfg["seed"])
        write_pair_folds(pairs, study.data_dir / "lfw" / "pairs" / f"{scenario}.csv")
        pair_counts.append({"dataset": "lfw", "scenario": scenario, "pairs": len(pairs),
                            "positive": int(pairs["label"].sum()), "folds": pairs["fold"].nunique()})
kept_train = cleaned[cleaned["keep"]].merge(split.train[["dataset", "image"]], on=["dataset", "image"])
for name, part in kept_train.groupby("dataset"):
    if name == "lfw":
        continue
    generated = generate_pairs(part[["identity", "aligned"]].rename(columns={"aligned": "image"}),
                               pairs_per_fold=cfg["generated_pairs_per_fold"], seed=cfg["seed"])
    for scenario in SCENARIOS:
        pairs = scenario_pairs(generated, scenario, seed=cfg["seed"])
        write_pairs(pairs, study.data_dir / name / "pairs" / f"{scenario}.txt")
        write_pair_folds(pairs, study.data_dir / name / "pairs" / f"{scenario}.csv")
        pair_counts.append({"dataset": name, "scenario": scenario, "pairs": len(pairs), "positive": int(pairs["label"].sum()),
                            "folds": pairs["fold"].nunique()})
storage.write_csv(study.data_dir / "split" / "train_clean.csv", kept_train[TRAIN_LIST_COLUMNS])
pair_table = pd.DataFrame(pair_counts)
study.save_table(pair_table, "02_pairs")
pair_table

# %%
flags = cleaned.set_index(["dataset", "image"])
def flag(images, column):
    return flags.loc[[("lfw", i) for i in images], column].to_numpy()
eval_quality = pd.DataFrame({
    "pairs": [len(split.eval_pairs)],
    "with a fallback-aligned image": [int(((flag(split.eval_pairs["image_a"], "aligned_by") == "fallback") | (flag(split.eval_pairs["image_b"], "aligned_by") == "fallback")).sum())],
    "with a side face": [int(((flag(split.eval_pairs["image_a"], "drop_reason") == "side_face") | (flag(split.eval_pairs["image_b"], "drop_reason") == "side_face")).sum())],
})
study.save_table(eval_quality, "02_eval_pair_quality")
display(Markdown("Evaluation pairs are never dropped (the protocol is fixed); this is how many involve an image that cleaning flags:"), eval_quality)
display(Markdown(f"Training images kept after cleaning: **{len(kept_train)}** of {len(split.train)}."))
