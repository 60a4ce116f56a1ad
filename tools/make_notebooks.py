"""Writes the study notebooks (without outputs) from the cell sources below.

The notebooks in notebooks/ are the source of truth for users; this script is how their skeleton was made and
keeps the shared first cells identical. Run: python tools/make_notebooks.py
"""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parent.parent

PARAMETERS = '''# Parameters: papermill replaces this cell's values. In JupyterLab leave them as they are: the profile's
# defaults apply (profile None = gpu when CUDA is present, else cpu); put overrides in `params`.
profile = None
run_dir = None
params = {}'''


def setup(name: str) -> str:
    return f'''%matplotlib inline
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import Markdown, display

from maskstudy.pipeline import start_notebook

study = start_notebook("{name}", profile, run_dir, params)
cfg = study.config
display(Markdown(f"**Profile `{{cfg['profile']}}`**, run folder `{{study.run_dir}}`, data folder `{{study.data_dir}}`"))'''


def notebook(name: str, cells: list) -> None:
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    built = []
    for kind, source in cells:
        if kind == "md":
            built.append(new_markdown_cell(source))
        else:
            cell = new_code_cell(source)
            if kind == "parameters":
                cell.metadata["tags"] = ["parameters"]
            built.append(cell)
    nb.cells = built
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"{name[:2]}-{i:02d}"
    nbformat.write(nb, ROOT / "notebooks" / f"{name}.ipynb")


