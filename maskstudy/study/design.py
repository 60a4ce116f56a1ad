"""The study's design in one place: which models are trained, with which seeds, under which names, and which
tests each table and figure shows in which order.

Notebooks 03-06 take every model name, run name, seed, checkpoint folder and test list from here (scenario names
come from :mod:`maskstudy.datasets.pairs`), so that removing ``se`` from ``attention_variants``, adding a block or a seed
runs through all of them without edits.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.profiles import TRANSFORMER_KEYS, train_settings
from ..datasets.pairs import (
    MASK_VARIANTS,
    MASKED_MASKED,
    MASKED_UNMASKED,
    SCENARIOS,
    UNMASKED_UNMASKED,
    variant_scenario,
    variants_of,
)
from .comparisons import MFR2

#: The attention block of the network without attention (``attention_variants`` in the profile).
NO_ATTENTION = "none"
#: Name of the network without attention: the reference of every comparison and of the single baseline runs.
PLAIN = "plain"
#: Display name of each attention variant (``attention_variants`` in the profile); other blocks keep their name.
ATTENTION_NAMES = {NO_ATTENTION: PLAIN, "se": "se", "cbam": "cbam"}
#: The transformer models notebook 04 trains beside the CNNs (one per family of :data:`config.TRANSFORMER_KEYS`).
TRANSFORMER_MODELS = tuple(TRANSFORMER_KEYS)
#: The pretrained track's models (:mod:`maskstudy.study.pretrained_track`): the pretrained network as it is (its reference
#: row); each attention block fine-tuned on the whole face, inserted at full strength (``TRACK_MODELS``) and, when the
#: profile asks, behind a gate from 0 (``TRACK_GATED_MODELS``); each block fine-tuned on the upper face, the chip's
#: lower half blanked (cropping + attention, Li et al. 2021: ``TRACK_UPPER_MODELS``); and the plain network fine-tuned
#: on the clean crops alone (the control of what the synthetic twins cost, ``TRACK_CLEAN_MODEL``).
TRACK_REFERENCE = "dlib_resnet29_pretrained"
TRACK_MODELS = {NO_ATTENTION: "ft_plain", "se": "ft_se", "cbam": "ft_cbam"}
TRACK_GATED_MODELS = {"se": "ft_se_gated", "cbam": "ft_cbam_gated"}
TRACK_UPPER_MODELS = {NO_ATTENTION: "ft_upper_plain", "se": "ft_upper_se", "cbam": "ft_upper_cbam"}
TRACK_CLEAN_MODEL = "ft_plain_clean"
#: The mask-aware recogniser built from the main seed's plain whole-face and upper-face fine-tunes
#: (:mod:`maskstudy.study.mask_aware`).
TRACK_MASK_AWARE_MODEL = "ft_mask_aware"
#: How each track model's attention is placed, for labels: (block, variant) with variant "full", "gated" or "upper".
TRACK_VARIANTS = {**{name: (block, "full") for block, name in TRACK_MODELS.items()},
                  **{name: (block, "gated") for block, name in TRACK_GATED_MODELS.items()},
                  **{name: (block, "upper") for block, name in TRACK_UPPER_MODELS.items()},
                  TRACK_CLEAN_MODEL: (NO_ATTENTION, "clean")}
#: Words for each variant in labels (the plain network's whole-face fine-tune needs none).
TRACK_VARIANT_WORDS = {"full": "at full strength", "gated": "gated", "upper": "on the upper face",
                       "clean": "on clean crops only"}
#: Labels of the study's two tracks (``{profile}``: the run's profile).
TRACK_LABELS = {"scratch": "from scratch (the seed's setup at {profile} scale)",
                "pretrained": "pretrained (dlib's ResNet-29 fine-tuned on masks, attention at full strength)"}
#: Label of each attention block.
BLOCK_LABELS = {NO_ATTENTION: PLAIN, "se": "SE", "cbam": "CBAM"}
#: Readable labels of models whose name is not already one (others are shown as they are; a guided student adds
#: ", teacher-guided" to its model's label, :func:`model_label`).
MODEL_LABELS = {"vit": "ViT", "se": "SE", "cbam": "CBAM", TRACK_REFERENCE: "dlib ResNet-29 as it is",
                TRACK_MODELS[NO_ATTENTION]: "plain, fine-tuned",
                **{name: f"{BLOCK_LABELS[block]} {TRACK_VARIANT_WORDS[variant]}, fine-tuned"
                   for name, (block, variant) in TRACK_VARIANTS.items() if name != TRACK_MODELS[NO_ATTENTION]},
                TRACK_MASK_AWARE_MODEL: "mask-aware (upper face when a mask is found)"}
#: The transformer of notebook 04's data-size curve, and the column of the CNN's lead over it.
DATA_SIZE_TRANSFORMER = "vit"
DATA_SIZE_GAP = f"cnn_minus_{DATA_SIZE_TRANSFORMER}"
#: Masked-crop variant of the twins the networks train on unless a run says otherwise.
SHARED_TWINS = "shared"


class RunKind:
    """Values of :attr:`TrainingRun.kind` (see there)."""

    ATTENTION = "attention"
    BASELINE = "baseline"
    LEAVE_OUT = "leave_out"
    TWINS = "twins"
    MARGIN = "margin"
    GUIDED = "guided"
    PRETRAINED = "pretrained"


#: Run kinds in notebook 03's learning curves, the seed study's table (03 and 06) and 06's accuracy figure.
CURVE_KINDS = (RunKind.ATTENTION, RunKind.BASELINE)
SEED_TABLE_KINDS = (RunKind.ATTENTION, RunKind.GUIDED, RunKind.PRETRAINED, RunKind.BASELINE, RunKind.TWINS,
                    RunKind.MARGIN)
FIGURE_KINDS = (RunKind.ATTENTION, RunKind.GUIDED, RunKind.PRETRAINED, RunKind.BASELINE, RunKind.TWINS)
#: Run kinds trained over every seed: their spread over seeds is summarised (notebook 03's seed summary).
SEEDED_KINDS = (RunKind.ATTENTION, RunKind.GUIDED)

#: The scenario the study is about: a masked probe against an unmasked photo. The best CNN is chosen on it, the
#: data-size gap and the leave-one-style-out run are measured on it.
KEY_SCENARIO = MASKED_UNMASKED
#: The two scenarios of runs evaluated only in part (leave-one-style-out run, data-size curve).
CORE_SCENARIOS = (UNMASKED_UNMASKED, MASKED_UNMASKED)
#: Masked-unmasked pairs whose masked photo is detected and aligned by itself, and those in unseen mask styles.
DETECTED = variant_scenario(MASKED_UNMASKED, "detected")
UNSEEN = variant_scenario(MASKED_UNMASKED, "unseen")
#: Masked-masked pairs with both masked photos detected by themselves; the eye-weighted and unseen-detected variants.
BOTH_DETECTED = variant_scenario(MASKED_MASKED, "detected")
DETECTED_EYES = variant_scenario(MASKED_UNMASKED, "detected_eyes")
UNSEEN_DETECTED = variant_scenario(MASKED_UNMASKED, "unseen_detected")

#: The question the study asks, as the report's first line.
QUESTION = ("Does channel attention (SE) or channel + spatial attention (CBAM) recognise people wearing masks better "
            "than the same network without it?")
#: The questions the study asks, in reading order: key -> heading of its verdict and of its group of findings.
QUESTIONS = {
    "attention": "Attention",
    "detection": "Detection on the masked photo",
    "unseen": "Unseen masks",
    "real_masks": "Real masks (MFR2)",
    "training": "Training choices",
    "pretrained": "Teacher and pretrained track",
    "cams": "Where the networks look (CAMs)",
    "recognizer": "A recognizer to use",
}
#: Findings that describe the setup (data, models, accuracies) rather than answer one question.
SETUP = "setup"
#: Display label of every test in figures, tables and sentences, in reading order: the one naming table (reports
#: and notebooks never show a scenario identifier).
TEST_LABELS = {
    UNMASKED_UNMASKED: "unmasked",
    MASKED_UNMASKED: "masked-unmasked, shared alignment",
    DETECTED: "masked-unmasked, mask detected on the photo",
    DETECTED_EYES: "masked-unmasked, detected, eye-weighted alignment",
    UNSEEN: "masked-unmasked, unseen mask styles",
    UNSEEN_DETECTED: "masked-unmasked, unseen styles detected on the photo",
    MASKED_MASKED: "masked-masked, shared alignment",
    BOTH_DETECTED: "masked-masked, masks detected on the photos",
    MFR2: "MFR2 real masks",
}
#: Shorter labels for column headers and axis ticks (tests not listed use :data:`TEST_LABELS`).
TEST_SHORT_LABELS = {MASKED_UNMASKED: "masked-unmasked", DETECTED: "masked-unmasked, detected",
                     DETECTED_EYES: "masked-unmasked, detected, eyes", UNSEEN: "unseen mask styles",
                     UNSEEN_DETECTED: "unseen styles, detected", MASKED_MASKED: "masked-masked",
                     BOTH_DETECTED: "masked-masked, detected", MFR2: "MFR2 real masks"}
#: The tests that carry the answer, in the key table's order (the unmasked reference first).
KEY_TESTS = (UNMASKED_UNMASKED, DETECTED, BOTH_DETECTED, UNSEEN, MFR2)
#: Tests named in the findings' sentences, in reading order.
HEADLINE_TESTS = (UNMASKED_UNMASKED, MASKED_UNMASKED, DETECTED, UNSEEN, BOTH_DETECTED, MFR2)


def test_label(test: str, short: bool = False) -> str:
    """Display label of a test (``masked_unmasked_detected`` -> "masked-unmasked, mask detected on the photo");
    ``short``: the column-header form. Unknown names lose their underscores."""
    if short and test in TEST_SHORT_LABELS:
        return TEST_SHORT_LABELS[test]
    return TEST_LABELS.get(test, test.replace("_", " "))


def masked_tests_first(tests: Iterable[str]) -> list[str]:
    """``tests`` with the masked ones first (in :data:`TEST_LABELS` order), the unmasked reference last."""
    order = {t: i for i, t in enumerate(TEST_LABELS)}
    return sorted(tests, key=lambda t: (t == UNMASKED_UNMASKED, order.get(t, len(order))))


def attention_models(config: Mapping[str, Any]) -> dict[str, str]:
    """Model name -> attention block, in the profile's order: ``{"plain": "none", "se": "se", "cbam": "cbam"}``."""
    return {ATTENTION_NAMES.get(a, a): a for a in config["attention_variants"]}


