"""Profiles: the study's sizes as plain data, in one place.

``smoke`` runs the whole pipeline in minutes for tests; ``cpu`` is the whole study on a 2-core laptop-class
CPU; ``gpu`` is full size. Notebooks receive the resolved profile as papermill parameters; opened in JupyterLab
they resolve the same values through :func:`resolve_config`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

#: Values every profile shares unless it overrides them.
BASE: dict[str, Any] = {
    "seed": 0,
    "data_dir": "data/processed",
    # data sources: None = $MASKSTUDY_LFW, else ../shared/data/lfw, else the download folder
    "lfw_root": None,
    "download_lfw": True,
    "download_dir": "data/raw",
    # extra identity-folder training sets {name: path}; "auto" = $MASKSTUDY_CELEBA or ../shared/data/celeba
    "extra_datasets": "auto",
    # MFR2 (real masked faces, evaluation only): None = $MASKSTUDY_MFR2, else ../shared/data/mfr2, else skipped
    "mfr2_root": None,
    "eval_folds": None,  # None: the protocol's default (all 10 with extra data, fold 1 with LFW alone)
    # subsetting (None = everything)
    "lfw_pairs_per_fold": None,  # matched and mismatched pairs kept per fold of pairs.txt (of 300 each)
    "max_train_identities": None,
    "max_images_per_identity": None,
    # detection, alignment, masks
    "crop_size": 112,
    "min_face_size": 20,  # MTCNN's smallest face (px) ...
    "first_pass_face_size": 36.0,  # ... looked for only in photos without a face this size (None: one pass)
    "pyramid_factor": 0.709,  # MTCNN's pyramid step
    "min_prob": 0.9,
    "detect_batch_size": 32,
    "save_masked_photos": True,
    "mask_styles": ["surgical_blue", "n95_white", "black_cloth", "patterned_cloth"],  # drawn on training twins
    "unseen_mask_styles": ["kn95_flaps", "below_nose"],  # drawn only on evaluation photos
    "masked_variants": True,  # evaluation crops detected on the masked photo, and in unseen styles
    # cleaning (notebook 02)
    "max_deviation": 0.12,
    "generated_pairs_per_fold": 300,
    "figure_dpi": 110,
    # training (notebook 03): the same seed, data and schedule for every variant compared
    "attention_variants": ["none", "se", "cbam"],
    "extra_seeds": [1, 2],  # the attention variants are also trained with these seeds (spread over seeds)
    "leave_out_style": "surgical_blue",  # plain net trained without this style's twins, tested on it (None: skip)
    # plain net trained on twins detected on the masked photo ("detected" or "detected_eyes"; None: skip)
    "detected_twins_run": "detected",
    "nomask_baseline": True,  # also train the plain network on unmasked crops only (the seed's baseline)
    # training: one key per TrainConfig field, train_<field> (the seed is "seed"); maskstudy.train.TrainConfig takes
    # its defaults from here, and every one can be set with -p. Model:
    "train_backbone": "ir18",  # the depth; each variant appends its attention block (ir18_se, ir18_cbam)
    "train_width": 0.25,
    "train_input_size": 56,
    "train_embedding_size": 512,
    "train_dropout": 0.0,
    "train_backbone_kwargs": {},  # extra builder arguments, e.g. {"depth": 6} for a ViT
    # margin head
    "train_margin": "arcface",
    "train_scale": 32.0,  # ArcFace's s=64 is for 10^5 identities; a few hundred train better with s~32
    # optimisation
    "train_epochs": 10,
    "train_batch_size": 64,  # per process
    "train_optimizer": "sgd",  # "sgd" (the ArcFace recipe) | "adamw" (for transformers)
    "train_lr": 0.1,
    "train_momentum": 0.9,  # SGD only
    "train_weight_decay": 5e-4,
    "train_warmup_epochs": 1.0,
    "train_schedule": "cosine",  # "cosine" | "poly" (power 2, as arcface_torch)
    "train_grad_clip": 5.0,  # max norm of the backbone's gradient; null or 0 = off
    # augmentation
    "train_masked_share": 0.5,  # probability that a sample is its masked twin; 0.0 = unmasked-only baseline
    "train_flip": True,
    "train_color_jitter": 0.1,  # brightness and contrast factors drawn from [1 - j, 1 + j]
    # sampling and data
    "train_sampler": "capped",  # "capped" | "balanced" | "uniform"
    "train_max_per_identity": 20,  # per-epoch cap ("capped"), images per identity ("balanced", null = mean)
    "train_min_images_per_identity": 2,
    "train_val_identities": 0.05,  # share (< 1) or count (>= 1) of identities held out for validation; 0 = none
    "train_val_pairs": 600,  # at most this many masked-unmasked validation pairs (half positive)
    "train_cache_limit_gb": 8.0,  # decode crops on the fly when caching them all would need more (per machine)
    # distillation from a pretrained teacher (Li et al., ACM MM 2020): the loss adds train_distill_weight x
    # mean(1 - cos(P(student), teacher)) over clean and masked samples alike, each aimed at its clean photo's teacher
    # embedding, read from train_teacher_embeddings (maskstudy.teachers.training); 0 = off
    "train_distill_weight": 0.0,
    "train_teacher_embeddings": None,  # path of the .npz; may move on resume (its content is checked)
    # training runtime: these may change when a run is resumed
    "train_device": "auto",  # "auto" (cuda if available) | "cpu" | "cuda" | "cuda:1" ...
    "train_amp": "auto",  # "auto" (bf16 on CUDA if supported else fp16; none on CPU) | "bf16" | "fp16" | "none"
    "train_channels_last": "auto",  # "auto" = on (CUDA and CPU: 1.28x faster CPU training steps, measured)
    # torch.compile the backbone (maskstudy.core.compilation: eager, with one log line, where Inductor cannot
    # compile): measured 8-14 % faster CPU training steps (plain/SE/CBAM, bench_backbones --compile, one run at
    # 186 GFLOP/s) for 40-48 s of compilation per network, about what a cpu-profile training of 80 s saves;
    # try it for long runs or on GPUs
    "train_compile": False,
    "train_num_workers": "auto",  # loader processes for on-the-fly decoding; "auto" = 0 on CPU, 4+ on CUDA
    "train_num_threads": None,  # torch CPU threads while training (null = as set); 1 can be far faster on a busy CPU
    "train_deterministic": "auto",  # "auto" = on CPU (deterministic algorithms), off on CUDA (cudnn.benchmark)
    "train_checkpoint_every": 1,  # epochs
    "train_max_steps": None,  # stop after this many optimizer steps in total (smoke runs)
    "eval_batch_size": 256,
    "bootstrap_samples": 2000,
    "fixed_fmr": [1e-3, 1e-2],  # FNMR on masked pairs at the threshold giving this FMR on unmasked pairs
    # margin-loss comparison on the plain backbone (notebook 03; ArcFace is the plain model itself)
    "margin_losses": ["softmax", "sphereface", "cosface"],
    # ViT trial (notebook 04): same head, data, seed and evaluation as notebook 03
    "vit_backbone": "vit_tiny",
    "vit_width": 0.5,
    "vit_kwargs": {"depth": 6},
    # transformers trained from scratch do not learn with the CNN's SGD recipe (measured: SGD at lr 0.02 left the
    # ViT at chance on held-out pairs); they get AdamW, as in Dosovitskiy et al. 2021, with everything else equal
    "vit_optimizer": "adamw",
    "vit_lr": 3e-4,  # measured on the cpu profile: 1e-3 left the ViT at 2 % training accuracy after 10 epochs
    "vit_weight_decay": 0.05,
    "vit_warmup_epochs": 2.0,
    "hybrid_backbone": "hybrid_ir18_cbam_vit",
    "hybrid_kwargs": {},
    "data_fractions": [0.25, 0.5, 1.0],  # shares of the training identities for the data-size curve
    # pretrained reference and teacher (maskstudy.teachers): "dlib_resnet" | "facenet_vggface2"; None = neither the
    # reference row nor the guided students. Without the optional extra (pip install -e .[teacher]) both are skipped
    # with a note.
    "teacher": "dlib_resnet",
    # attention variants also trained with distillation from the teacher, with the same seeds, data and schedule
    "teacher_students": ["none", "se", "cbam"],
    # the reference row's LFW scenarios (null: every test of the trained models) and whether it is identified too;
    # dlib's network runs at ~10-15 photos/s per core, so the cpu profile keeps the tests the issue names
    "teacher_reference_tests": None,
    "teacher_reference_identification": True,
    # distill weight of the guided students: the margin loss's gradient on an embedding is ~s = 32 times the cosine
    # term's early on, so a weight of a few units lets the teacher matter without swamping the margin (untuned)
    "teacher_distill_weight": 4.0,
    # the pretrained track (notebook 03, maskstudy.study.pretrained_track): dlib's ResNet-29 (teacher extra) fine-tuned on
    # the training rows' clean crops and masked twins toward the frozen network's clean embedding; False = skip
    "pretrained_track": True,
    # each over the study's seeds, at full strength (started near the identity through the sigmoid biases)
    "pretrained_attention": ["none", "se", "cbam"],
    "pretrained_gated": False,  # also SE and CBAM behind a scalar gate from 0 (the study's earlier form), over seeds
    # every block of pretrained_attention also fine-tuned and tested on the upper face (the chip's lower half
    # blanked; cropping + attention, Li et al. 2021), over seeds
    "pretrained_upper_face": True,
    "pretrained_clean_control": True,  # the plain network fine-tuned on the clean crops alone (main seed)
    # the mask-aware recogniser: the main seed's plain whole-face and upper-face fine-tunes behind a mask detector
    # (maskstudy.study.mask_aware), evaluated as a model of the track and saved as a model file
    "pretrained_mask_aware": True,
    "pretrained_frozen_stages": 3,  # stem + 3 stages frozen (their outputs cached per crop); the 256-channel ones train
    "pretrained_epochs": 2,
    "pretrained_batch_size": 64,  # training rows per step (each gives its clean crop and its twin)
    "pretrained_lr": 1e-4,  # AdamW; SGD at 1e-3 destroys dlib's frozen-BN network within an epoch
    "pretrained_weight_decay": 1e-4,
    "pretrained_warmup_steps": 20,
    "pretrained_grad_clip": 1.0,
    "pretrained_distill_weight": 1.0,  # 1 - cos(student(x), frozen teacher(clean photo))
    "pretrained_margin_weight": 0.0,  # > 0 adds an ArcFace head over the training identities
    "pretrained_attention_lr_scale": 100.0,  # lr multiplier of the inserted attention (new weights)
    "pretrained_twins": "detected",  # twins the track trains on: "detected" (on the masked photo) | "shared"
    "pretrained_max_rows": None,  # at most this many training rows (smoke runs)
    # Grad-CAM analysis (notebook 05)
    "cam_method": "hirescam",  # exact for the IR-ResNet's flatten + FC head (Draelos and Carin 2020)
    "cam_compare_methods": ["gradcam"],  # beside it for the IR-ResNets on the masked probes (main seed)
    "cam_images": 600,  # masked probes from the evaluated identities whose CAM mass is measured
    "faithfulness_images": 60,  # probes per model for the deletion / insertion curves (main seed)
    "faithfulness_steps": 8,  # curve points after the start
    "faithfulness_max_fraction": 0.5,  # the curves run from 0 to this share of the crop's pixels
    "cam_sanity_images": 48,  # probes for the weight-randomisation check (Adebayo et al. 2018)
    "cam_examples": 6,
    "cam_mfr2_examples": 6,  # real masked MFR2 photos shown with their maps
}

PROFILES: dict[str, dict[str, Any]] = {
    "smoke": {
        "data_dir": "data/smoke",
        "lfw_pairs_per_fold": 6,
        "max_train_identities": 12,
        "max_images_per_identity": 4,
        "generated_pairs_per_fold": 4,
        "detect_batch_size": 16,
        "figure_dpi": 60,
        "train_width": 0.125,
        "train_input_size": 32,
        "train_epochs": 2,
        "train_batch_size": 32,
        "train_val_identities": 2,
        "train_max_steps": 4,
        "bootstrap_samples": 200,
        "margin_losses": [],
        "extra_seeds": [1],
        "teacher_students": ["none", "cbam"],
        "vit_width": 0.25,
        "vit_kwargs": {"depth": 2},
        "hybrid_kwargs": {"depth": 1},
        "data_fractions": [0.5, 1.0],
        "cam_images": 12,
        "faithfulness_images": 4,
        "faithfulness_steps": 4,
        "cam_sanity_images": 4,
        "cam_examples": 3,
        "cam_mfr2_examples": 2,
        "pretrained_epochs": 1,
        "pretrained_batch_size": 8,
        "pretrained_warmup_steps": 2,
        "pretrained_max_rows": 48,
        "pretrained_gated": True,  # every path of the track, at a few steps each
    },
    "cpu": {
        # the 2-core budget goes to seeds: the margin-loss comparison runs in the gpu profile (or -p margin_losses=...)
        "margin_losses": [],
        "data_fractions": [0.5, 1.0],
        "train_epochs": 6,  # 3 seeds x 3 variants + baselines must fit the 2-core budget
        # the guided from-scratch students measured nothing at this size (guided minus unguided -0.6 to +0.8 points,
        # 0 of 27 separated, run of 2026-11-29) and cost 28 of 107 minutes: opt-in here (-p teacher_students=...)
        "teacher_students": [],
        "teacher_reference_tests": ["unmasked_unmasked", "masked_unmasked_detected"],
        "teacher_reference_identification": False,
    },
    "gpu": {
        "detect_batch_size": 128,
        "train_backbone": "ir50",
        "train_width": 1.0,
        "train_input_size": 112,
        "train_epochs": 30,
        "train_batch_size": 128,
        "extra_seeds": [1, 2, 3, 4],
        "vit_width": 1.0,
        "vit_kwargs": {"depth": 12},
        "cam_images": 3000,
        "faithfulness_images": 300,
        "faithfulness_steps": 10,
        "cam_sanity_images": 200,
    },
}


class UnknownSettingError(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; this one should read as a sentence
        return str(self.args[0])


def default_profile() -> str:
    """``gpu`` when CUDA is present, else ``cpu``."""
    try:
        import torch

        return "gpu" if torch.cuda.is_available() else "cpu"
    except ImportError:  # pragma: no cover - torch is a dependency
        return "cpu"


def resolve_config(profile: str | None = None, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The full parameter set of ``profile`` (``None``: :func:`default_profile`) with ``overrides`` applied.

    Unknown profile names and unknown keys are errors that list the known ones.
    """
    profile = profile or default_profile()
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; known profiles: {', '.join(PROFILES)}")
    config = copy.deepcopy(BASE)
    config.update(copy.deepcopy(PROFILES[profile]))
    unknown = sorted(set(overrides or {}) - set(config) - {"profile", "run_dir"})
    if unknown:
        raise UnknownSettingError(
            f"unknown parameter(s) {', '.join(unknown)}; known parameters: {', '.join(sorted(config))}")
    config.update({k: v for k, v in (overrides or {}).items() if k not in ("profile", "run_dir")})
    check_override_types({k: v for k, v in (overrides or {}).items() if k not in ("profile", "run_dir")})
    config["profile"] = profile
    return config