NB01 = [
    ("md", """# 01 · Data build

Finds the photos, fixes the evaluation protocol, detects every face with **MTCNN** (P-Net, R-Net, O-Net;
Zhang et al. 2016), aligns it onto the ArcFace 112x112 template with a similarity transform of its 5
landmarks, and draws a synthetic **masked twin** (`<name>_mask.jpg`, the seed study's naming) in one of
several mask styles. Everything is recorded per image in a manifest; nothing in the source folders changes.

* **Evaluation**: LFW View 2 (`pairs.txt`, 10 folds x 600 pairs).
* **Training**: identity folders disjoint from the evaluated identities (CelebA when given, else the LFW
  identities of the folds not evaluated). The split is written to files and shown below."""),
    ("parameters", PARAMETERS),
    ("code", setup("01_data_build")),
    ("md", "## Data sources"),
    ("code", '''from pathlib import Path

from maskstudy import storage
from maskstudy.data import DataNotFoundError, find_dataset

lfw_root = find_dataset("lfw", cfg["lfw_root"])
if lfw_root is None:
    if not cfg["download_lfw"]:
        raise DataNotFoundError(
            "LFW not found: set MASKSTUDY_LFW (or the lfw_root parameter) to a folder holding the identity "
            "folders and pairs.txt, or allow the download with download_lfw=True")
    from maskstudy.download import fetch_lfw
    lfw_root = fetch_lfw(study.root / cfg["download_dir"])

extra = cfg["extra_datasets"]
if extra == "auto":
    celeba = find_dataset("celeba")
    extra = {"celeba": str(celeba)} if celeba else {}
extra = {name: Path(path) for name, path in (extra or {}).items()}
sources = {"lfw": str(lfw_root), **{k: str(v) for k, v in extra.items()}}
storage.write_json(study.data_dir / "sources.json", sources)
pd.DataFrame({"dataset": list(sources), "folder": list(sources.values())})'''),
    ("md", "## Protocol and split"),
    ("code", '''from maskstudy.protocol import identity_folds, make_split, read_lfw_pairs, read_lfw_people, scan_identity_folders

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
split_table'''),
    ("md", """## Detection, alignment and masked twins

Images needed by the split (the evaluated pairs and the training set) go through batched MTCNN. The manifest
caches every result keyed by the file's SHA-1, so a re-run only detects new or changed images and an
interrupted run resumes. For the evaluation set (deep-funneled LFW) an image without a usable face is still
aligned, with the median landmarks of the detected faces, and marked `aligned_by = fallback`, so that every
protocol pair stays evaluable; cleaning (notebook 02) keeps such images out of training."""),
    ("code", '''import time
from maskstudy.data import BuildSettings, build_aligned_dataset

settings = BuildSettings(crop_size=cfg["crop_size"], min_face_size=cfg["min_face_size"], min_prob=cfg["min_prob"], seed=cfg["seed"])
eval_images = pd.DataFrame({
    "identity": pd.concat([split.eval_pairs["identity_a"], split.eval_pairs["identity_b"]]),
    "image": pd.concat([split.eval_pairs["image_a"], split.eval_pairs["image_b"]]),
}).drop_duplicates("image")
jobs = {}
for name, root in sources.items():
    train_part = split.train[split.train["dataset"] == name][["identity", "image"]]
    wanted = pd.concat([eval_images, train_part]) if name == "lfw" else train_part
    jobs[name] = wanted.drop_duplicates("image").sort_values("image").reset_index(drop=True)

manifests, timings = {}, []
for name, wanted in jobs.items():
    began = time.perf_counter()
    manifests[name] = build_aligned_dataset(
        name, sources[name], wanted, study.data_dir, settings, batch_size=cfg["detect_batch_size"],
        fallback_alignment=(name == "lfw"), save_masked_photos=cfg["save_masked_photos"])
    timings.append({"dataset": name, "images": len(wanted), "seconds": round(time.perf_counter() - began, 1)})
manifest = pd.concat(manifests.values(), ignore_index=True)
timing_table = pd.DataFrame(timings)
timing_table["images_per_s"] = (timing_table["images"] / timing_table["seconds"].clip(lower=1e-3)).round(1)
study.save_table(timing_table, "01_detection_time")
timing_table'''),
    ("md", "## What the detector found"),
    ("code", '''status = manifest.groupby(["dataset", "status"]).size().unstack(fill_value=0)
status["total"] = status.sum(axis=1)
status_table = status.reset_index()
fallback = manifest[manifest["aligned_by"] == "fallback"].groupby("dataset").size().rename("fallback_aligned")
status_table = status_table.merge(fallback.reset_index(), on="dataset", how="left").fillna({"fallback_aligned": 0})
study.save_table(status_table, "01_detection_status")
notes = manifest.loc[manifest["load_notes"].fillna("") != "", ["dataset", "image", "load_notes"]]
display(status_table)
if len(notes):
    display(Markdown(f"{len(notes)} images needed a conversion on load:"), notes.head(20))'''),
    ("code", '''fig, ax = plt.subplots(figsize=(7, 2.8))
status.drop(columns="total").plot.barh(stacked=True, ax=ax, colormap="tab10")
ax.set_xlabel("images"); ax.set_title("MTCNN outcome per dataset")
study.save_figure(fig, "01_detection_status")
plt.show()'''),
    ("code", '''from maskstudy.figures import detection_grid, image_grid

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
        plt.show()'''),
    ("code", '''ok = manifest[manifest["status"] == "ok"].sample(min(8, int((manifest["status"] == "ok").sum())), random_state=cfg["seed"])
aligned_root = lambda row: study.data_dir / row["dataset"] / "aligned"
images, titles = [], []
for row in ok.to_dict("records"):
    images += [aligned_root(row) / row["aligned"], aligned_root(row) / row["masked"]]
    titles += [row["identity"][:14], row["mask_style"]]
fig = image_grid(images, titles, ncols=8, suptitle="Aligned 112x112 crops and their masked twins")
study.save_figure(fig, "01_aligned_and_masked")
plt.show()'''),
    ("code", '''if cfg["save_masked_photos"] and len(ok):
    photos = [study.data_dir / r["dataset"] / "masked_photos" / r["masked"] for r in ok.head(6).to_dict("records")]
    fig = image_grid(photos, [r["mask_style"] for r in ok.head(6).to_dict("records")], ncols=6, size=2.0,
                     suptitle="Masked photos (full frame): what a recognizer meets in the wild")
    study.save_figure(fig, "01_masked_photos")
    plt.show()'''),
    ("md", "Outputs: `manifest.csv` per dataset, aligned crops and masked twins under `aligned/`, the split under `split/`, all in the data folder shown at the top."),
]