def attention_block(model: str, config: Mapping[str, Any]) -> str:
    """The attention block (``none``, ``se``, ``cbam``) of a model of either track; ``none`` for other models
    (transformers, baselines)."""
    return attention_models(config).get(model, TRACK_VARIANTS.get(model, (NO_ATTENTION,))[0])


def plain_model(config: Mapping[str, Any]) -> str | None:
    """The attention model without an attention block (``plain``), or ``None`` when the profile trains none."""
    return next((name for name, block in attention_models(config).items() if block == NO_ATTENTION), None)


def attended_models(config: Mapping[str, Any]) -> list[str]:
    """The attention models that have an attention block (e.g. ``se``, ``cbam``), in the profile's order."""
    return [name for name, block in attention_models(config).items() if block != NO_ATTENTION]


def seeds(config: Mapping[str, Any]) -> list[int]:
    """Training seeds of the attention variants: ``seed`` first, then ``extra_seeds`` (distinct, in order)."""
    chosen = [int(config["seed"])]
    for seed in config.get("extra_seeds") or []:
        if int(seed) not in chosen:
            chosen.append(int(seed))
    return chosen


def run_name(model: str, seed: int, config: Mapping[str, Any]) -> str:
    """Name of one training run: the model's name for the main seed, ``<model>_seed<k>`` for the others."""
    return model if int(seed) == int(config["seed"]) else f"{model}_seed{int(seed)}"