#: Value types a parameter accepts beyond those its defaults have in BASE and PROFILES.
EXTRA_VALUE_TYPES: dict[str, tuple[type, ...]] = {
    "extra_datasets": (dict, type(None)),
    # null switches these runs off
    "leave_out_style": (type(None),), "detected_twins_run": (type(None),), "mfr2_root": (str,),
    # TrainConfig fields that take "auto" or null besides a value
    "train_grad_clip": (type(None),), "train_max_per_identity": (type(None),), "train_channels_last": (bool,),
    "train_num_workers": (int,), "train_num_threads": (int,), "train_deterministic": (bool,),
    "train_teacher_embeddings": (str,), "teacher": (type(None),), "teacher_reference_tests": (list,),
    "first_pass_face_size": (type(None),), "pretrained_max_rows": (int,),
}
#: Dataset names an extra training set may not take: the build keeps one folder per name.
RESERVED_DATASET_NAMES = ("lfw",)


def _allowed_types(key: str) -> set[type]:
    seen = {type(values[key]) for values in (BASE, *PROFILES.values()) if key in values}
    seen |= set(EXTRA_VALUE_TYPES.get(key, ()))
    if float in seen:
        seen.add(int)  # 64 is a fine value for a float setting
    if seen & {list, tuple}:
        seen |= {list, tuple}  # papermill passes a tuple back as a list
    return seen