NB02 = [
    ("md", """# 02 · MTCNN cleaning

The seed study's rule: a face whose **eye centre** (mean of the two eye landmarks) deviates too far from the
**centre of the detection window** is a side face, and side faces mislead attention, so they leave the
training set. The deviation rate is `|eye_x - box_centre_x| / box_width`. A landmark-only yaw estimate is
reported beside it. Cleaning only writes a new manifest (`cleaned.csv`) with a `keep` column and a
`drop_reason`; the photos and the detection manifest are never changed or deleted.

The evaluation pairs follow the official protocol and keep all their pairs; pair files for the three
scenarios unmasked–unmasked, masked–unmasked and masked–masked are written here."""),
    ("parameters", PARAMETERS),
    ("code", setup("02_mtcnn_cleaning")),
    ("code", '''import json
from pathlib import Path

from maskstudy import storage
from maskstudy.cleaning import clean_manifest, cleaning_summary
from maskstudy.data import read_manifest
from maskstudy.protocol import Split

sources_file = study.data_dir / "sources.json"
if not sources_file.is_file():
    raise FileNotFoundError(f"{sources_file} is missing: run notebook 01 (data build) first")
sources = json.loads(sources_file.read_text())
manifest = pd.concat([read_manifest(study.data_dir / name / "manifest.csv") for name in sources], ignore_index=True)
split = Split.load(study.data_dir / "split")
cleaned = clean_manifest(manifest, max_deviation=cfg["max_deviation"], min_prob=cfg["min_prob"])
for name, part in cleaned.groupby("dataset"):
    storage.write_csv(study.data_dir / name / "cleaned.csv", part)
display(Markdown(f"Side-face threshold: deviation rate > **{cfg['max_deviation']}**; minimum face probability **{cfg['min_prob']}**."))'''),
    ("md", "## Counts per reason"),
    ("code", '''summary = cleaning_summary(cleaned)
study.save_table(summary, "02_cleaning_summary")
summary'''),
    ("md", "## Deviation rate and yaw"),
    ("code", '''detected = cleaned[cleaned["deviation_rate"].notna() & (cleaned["status"] == "ok")]
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
display(Markdown(f"Spearman correlation of the deviation rate with |yaw|: **{corr:.2f}** over {len(detected)} detected faces."))'''),
    ("md", "## Kept frontal faces and removed side faces"),
    ("code", '''from maskstudy.figures import detection_grid, image_grid

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
    plt.show()'''),
    ("md", "## Masked twins per style"),
    ("code", '''ok = cleaned[(cleaned["status"] == "ok") & cleaned["keep"]]
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
style_table'''),
    ("md", """## Verification pairs

`a b 1|0` per line, paths relative to the dataset's `aligned/` folder. LFW pairs come from `pairs.txt` (same
folds, same labels, same order) in three scenarios; in masked–unmasked exactly one image of each pair wears the
mask, which one is chosen per pair from the seed. For each training identity-folder set, balanced pairs are
generated in identity-disjoint folds from the images that cleaning kept (for validation during training)."""),
    ("code", '''from maskstudy.pairs import SCENARIOS, generate_pairs, scenario_pairs, write_pair_folds, write_pairs

to_jpg = lambda s: s.str.replace(r"\\.[^.]+$", ".jpg", regex=True)
pair_counts = []
lfw_pairs = split.eval_pairs.assign(image_a=to_jpg(split.eval_pairs["image_a"]), image_b=to_jpg(split.eval_pairs["image_b"]))
for scenario in SCENARIOS:
    pairs = scenario_pairs(lfw_pairs, scenario, seed=cfg["seed"])
    write_pairs(pairs, study.data_dir / "lfw" / "pairs" / f"{scenario}.txt")
    write_pair_folds(pairs, study.data_dir / "lfw" / "pairs" / f"{scenario}.csv")
    pair_counts.append({"dataset": "lfw", "scenario": scenario, "pairs": len(pairs), "positive": int(pairs["label"].sum()),
                        "folds": pairs["fold"].nunique()})
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
storage.write_csv(study.data_dir / "split" / "train_clean.csv", kept_train[["dataset", "identity", "image", "aligned", "masked", "mask_style"]])
pair_table = pd.DataFrame(pair_counts)
study.save_table(pair_table, "02_pairs")
pair_table'''),
    ("code", '''flags = cleaned.set_index(["dataset", "image"])
def flag(images, column):
    return flags.loc[[("lfw", i) for i in images], column].to_numpy()
eval_quality = pd.DataFrame({
    "pairs": [len(split.eval_pairs)],
    "with a fallback-aligned image": [int(((flag(split.eval_pairs["image_a"], "aligned_by") == "fallback") | (flag(split.eval_pairs["image_b"], "aligned_by") == "fallback")).sum())],
    "with a side face": [int(((flag(split.eval_pairs["image_a"], "drop_reason") == "side_face") | (flag(split.eval_pairs["image_b"], "drop_reason") == "side_face")).sum())],
})
study.save_table(eval_quality, "02_eval_pair_quality")
display(Markdown("Evaluation pairs are never dropped (the protocol is fixed); this is how many involve an image that cleaning flags:"), eval_quality)
display(Markdown(f"Training images kept after cleaning: **{len(kept_train)}** of {len(split.train)}."))'''),
]