def checkpoint(outputs: str | Path, run: str) -> Path:
    """The final checkpoint of training run ``run`` under a run folder's ``outputs/``."""
    return Path(outputs) / "checkpoints" / run / "last.pt"


#: Masked-crop variants a twins run may train on (:data:`maskstudy.datasets.pairs.MASK_VARIANTS`).
TWIN_VARIANTS = ("detected", "detected_eyes")
#: The run of the plain network trained without masked twins (the seed study's baseline).
NOMASK_RUN = f"{PLAIN}_nomask"


def leave_out_run(style: str) -> str:
    """Name of the plain network trained without the twins of mask ``style``."""
    return f"{PLAIN}_without_{style}"


def twins_run(variant: str) -> str:
    """Name of the plain network trained on twins of masked-crop ``variant`` (e.g. ``detected``)."""
    return f"{PLAIN}_{variant}_twins"


def margin_run(margin: str) -> str:
    """Name of the plain network trained with margin head ``margin`` instead of the profile's."""
    return f"{PLAIN}_{margin}"


@dataclass(frozen=True)
class TrainingRun:
    """One network notebook 03 trains: its model name, seed, kind and TrainConfig fields.

    ``kind`` (:class:`RunKind`): ``attention`` (the compared variants, repeated over seeds), ``guided`` (the same
    variants and seeds trained with distillation from a pretrained teacher, :func:`guided_model`), ``baseline`` (no
    masks in training), ``leave_out`` (trained without one mask style's twins), ``twins`` (trained on masked twins
    detected and aligned on the masked photo, ``masked_variant``, as they are met at test time) or ``margin``
    (another margin head on the plain net). (``pretrained`` names the teacher's reference row: never trained.)
    """

    name: str
    model: str
    seed: int
    kind: str
    settings: dict
    left_out_style: str | None = None
    masked_variant: str = SHARED_TWINS

    @property
    def scenarios(self) -> list[str] | None:
        """The LFW scenarios this run is evaluated on (``None``: every test); the leave-one-style-out run meets
        only the two it is compared on."""
        return list(CORE_SCENARIOS) if self.kind == RunKind.LEAVE_OUT else None

    @property
    def identification(self) -> bool:
        """Whether the identification test runs on this network."""
        return self.kind != RunKind.LEAVE_OUT

    @property
    def swaps_twins(self) -> bool:
        """Whether the run trains on other masked crops than the shared twins."""
        return self.masked_variant != SHARED_TWINS