def check_override_types(overrides: Mapping[str, Any]) -> None:
    """Refuse ``-p`` values whose type differs from the key's defaults (``seed=abc``, ``seed=1.5``,
    ``train_epochs=abc``), and extra datasets named like a reserved one (``lfw``) or like a path; one
    ``ValueError`` lists every problem."""
    problems = []
    for key, value in overrides.items():
        allowed = _allowed_types(key)
        if allowed <= {type(None)} or not allowed:
            continue  # defaults are all None: any value
        if type(value) not in allowed:  # exact types: True is not an int here, 1.5 is not an int
            names = " or ".join(sorted("null" if t is type(None) else t.__name__ for t in allowed))
            problems.append(f"{key}={value!r} has type {type(value).__name__}, expected {names}")
    extra = overrides.get("extra_datasets")
    if isinstance(extra, dict):
        for name in extra:
            if str(name) in RESERVED_DATASET_NAMES:
                problems.append(f"extra_datasets: the name {name!r} is reserved (it would replace LFW); "
                                "choose another name")
            elif not str(name).replace("_", "").replace("-", "").isalnum():
                problems.append(f"extra_datasets: name {name!r} must be letters, digits, '_' or '-'")
    if problems:
        raise ValueError("bad parameter value(s): " + "; ".join(problems))