NB03 = [
    ("md", """# 03 · SE vs CBAM training

The study's core question: on masked faces, does attention in the backbone help an ArcFace-trained IR-ResNet?
Three variants of the same network are trained here with **the same seed, data, schedule and margin head**:

* **plain** IR-ResNet (Deng et al. 2019),
* **SE**: Squeeze-and-Excitation (Hu et al. 2018) after the residual branch's last BN,
* **CBAM**: channel attention from an MLP over average- and max-pooled features, then 7x7 spatial attention
  (Woo et al. 2018), at the same place, as in the seed study;

plus the seed's **no-mask baseline**: the plain network trained on unmasked crops only. Training images are the
cleaned training split of notebook 02 (their masked twins replace them with probability `train_masked_share`);
evaluation is LFW View 2 in three scenarios (10-fold accuracy, ROC) and closed-set identification of masked
probes against an unmasked gallery (the seed's Id column). Differences between models come with paired bootstrap
intervals over the same pairs."""),
    ("parameters", PARAMETERS),
    ("code", setup("03_se_cbam_training")),
    ("code", """from maskstudy.config import train_settings
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
pd.DataFrame(models).T"""),
    ("md", "## Training\n\nCheckpoints are written after every epoch; rerunning the notebook resumes unfinished runs and reuses finished ones."),
    ("code", """results = {}
for name, settings in models.items():
    print(f"== {name}: {settings['backbone']}, masked share {settings['masked_share']}")
    results[name] = train_or_restart(TrainConfig.from_dict(settings), train_csv, study.data_dir,
                          study.outputs / "checkpoints" / name)
history = pd.concat([r.history.assign(model=name) for name, r in results.items()], ignore_index=True)
study.save_table(history, "03_training_log")"""),
    ("code", """fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
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
plt.show()"""),
    ("code", """from maskstudy.models import count_flops, count_parameters
from maskstudy.evaluate import backbone_from_checkpoint, load_checkpoint

backbones = {name: backbone_from_checkpoint(load_checkpoint(r.checkpoint)) for name, r in results.items()}
training_table = pd.DataFrame([{
    "model": name, "backbone": models[name]["backbone"], "masked_share": models[name]["masked_share"],
    "params": count_parameters(backbones[name]), "gflops": count_flops(backbones[name], models[name]["input_size"]) / 1e9,
    "epochs": int(r.history["epoch"].max()), "final_loss": float(r.history["loss"].iloc[-1]),
    "final_val_acc": float(r.history["val_acc"].iloc[-1]), "train_seconds": float(r.history["seconds"].sum()),
    "images_per_s": float(r.history["images_per_s"].mean()),
} for name, r in results.items()])
study.save_table(training_table, "03_training")
training_table"""),
    ("md", "## Evaluation on LFW: verification in three scenarios and masked identification"),
    ("code", """from maskstudy.evaluate import evaluate_scenarios, identification_rank1

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
    display(Markdown(f"*Note:* {note}"))"""),
    ("code", """# the seed study's table: Id % (masked probes, unmasked gallery) and Ver % per scenario
seed_table = identification[["model", "rank1"]].rename(columns={"rank1": "Id %"})
for scenario in ["unmasked_unmasked", "masked_unmasked", "masked_masked"]:
    part = verification[verification["scenario"] == scenario].set_index("model")
    seed_table[f"Ver % {scenario}"] = seed_table["model"].map(part["accuracy_mean"])
    seed_table[f"± {scenario}"] = seed_table["model"].map(part["accuracy_std"])
seed_table = seed_table.assign(**{c: seed_table[c] * 100 for c in seed_table.columns if c != "model"}).round(2)
study.save_table(seed_table, "03_seed_table")
seed_table"""),
    ("code", """fig, axes = plt.subplots(1, 2, figsize=(13, 3.8), gridspec_kw={"width_ratios": [3, 1]})
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
plt.show()"""),
    ("md", "## Differences between models, with paired bootstrap intervals\n\nSame pairs, same folds: each comparison resamples the pairs and recomputes the difference in accuracy. An interval that contains 0 means this run cannot tell the two models apart."),
    ("code", """from maskstudy.evaluate import paired_bootstrap_difference

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
       ": at this profile's size the models cannot be told apart.")))"""),
    ("code", """if margin_models:
    margin_table = verification[verification["model"].isin(["plain"] + margin_models)].copy()
    margin_table.insert(1, "margin", margin_table["model"].map(lambda m: models[m]["margin"]))
    study.save_table(margin_table, "03_margin_losses")
    display(Markdown("### Margin losses on the plain backbone (same data and schedule)"), margin_table)"""),
]