def training_runs(config: Mapping[str, Any], teacher: bool = True) -> dict[str, TrainingRun]:
    """Every training run of notebook 03, by run name, in training order (main seed first). ``teacher=False``
    leaves out the guided students (the teacher is not installed); their ``teacher_embeddings`` are set by
    :func:`with_teacher_targets` once the teacher pass has run."""
    runs: dict[str, TrainingRun] = {}
    attention = attention_models(config)
    for seed in seeds(config):
        for model, block in attention.items():
            name = run_name(model, seed, config)
            runs[name] = TrainingRun(name, model, seed, RunKind.ATTENTION, train_settings(config, block, seed=seed))
    if teacher:
        for seed in seeds(config):
            for model, block in guided_students(config).items():
                name = run_name(model, seed, config)
                runs[name] = TrainingRun(name, model, seed, RunKind.GUIDED, train_settings(
                    config, block, seed=seed, distill_weight=float(config["teacher_distill_weight"])))
    main = int(config["seed"])
    if config.get("nomask_baseline"):
        runs[NOMASK_RUN] = TrainingRun(NOMASK_RUN, NOMASK_RUN, main, RunKind.BASELINE,
                                       train_settings(config, NO_ATTENTION, masked_share=0.0))
    style = config.get("leave_out_style")
    if style and style not in config["mask_styles"]:
        raise ValueError(f"leave_out_style={style!r} is not one of the training styles {config['mask_styles']}")
    if style:
        name = leave_out_run(style)
        runs[name] = TrainingRun(name, name, main, RunKind.LEAVE_OUT, train_settings(config, NO_ATTENTION), style)
    variant = config.get("detected_twins_run")
    if variant and variant not in TWIN_VARIANTS:
        raise ValueError(f"detected_twins_run={variant!r}: expected {' or '.join(map(repr, TWIN_VARIANTS))} or null")
    if variant:
        name = twins_run(variant)
        runs[name] = TrainingRun(name, name, main, RunKind.TWINS, train_settings(config, NO_ATTENTION),
                                 masked_variant=variant)
    for margin in margin_losses(config):
        name = margin_run(margin)
        runs[name] = TrainingRun(name, name, main, RunKind.MARGIN, train_settings(config, NO_ATTENTION, margin=margin))
    return runs


