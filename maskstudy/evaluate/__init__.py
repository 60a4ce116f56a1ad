"""Face verification and identification metrics, embeddings, and a checkpoint-backed face recogniser.

Verification follows the LFW protocol (Huang et al., "Labeled Faces in the Wild", UMass TR 07-49, 2007):
pairs are split into folds; for each fold the decision threshold is the one that maximises accuracy on the
*other* folds, the fold's accuracy is measured at that threshold, and the mean and standard deviation over the
folds are reported. Scores are cosine similarities of L2-normalised embeddings of aligned crops, with the
embeddings of a crop and of its horizontal mirror summed before normalising (the flip fusion of ArcFace's
evaluation code: Deng et al., "ArcFace: Additive Angular Margin Loss for Deep Face Recognition", CVPR 2019).
ROC summaries (AUC, EER, TAR at fixed FAR) and bootstrap confidence intervals (Efron & Tibshirani, "An
Introduction to the Bootstrap", 1993) complete the verification report; :func:`identification_rank1` measures
closed-set rank-1 identification of masked probes against an unmasked gallery.

* :mod:`.metrics`: numpy only: :func:`best_threshold`, :func:`kfold_accuracy`, :func:`roc_metrics`,
  :func:`bootstrap_ci`.
* :mod:`.embed`: :func:`compute_embeddings`, the one function that runs a backbone on crops (training
  validation, evaluation and Grad-CAM call it with their own flip / precision / normalisation), and
  :func:`embed_crops`, its evaluation setting.
* :mod:`.verification` (:func:`evaluate_pairs`) and :mod:`.identification` (:func:`identification_rank1`).
* :mod:`.recognizer`: :class:`FaceRecognizer` turns raw photos into vectors (MTCNN detection, 5-point
  alignment onto the ArcFace 112x112 template, encoding) with any model file of the study
  (:mod:`maskstudy.models.model_file`).
* :mod:`.cli`: :func:`verify_command`, behind ``python -m maskstudy verify``; :mod:`.compare`:
  :func:`compare_command`, behind ``python -m maskstudy compare``.
* :mod:`.store`: evaluation embeddings kept on disk; :mod:`.statistics`: cluster bootstrap, Holm's correction,
  seed spread and fixed-threshold error rates, for every stage that compares numbers.

Imports :mod:`maskstudy.core`, :mod:`maskstudy.faces`, :mod:`maskstudy.datasets` and :mod:`maskstudy.models`.
"""

from ..faces.align import CROP_SIZE, centre_crop
from ..models.checkpoint import CHECKPOINT_FORMAT, CheckpointError, backbone_from_checkpoint, load_checkpoint
from .cli import add_verify_arguments, read_any_pairs, run_verify, verify_command
from .embed import compute_embeddings, embed_crops, embed_paths
from .identification import identification_rank1
from .metrics import (
    FAR_LEVELS,
    INTERNAL_FOLDS,
    best_threshold,
    bootstrap_ci,
    bootstrap_p_value,
    internal_folds,
    kfold_accuracy,
    pair_correctness,
    roc_metrics,
)
from .recognizer import EmbedResult, FaceRecognizer, read_image
from .verification import evaluate_pairs

__all__ = [
    "CHECKPOINT_FORMAT", "CROP_SIZE", "CheckpointError", "EmbedResult", "FAR_LEVELS", "FaceRecognizer", "read_image",
    "INTERNAL_FOLDS", "add_verify_arguments", "backbone_from_checkpoint", "best_threshold", "bootstrap_ci",
    "bootstrap_p_value", "centre_crop", "compute_embeddings", "embed_crops", "embed_paths", "evaluate_pairs", "identification_rank1",
    "internal_folds", "kfold_accuracy", "load_checkpoint", "pair_correctness", "read_any_pairs", "roc_metrics",
    "run_verify", "verify_command",
]