COMMON_EVAL = """def evaluate_model(name, checkpoint, scenarios=("unmasked_unmasked", "masked_unmasked", "masked_masked")):
    backbone = backbone_from_checkpoint(load_checkpoint(checkpoint))
    input_size = int(load_checkpoint(checkpoint)["config"]["input_size"])
    table, per_pair = evaluate_scenarios(backbone, input_size, pairs_dir, aligned_root, scenarios=scenarios,
                                         batch_size=cfg["eval_batch_size"], n_boot=cfg["bootstrap_samples"], seed=cfg["seed"])
    return table.assign(model=name), per_pair"""

NB04 = [
    ("md", """# 04 · ViT trial

The seed study trained a Vision Transformer (Dosovitskiy et al., ICLR 2021) on 500 identities x 10 masked
images and found it worse than the CNN; small data was the suspected cause, and a hybrid CNN + transformer the
proposed next step. Here a ViT (timm, trained from scratch: no weights can be downloaded) and a hybrid (the
IR-ResNet's first stages as a convolutional stem feeding transformer blocks) are trained with **the same ArcFace
head, data, seed and evaluation** as notebook 03. A **data-size curve** (the CNN of notebook 03 that did best on
masked–unmasked pairs, and the ViT, on growing shares of the training identities) is the evidence for or against
"the ViT is worse because the data is small": if the gap closes as data grows, the claim gains support.

One difference is deliberate: the transformers train with AdamW (`vit_optimizer`, `vit_lr`), the CNNs with the
ArcFace SGD recipe. Plain SGD leaves a transformer trained from scratch near chance on this data, which would make
the comparison say nothing about architecture. The table below lists each model's optimizer."""),
    ("parameters", PARAMETERS),
    ("code", setup("04_vit_trial")),
    ("code", """from maskstudy.config import train_settings, transformer_settings
from maskstudy.evaluate import backbone_from_checkpoint, evaluate_scenarios, load_checkpoint
from maskstudy.models import count_flops, count_parameters
from maskstudy.train import TrainConfig, train_or_restart
from maskstudy import storage

train_csv = study.data_dir / "split" / "train_clean.csv"
pairs_dir = study.data_dir / "lfw" / "pairs"
aligned_root = study.data_dir / "lfw" / "aligned"
verification_03 = study.tables / "03_verification.csv"
for needed in (train_csv, verification_03):
    if not needed.exists():
        raise FileNotFoundError(f"{needed} is missing: run notebooks 01-03 first")
cnn_results = pd.read_csv(verification_03)
attention_models = {"plain": "none", "se": "se", "cbam": "cbam"}
masked = cnn_results[(cnn_results["scenario"] == "masked_unmasked") & cnn_results["model"].isin(attention_models)]
best_cnn = masked.sort_values("accuracy_mean", ascending=False)["model"].iloc[0]
display(Markdown(f"Best CNN of notebook 03 on masked–unmasked pairs: **{best_cnn}**."))
""" + COMMON_EVAL),
    ("md", "## ViT and hybrid on all the training data"),
    ("code", """models = {"vit": transformer_settings(cfg, "vit"), "hybrid": transformer_settings(cfg, "hybrid")}
results, tables, details = {}, [], {}
for name, settings in models.items():
    print(f"== {name}: {settings['backbone']} {settings['backbone_kwargs']}")
    results[name] = train_or_restart(TrainConfig.from_dict(settings), train_csv, study.data_dir, study.outputs / "checkpoints" / name)
    table, details[name] = evaluate_model(name, results[name].checkpoint)
    tables.append(table)
cnn_table = cnn_results[cnn_results["model"] == best_cnn]
vit_table = pd.concat([cnn_table] + tables, ignore_index=True)
vit_table = vit_table[["model"] + [c for c in vit_table.columns if c != "model"]]
size = []
for name, settings in [(best_cnn, train_settings(cfg, attention_models[best_cnn]))] + list(models.items()):
    backbone = backbone_from_checkpoint(load_checkpoint(study.outputs / "checkpoints" / name / "last.pt"))
    size.append({"model": name, "backbone": settings["backbone"], "params": count_parameters(backbone),
                 "gflops": count_flops(backbone, settings["input_size"]) / 1e9, "optimizer": settings.get("optimizer", "sgd"), "lr": settings["lr"]})
study.save_table(vit_table, "04_vit")
study.save_table(pd.DataFrame(size), "04_model_size")
display(pd.DataFrame(size), vit_table)"""),
    ("code", """history = pd.concat([r.history.assign(model=n) for n, r in results.items()]
                    + [pd.read_csv(study.outputs / "checkpoints" / best_cnn / "log.csv").assign(model=best_cnn)], ignore_index=True)
fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
for name, part in history.groupby("model", sort=False):
    axes[0].plot(part["epoch"], part["loss"], marker="o", ms=3, label=name)
    axes[1].plot(part["epoch"], part["val_acc"], marker="o", ms=3, label=name)
axes[0].set_title("training loss"); axes[1].set_title("validation accuracy (masked-unmasked, held-out identities)")
for ax in axes:
    ax.set_xlabel("epoch"); ax.grid(alpha=0.3)
axes[0].legend()
fig.tight_layout()
study.save_figure(fig, "04_learning_curves")
plt.show()"""),
    ("md", "## Data-size curve\n\nThe same recipe on a seeded subset of the training identities (all their cleaned images); the 100 % points are the runs above and notebook 03's."),
    ("code", """rows = pd.read_csv(train_csv, dtype=str, keep_default_na=False)
identities = np.array(sorted(rows["identity"].unique()))
order = np.random.default_rng(cfg["seed"]).permutation(len(identities))
curve = []
for fraction in cfg["data_fractions"]:
    chosen = set(identities[order[: max(4, int(round(fraction * len(identities))))]])
    subset_csv = study.outputs / "data_size" / f"train_{int(round(100 * fraction))}.csv"
    storage.write_csv(subset_csv, rows[rows["identity"].isin(chosen)])
    for name, settings in [(best_cnn, train_settings(cfg, attention_models[best_cnn])), ("vit", models["vit"])]:
        if fraction == 1.0:
            checkpoint = study.outputs / "checkpoints" / name / "last.pt"
        else:
            out = study.outputs / "data_size" / f"{name}_{int(round(100 * fraction))}"
            checkpoint = train_or_restart(TrainConfig.from_dict(settings), subset_csv, study.data_dir, out).checkpoint
        table, _ = evaluate_model(name, checkpoint, scenarios=("unmasked_unmasked", "masked_unmasked"))
        for row in table.to_dict("records"):
            curve.append({"model": name, "fraction": fraction, "identities": len(chosen),
                          "images": int(rows["identity"].isin(chosen).sum()), **row})
curve = pd.DataFrame(curve)
study.save_table(curve, "04_data_size")
fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), sharey=True)
for ax, scenario in zip(axes, ["unmasked_unmasked", "masked_unmasked"]):
    for name, part in curve[curve["scenario"] == scenario].groupby("model", sort=False):
        ax.errorbar(part["images"], part["accuracy_mean"], yerr=[part["accuracy_mean"] - part["acc_ci_low"], part["acc_ci_high"] - part["accuracy_mean"]],
                    marker="o", capsize=3, label=name)
    ax.set_xscale("log"); ax.set_xlabel("training images (log scale)"); ax.set_title(scenario); ax.grid(alpha=0.3)
axes[0].set_ylabel("LFW 10-fold accuracy (95% CI)"); axes[0].legend()
fig.tight_layout()
study.save_figure(fig, "04_data_size")
plt.show()
gap = curve[curve["scenario"] == "masked_unmasked"].pivot(index="fraction", columns="model", values="accuracy_mean")
gap["cnn_minus_vit"] = gap[best_cnn] - gap["vit"]
study.save_table(gap.reset_index(), "04_data_size_gap")
trend = np.polyfit(np.log(curve[curve["scenario"] == "masked_unmasked"].groupby("fraction")["images"].first()), gap["cnn_minus_vit"], 1)[0] if len(gap) > 1 else float("nan")
display(gap)
display(Markdown(f"CNN minus ViT on masked–unmasked pairs goes from **{100 * gap['cnn_minus_vit'].iloc[0]:+.1f}** points at "
                 f"{100 * gap.index[0]:.0f} % of the identities to **{100 * gap['cnn_minus_vit'].iloc[-1]:+.1f}** at {100 * gap.index[-1]:.0f} % "
                 f"(slope {100 * trend:+.1f} points per e-fold of data). A gap that shrinks as data grows supports the small-data "
                 "explanation; with intervals this wide, read it as a trend, not a proof."))"""),
]