#: Profile key -> TrainConfig field, one to one: ``train_<field>`` for every field, and ``seed``.
TRAIN_KEYS = {"seed": "seed", **{key: key[len("train_"):] for key in BASE if key.startswith("train_")}}


def training_defaults() -> dict[str, Any]:
    """The base profile's training settings as TrainConfig fields (a fresh copy): the defaults of
    :class:`maskstudy.train.TrainConfig`."""
    return {field: copy.deepcopy(BASE[key]) for key, field in TRAIN_KEYS.items()}


#: Backbone families notebook 04 trains besides the CNN: profile keys of their name, width, kwargs and lr.
TRANSFORMER_KEYS = {"vit": ("vit_backbone", "vit_width", "vit_kwargs"),
                    "hybrid": ("hybrid_backbone", "vit_width", "hybrid_kwargs")}


def backbone_name(depth: str, attention: str) -> str:
    """``("ir18", "cbam")`` -> ``"ir18_cbam"``; ``"none"`` is the plain network."""
    return depth if attention in ("none", "", None) else f"{depth}_{attention}"


def train_settings(config: Mapping[str, Any], attention: str = "none", **changes: Any) -> dict[str, Any]:
    """All TrainConfig fields of one variant: the profile's training settings, the variant's backbone, and
    ``changes`` (e.g. ``masked_share=0.0`` for the unmasked-only baseline)."""
    settings = {field: copy.deepcopy(config[key]) for key, field in TRAIN_KEYS.items()}
    settings["backbone"] = backbone_name(config["train_backbone"], attention)
    settings.update(changes)
    return settings


def transformer_settings(config: Mapping[str, Any], family: str, **changes: Any) -> dict[str, Any]:
    """TrainConfig fields of the ViT (``family="vit"``) or the hybrid CNN+ViT: the shared training settings
    of :func:`train_settings` with the family's backbone, width, builder arguments and optimizer."""
    name_key, width_key, kwargs_key = TRANSFORMER_KEYS[family]
    family_settings = {"backbone": config[name_key], "width": config[width_key],
                       "backbone_kwargs": dict(config[kwargs_key] or {}), "optimizer": config["vit_optimizer"],
                       "lr": config["vit_lr"], "weight_decay": config["vit_weight_decay"],
                       "warmup_epochs": config["vit_warmup_epochs"]}
    return train_settings(config, **{**family_settings, **changes})
