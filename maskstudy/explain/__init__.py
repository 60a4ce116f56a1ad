"""Where does a face-recognition backbone look? CAMs of the similarity to a reference, with exact geometry, region
shares on raw maps, deletion/insertion faithfulness curves, a weight-randomisation check and the verdict.

* :mod:`.cams`: :class:`SimilarityTarget`, :func:`compute_grid_cams` (raw maps on the layer's grid; HiResCAM by
  default, Draelos and Carin 2020), :func:`compute_cams` (the same at the crop size), :func:`randomized_copy`.
* :mod:`.geometry`: :func:`cell_centres` / :func:`grid_to_crop` (cells where the receptive grid puts them),
  :func:`eye_band_mask`, :func:`mask_region`, :func:`visible_face_region`, :func:`attention_on_regions`.
* :mod:`.faithfulness`: :func:`deletion_insertion_curves` (RISE, Petsiuk et al. 2018) against
  :func:`control_rankings`; :func:`rank_correlation` (Adebayo et al. 2018); the older :func:`deletion_check`.
* :mod:`.verdict`: :func:`mean_interval` (over seeds, else images) and :func:`attention_verdict`.
* :mod:`.cache`: :class:`ExplanationCache`, the maps and curves kept on disk by their inputs' hash (a rerun of
  notebook 05 recomputes only what changed).

Imports every stage up to :mod:`maskstudy.train`; the study imports it.
"""

from .cache import ExplanationCache
from .cams import (
    CAM_METHODS,
    DissimilarityTarget,
    SimilarityTarget,
    compute_cams,
    compute_grid_cams,
    crop_centres,
    overlay,
    randomized_copy,
    reshape_transform,
    target_layers,
)
from .faithfulness import (
    BLUR_RADIUS,
    CONTROL_RANKINGS,
    RANDOM_BLOB_GRID,
    blur_region,
    control_rankings,
    curve_areas,
    curve_fractions,
    deletion_check,
    deletion_insertion_curves,
    pixel_order,
    random_blob_region,
    rank_correlation,
    top_cam_region,
)
from .geometry import (
    EYE_BAND_ABOVE,
    EYE_BAND_BELOW,
    EYE_BAND_SIDE,
    attention_on_regions,
    cam_mass_share,
    cell_centres,
    cell_centres_2d,
    eye_band_mask,
    face_region,
    grid_size,
    grid_to_crop,
    interpolation_matrix,
    mask_region,
    receptive_grid,
    resize_centres,
    visible_face_region,
)
from .verdict import (
    attention_verdict,
    controls_beaten,
    mean_interval,
    seed_interval,
    seed_p_value,
    separated_after_holm,
)

__all__ = [
    "ExplanationCache",
    "BLUR_RADIUS", "CAM_METHODS", "CONTROL_RANKINGS", "DissimilarityTarget", "EYE_BAND_ABOVE", "EYE_BAND_BELOW",
    "EYE_BAND_SIDE", "RANDOM_BLOB_GRID", "SimilarityTarget", "attention_on_regions", "attention_verdict",
    "blur_region", "cam_mass_share", "cell_centres", "cell_centres_2d", "compute_cams", "compute_grid_cams", "control_rankings", "crop_centres",
    "controls_beaten", "curve_areas", "curve_fractions", "deletion_check", "deletion_insertion_curves",
    "eye_band_mask", "face_region", "grid_size", "grid_to_crop", "interpolation_matrix", "mask_region",
    "mean_interval", "overlay", "pixel_order", "randomized_copy", "rank_correlation", "random_blob_region",
    "receptive_grid", "reshape_transform", "resize_centres", "seed_interval", "seed_p_value", "separated_after_holm",
    "target_layers", "top_cam_region",
    "visible_face_region",
]