def guided_model(model: str) -> str:
    """Name of attention model ``model`` trained with the teacher's guidance (``cbam`` -> ``cbam_guided``)."""
    return f"{model}_guided"


def guided_students(config: Mapping[str, Any]) -> dict[str, str]:
    """Guided model name -> attention block for each of ``teacher_students`` (empty without a ``teacher``)."""
    if not config.get("teacher"):
        return {}
    return {guided_model(ATTENTION_NAMES.get(b, b)): b for b in config.get("teacher_students") or []}


def pretrained_model(config: Mapping[str, Any]) -> str | None:
    """Name of the pretrained reference row (the teacher evaluated as it is), or ``None`` without a teacher."""
    return f"{config['teacher']}_{RunKind.PRETRAINED}" if config.get("teacher") else None


def reference_tests(config: Mapping[str, Any], available: Iterable[str]) -> list[str]:
    """The LFW scenarios the pretrained reference is evaluated on: ``teacher_reference_tests`` (null: all)
    among those ``available``."""
    chosen = config.get("teacher_reference_tests")
    return list(available) if chosen is None else _present(chosen, available)


def with_teacher_targets(runs: Mapping[str, TrainingRun], targets: str | Path) -> dict[str, TrainingRun]:
    """``runs`` with every guided run reading its teacher embeddings from ``targets`` (the teacher pass's file)."""
    from dataclasses import replace

    return {name: replace(run, settings={**run.settings, "teacher_embeddings": str(targets)})
            if run.kind == RunKind.GUIDED else run for name, run in runs.items()}


