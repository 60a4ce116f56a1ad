"""Training: an IR-ResNet backbone and a margin head trained on clean and masked aligned crops.

The recipe follows ArcFace (Deng et al., "ArcFace: Additive Angular Margin Loss for Deep Face
Recognition", CVPR 2019) as implemented in insightface's ``recognition/arcface_torch``: SGD with
momentum 0.9 and weight decay 5e-4 on backbone and class centres alike, a linear warmup then a
per-step decay (arcface_torch's ``PolyScheduler`` uses power 2; cosine is the alternative), the
backbone's gradient norm clipped at 5, mixed precision with a gradient scaler on GPUs, pixels
normalised to [-1, 1] (:func:`maskstudy.faces.preprocess.to_input`), horizontal flips, and one margin head
(:func:`maskstudy.train.losses.build_margin_head`) replicated on every process. Unlike arcface_torch
(which shards the class centres with Partial FC for millions of identities) the head here is small
and wrapped in ``DistributedDataParallel`` like the backbone.

Additions for the masked-face study: each training sample is the masked twin of its crop with
probability ``masked_share`` (0.0 is the seed study's "unmasked only" baseline), a light
brightness/contrast jitter, an identity-capped or identity-balanced sampler for long-tailed data
(LFW), and a held-out set of identities scored on masked-unmasked pairs after every epoch.

Everything random derives from ``(seed, epoch)``: the epoch's sample order and augmentation choices
come from their own seeded ``torch.Generator`` (:mod:`maskstudy.core.seeding`), so a run is deterministic on
the CPU and a resumed run continues exactly where the checkpoint left off (even mid-epoch, after
``max_steps``).

Outputs in ``out_dir``: ``config.json`` (a :class:`TrainConfig`, reusable as ``--config``),
``log.csv`` (one row per epoch) and ``last.pt`` (the format of :mod:`maskstudy.models.checkpoint`), all written
atomically. Load checkpoints with :func:`load_checkpoint` / :func:`load_backbone`, which always use
``torch.load(..., weights_only=True)``.

Multi-GPU (or multi-process CPU) training goes through ``torchrun``::

    torchrun --nproc_per_node 4 -m maskstudy.train --config cfg.json \\
        --train-csv data/processed/split/train_clean.csv --data-dir data/processed --out-dir runs/ir50_se

``batch_size`` is per process (as in arcface_torch); the global batch is ``batch_size * world_size``.

Modules: :mod:`.config` (:class:`TrainConfig`, defaults from the base profile), :mod:`.data` (rows, held-out
identities, crops, epoch plans, augmentation), :mod:`.optimization` (optimizer, LR schedule),
:mod:`.validation`, :mod:`.runtime` (device, processes, precision), :mod:`.step` (the modules of a run and one
optimizer step), :mod:`.distill` (the optional distillation term from a pretrained teacher), :mod:`.loop`
(:func:`train`) and :mod:`.cli` (``python -m maskstudy.train``); :mod:`.losses` (the margin heads: SphereFace,
CosFace, ArcFace) and :mod:`.finetune` (the pretrained track's fine-tuning from cached features). Imports every
stage up to :mod:`maskstudy.teachers` (the distillation targets).
"""

from ..core.seeding import derive_seed
from ..faces.align import CROP_SIZE
from ..models.checkpoint import CHECKPOINT_FORMAT, load_checkpoint
from .cli import build_parser, main
from .config import LOG_COLUMNS, RUNTIME_KEYS, ConfigMismatchError, TrainConfig, load_backbone
from .data import EpochPlan, FaceCropDataset, augment_batch, epoch_order, epoch_plan, split_identities
from .loop import TrainResult, train, train_or_restart
from .optimization import learning_rate

__all__ = [
    "CHECKPOINT_FORMAT",
    "CROP_SIZE",
    "LOG_COLUMNS",
    "RUNTIME_KEYS",
    "ConfigMismatchError",
    "EpochPlan",
    "FaceCropDataset",
    "TrainConfig",
    "TrainResult",
    "augment_batch",
    "build_parser",
    "derive_seed",
    "epoch_order",
    "epoch_plan",
    "learning_rate",
    "load_backbone",
    "load_checkpoint",
    "main",
    "split_identities",
    "train",
    "train_or_restart",
]