NB05 = [
    ("md", """# 05 · Grad-CAM analysis

Where does each network look when it matches a **masked** face to the same person's **unmasked** photo?
Grad-CAM (Selvaraju et al., ICCV 2017, via pytorch-grad-cam) is computed on the embedding networks with a target
that is the cosine similarity between the probe's embedding and the embedding of the person's unmasked reference
photo; for IR-ResNets the last stage (`layer4`), for transformers the last block's first LayerNorm with a
token-to-grid reshape. Autocast is off while computing CAMs.

Beyond pictures, two numbers: the **share of CAM mass** in the eye band versus the mask region (from the aligned
template's geometry and the synthetic mask's polygon), over many evaluation faces with bootstrap intervals; and
a **faithfulness check**: how much the similarity drops when the most-attended 10 % of pixels are blurred,
against blurring a random region of the same size."""),
    ("parameters", PARAMETERS),
    ("code", setup("05_gradcam_analysis")),
    ("code", """from maskstudy.data import read_manifest
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
side_references = load_crops([aligned_root / references[i] for i in side["identity"]])"""),
    ("code", """cams = {}
for name, (model, input_size) in networks.items():
    print(f"Grad-CAM: {name}", flush=True)
    cams[name] = {
        "masked": compute_cams(model, masked_crops, reference_crops, input_size, method=cfg["cam_method"]),
        "unmasked": compute_cams(model, unmasked_crops, reference_crops, input_size, method=cfg["cam_method"]),
        "side": compute_cams(model, side_crops, side_references, input_size, method=cfg["cam_method"]) if len(side) else None,
    }"""),
    ("md", "## Where the networks look"),
    ("code", """def cam_figure(crops, maps, title, n):
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
    plt.show()"""),
    ("md", "## How much attention falls on the eyes and on the mask"),
    ("code", """eye, mouth = eye_band_mask(112), mask_region(112)
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
attention"""),
    ("code", """fig, ax = plt.subplots(figsize=(8, 3.4))
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
plt.show()"""),
    ("md", "## Faithfulness: blur what the CAM points at, or a random region of the same size"),
    ("code", """k = min(cfg["faithfulness_images"], len(probes))
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
display(Markdown("A positive difference with an interval above 0 means the CAM points at pixels the match really depends on."))"""),
]