def guided_comparisons(config: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Pairs ``(a, b)`` compared as a - b for the guided students: each guided model against the same model
    trained without the teacher, then the guided models against each other as :func:`attention_comparisons`
    orders the attention models (e.g. cbam_guided - plain_guided)."""
    students = guided_students(config)
    unguided = {guided_model(m): m for m in attention_models(config)}
    pairs = [(g, unguided[g]) for g in students if g in unguided]
    order = [guided_model(m) for m in attention_models(config) if guided_model(m) in students]
    base = guided_model(plain_model(config)) if plain_model(config) and guided_model(plain_model(config)) in students \
        else (order[0] if order else None)
    others = [g for g in order if g != base]
    return pairs + [(g, base) for g in others] + [(b, a) for i, a in enumerate(others) for b in others[i + 1:]]


def margin_losses(config: Mapping[str, Any]) -> list[str]:
    """The margin heads the plain network is also trained with (``margin_losses``; may be empty)."""
    return list(config.get("margin_losses") or [])


def margin_runs(config: Mapping[str, Any]) -> list[str]:
    """Names of the margin-loss runs, in the profile's order."""
    return [margin_run(m) for m in margin_losses(config)]


def nomask_run(config: Mapping[str, Any]) -> str | None:
    """The no-mask baseline's run name, or ``None`` when the profile skips it."""
    return NOMASK_RUN if config.get("nomask_baseline") else None


def reference_run(config: Mapping[str, Any]) -> str | None:
    """The plain network's main-seed run: what the baseline, twins, margin and leave-one-style-out runs are
    compared with (``None`` when the profile trains no plain network)."""
    plain = plain_model(config)
    return None if plain is None else run_name(plain, int(config["seed"]), config)


def plain_runs(config: Mapping[str, Any]) -> list[str]:
    """The plain network's runs over all seeds (main seed first); empty when it is not trained."""
    plain = plain_model(config)
    return [] if plain is None else [run_name(plain, seed, config) for seed in seeds(config)]


def baseline_comparisons(config: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Single-run comparisons ``(a, b)`` (a - b, main seed) of the plain network's extra runs: plain against
    the no-mask baseline, each twins run against plain, plain against each margin head."""
    reference = reference_run(config)
    if reference is None:
        return []
    runs = training_runs(config).values()
    pairs = [(reference, r.name) for r in runs if r.kind == RunKind.BASELINE]
    pairs += [(r.name, reference) for r in runs if r.kind == RunKind.TWINS]
    return pairs + [(reference, r.name) for r in runs if r.kind == RunKind.MARGIN]


def margin_table_models(config: Mapping[str, Any]) -> list[str]:
    """Models of the margin-loss table: the plain network (the profile's head) and each other head's run."""
    plain = plain_model(config)
    return ([plain] if plain else []) + margin_runs(config)


def roc_runs(config: Mapping[str, Any]) -> list[str]:
    """Runs of notebook 06's ROC figure: the attention models (main seed) and the no-mask baseline."""
    return list(attention_models(config)) + ([NOMASK_RUN] if config.get("nomask_baseline") else [])


def explained_networks(config: Mapping[str, Any]) -> list[tuple[str, int]]:
    """``(model, seed)`` of every network notebook 05 explains: the attention models with every seed, then the
    transformers with the main seed."""
    main = int(config["seed"])
    return [(m, s) for m in attention_models(config) for s in seeds(config)] + [(m, main) for m in TRANSFORMER_MODELS]


def attention_comparisons(config: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Pairs ``(a, b)`` of attention models compared as a - b: each block against plain, then the blocks
    against each other (e.g. se - plain, cbam - plain, cbam - se)."""
    names = list(attention_models(config))
    base = plain_model(config) or names[0]
    others = [n for n in names if n != base]
    return [(n, base) for n in others] + [(b, a) for i, a in enumerate(others) for b in others[i + 1:]]


def _present(tests: Iterable[str], available: Iterable[str]) -> list[str]:
    have = set(available)
    return [t for t in tests if t in have]


def table_tests(available: Iterable[str]) -> list[str]:
    """Columns of the seed study's table, in order: the basic scenarios, then those of the masked photo detected
    by itself, of unseen mask styles and MFR2 that were ``available``."""
    return list(SCENARIOS) + _present((DETECTED, UNSEEN, MFR2), available)


def mask_scenario_order(available: Iterable[str]) -> list[str]:
    """The masked scenarios of the seen/unseen and shared/detected table, in order: each masked basic scenario
    followed by its variants, then MFR2 (only those ``available``)."""
    order = [MASKED_UNMASKED, *variants_of(MASKED_UNMASKED), MASKED_MASKED, *variants_of(MASKED_MASKED), MFR2]
    return _present(order, available)


def roc_tests(available: Iterable[str]) -> list[str]:
    """Panels of notebook 06's ROC figure, in order (only those ``available``)."""
    return _present((*SCENARIOS, DETECTED, MFR2), available)


def without_style(rows, style: str):
    """Training rows whose twins of ``style`` are removed (those photos are always used unmasked): the
    leave-one-style-out run never sees that mask."""
    rows = rows.copy()
    rows.loc[rows["mask_style"] == style, "masked"] = ""
    return rows


def with_masked_variant(rows, variant: str, data_dir):
    """Training rows whose masked twins are replaced by their ``variant`` crops (e.g. ``detected``: the masked
    photo detected and aligned by itself) where notebook 01 built them; other rows keep their shared twin."""
    from ..datasets.masked_photos import variant_name

    rows = rows.copy()
    data_dir = Path(data_dir)

    def swap(row):
        if not row["masked"]:
            return row["masked"]
        candidate = variant_name(row["aligned"], variant)
        return candidate if (data_dir / row["dataset"] / "aligned" / candidate).is_file() else row["masked"]

    rows["masked"] = rows.apply(swap, axis=1)
    return rows


#: Readable label of each masked-crop variant (:data:`maskstudy.datasets.pairs.MASK_VARIANTS`) in figures.
VARIANT_LABELS = {SHARED_TWINS: "shared", "detected": "detected", "detected_eyes": "detected, eye-weighted",
                  "unseen": "unseen", "unseen_detected": "unseen, detected"}


def variant_titles(seen_style: str, unseen_style: str) -> dict[str, str]:
    """Figure title of each masked-crop variant of one photo, in :data:`maskstudy.datasets.pairs.MASK_VARIANTS` order; the
    shared twin and the unseen-style twin name their mask style."""
    styled = {SHARED_TWINS: seen_style, "unseen": unseen_style}
    return {v: f"{VARIANT_LABELS[v]} {styled[v]}" if v in styled else VARIANT_LABELS[v] for v in MASK_VARIANTS}


def model_label(model: str) -> str:
    """Readable label of a model name (``vit`` -> ``ViT``, ``cbam_guided`` -> ``CBAM, teacher-guided``,
    ``ft_se`` -> ``SE, fine-tuned``)."""
    suffix = guided_model("")
    if model.endswith(suffix) and model != suffix:
        return f"{model_label(model[:-len(suffix)])}, teacher-guided"
    return MODEL_LABELS.get(model, model)


def _block_label(block: str) -> str:
    return BLOCK_LABELS.get(block, block)


def attention_label(model: str) -> str:
    """The attention block of a model of either track, as a label, with how the pretrained track placed it when
    that is not its default, full strength on the whole face (``se``, ``ft_se`` -> ``SE``; ``ft_plain`` ->
    ``plain``; ``ft_cbam_gated`` -> ``CBAM gated``; ``ft_upper_se`` -> ``SE on the upper face``): how the forest
    plot names comparisons inside a track (whose label says "attention at full strength")."""
    if model in TRACK_VARIANTS:
        block, variant = TRACK_VARIANTS[model]
        return _block_label(block) if variant == "full" else f"{_block_label(block)} {TRACK_VARIANT_WORDS[variant]}"
    return model_label(model)


def comparison_label(comparison: str) -> str:
    """``"ft_cbam - ft_plain"`` and ``"cbam - plain"`` -> ``"CBAM − plain"``; two models of one other variant name
    it once (``"ft_upper_cbam - ft_upper_plain"`` -> ``"CBAM − plain, upper face"``; ``"ft_cbam_gated - ft_plain"``
    -> ``"CBAM gated − plain"``)."""
    first, _, second = comparison.partition(" - ")
    if not second:
        return comparison
    a, b = TRACK_VARIANTS.get(first), TRACK_VARIANTS.get(second)
    if a and b and a[1] == b[1] and a[1] != "full":
        words = TRACK_VARIANT_WORDS[a[1]].removeprefix("on the ")
        return f"{_block_label(a[0])} − {_block_label(b[0])}, {words}"
    return f"{attention_label(first)} − {attention_label(second)}"


def display_name(run: str) -> str:
    """Readable label of a run or model name for tables and figures."""
    return run.replace("_seed", " seed ").replace(leave_out_run(""), f"{PLAIN} without ").replace("_", " ")