NB06 = [
    ("md", """# 06 · Result tables

Everything here is **read** from what notebooks 02–05 saved; no number is recomputed or typed, except the
published anchors, which are shown apart, with their sources. A missing upstream file stops this notebook with
the name of the notebook to run. The summary at the end becomes the top of the run's `index.html`."""),
    ("parameters", PARAMETERS),
    ("code", setup("06_result_tables")),
    ("code", """import json
from maskstudy.protocol import Split
from maskstudy.report import PUBLISHED_ANCHORS, read_results, write_summary

required = ["01_split", "02_cleaning_summary", "03_verification", "03_identification", "03_differences", "03_masked_gap",
            "03_seed_table", "03_training", "04_vit", "04_data_size", "04_data_size_gap", "05_attention_regions", "05_faithfulness"]
results = read_results(study.tables, required, optional=("03_margin_losses",))
split = json.loads((study.data_dir / "split" / "split.json").read_text())
display(Markdown(f"**Protocol `{split['protocol']}`.** {split['description']}"))"""),
    ("md", "## Identification and verification per method (the seed study's table)"),
    ("code", """verification = results["03_verification"]
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
                 "Ver %: LFW 10-fold accuracy ± std over folds."), key)"""),
    ("code", """fig, axes = plt.subplots(1, 3, figsize=(15, 3.8), sharey=True)
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
plt.show()"""),
    ("md", "## ROC curves per scenario"),
    ("code", """from sklearn.metrics import roc_curve

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
plt.show()"""),
    ("md", "## Differences between models (paired bootstrap over the same pairs)"),
    ("code", """differences = results["03_differences"]
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
plt.show()"""),
    ("md", "## No-mask baseline, margin losses, ViT and hybrid"),
    ("code", """display(Markdown("**Masked-unmasked gap** (unmasked accuracy minus masked-unmasked accuracy) per model:"), results["03_masked_gap"])
if "03_margin_losses" in results:
    margins = results["03_margin_losses"]
    display(Markdown("**Margin losses** on the plain backbone (ArcFace is `plain`):"), margins)
else:
    display(Markdown("*This profile did not train the margin-loss comparison (`margin_losses` empty).*"))
display(Markdown("**ViT and hybrid** against the best CNN (same head, data, seed, evaluation):"), vit)
display(Markdown("**Data-size curve**, CNN minus ViT on masked-unmasked pairs:"), results["04_data_size_gap"])"""),
    ("md", "## Attention on the eyes (Grad-CAM, notebook 05)"),
    ("code", """attention = results["05_attention_regions"]
display(attention, results["05_faithfulness"])"""),
    ("md", "## Cleaning statistics and split"),
    ("code", """display(results["02_cleaning_summary"], results["01_split"])"""),
    ("md", "## Published anchors (typed from the papers; far larger training sets)\n\nThese come from networks trained on millions of images and a thousand times more identities than this study's training set; they show the scale of the gap, not a comparison of methods."),
    ("code", """anchors = pd.DataFrame(PUBLISHED_ANCHORS)
study.save_table(anchors, "06_published_anchors")
anchors"""),
    ("md", "## Summary"),
    ("code", """def pct(x):
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
masked_attention = attention[attention["input"] == "masked"].set_index("model")
if {"plain", "cbam"} <= set(masked_attention.index):
    findings.append(f"Share of Grad-CAM mass in the eye band on masked probes: plain {pct(masked_attention.loc['plain', 'eye_share'])}, "
                    f"SE {pct(masked_attention.loc['se', 'eye_share'])}, CBAM {pct(masked_attention.loc['cbam', 'eye_share'])} "
                    f"(the band is {pct(masked_attention['eye_band_area_share'].iloc[0])} of the crop).")
unseparated = differences[~differences["separated"]]
if len(unseparated):
    warnings.append(f"{len(unseparated)} of {len(differences)} model comparisons have 95% intervals that include 0: "
                    "at this profile's size those models cannot be told apart.")
if cfg["profile"] == "smoke":
    warnings.append("smoke profile: a few training steps on a handful of images; the numbers test the pipeline, not the methods.")
warnings.append("CelebA identity numbers cannot be matched to LFW names: a person in both sets cannot be excluded from training.")
write_summary(study.run_dir, findings, warnings, ["06_key_results"],
              ["06_accuracy_by_scenario", "06_differences", "03_learning_curves", "04_data_size", "05_cams_masked", "05_attention_regions"])
display(Markdown("\\n".join(f"* {f}" for f in findings) + "\\n\\n**Warnings**\\n\\n" + "\\n".join(f"* {w}" for w in warnings)))"""),
]

if __name__ == "__main__":
    notebook("01_data_build", NB01)
    notebook("02_mtcnn_cleaning", NB02)
    notebook("03_se_cbam_training", NB03)
    notebook("04_vit_trial", NB04)
    notebook("05_gradcam_analysis", NB05)
    notebook("06_result_tables", NB06)
