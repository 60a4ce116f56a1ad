"""Where does a face-recognition backbone look? Grad-CAM for embeddings, face regions, a faithfulness check.

Grad-CAM (R. R. Selvaraju, M. Cogswell, A. Das, R. Vedantam, D. Parikh and D. Batra, "Grad-CAM: Visual
Explanations from Deep Networks via Gradient-based Localization", ICCV 2017) weights the channels of a
convolutional feature map by the spatially averaged gradient of a scalar score and keeps the positive part
of the weighted sum. A face-recognition model has no class score, so the score here is the **cosine
similarity between the image's embedding and a fixed reference embedding** (:class:`SimilarityTarget`),
e.g. the embedding of the same person's unmasked photo: the CAM shows the pixels that make the image look
like that person. This is the "similarity target" idea of the pytorch-grad-cam library (J. Gildenblat and
contributors, https://github.com/jacobgil/pytorch-grad-cam), whose CAM implementations are used as is;
the targets are plain callables on the model output of one image, as that library expects.

Pieces, one concept each:

* :class:`SimilarityTarget` / :class:`DissimilarityTarget`: the CAM score ``cos(f(x), r)`` / ``1 - cos``.
* :func:`target_layers` / :func:`reshape_transform`: which layer to explain (``model.layer4`` for the
  IR-ResNets, ``model.cam_target_layer`` for models that name one) and how to turn its tokens into a map.
* :func:`compute_cams`: CAMs of a batch of aligned crops, ``(N, 112, 112)`` in ``[0, 1]``; fp32 (autocast
  off), model in eval mode, hooks always released.
* :func:`eye_band_mask` / :func:`mask_region`: the periocular band and the synthetic-mask area on the
  ArcFace 112x112 template; :func:`cam_mass_share` / :func:`attention_on_regions`: share of CAM mass
  inside them.
* :func:`deletion_check`: a faithfulness check (blur the most-attended pixels vs. a random region of the
  same size and compare the drop in similarity), in the spirit of the deletion metric of RISE (V. Petsiuk,
  A. Das and K. Saenko, BMVC 2018) and of ROAD (Y. Rong et al., ICML 2022), reduced to one step.
* :func:`overlay`: a heat-map overlay for figures.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from functools import lru_cache

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from .align import template
from .masks import mask_alpha
from .models.registry import lookup
from .preprocess import to_input

__all__ = [
    "BLUR_RADIUS",
    "CAM_METHODS",
    "DissimilarityTarget",
    "EYE_BAND_ABOVE",
    "EYE_BAND_BELOW",
    "EYE_BAND_SIDE",
    "RANDOM_BLOB_GRID",
    "SimilarityTarget",
    "attention_on_regions",
    "blur_region",
    "cam_mass_share",
    "compute_cams",
    "deletion_check",
    "eye_band_mask",
    "mask_region",
    "overlay",
    "random_blob_region",
    "reshape_transform",
    "target_layers",
    "top_cam_region",
]


# ------------------------------------------------------------------------------------------ targets
class SimilarityTarget:
    """Grad-CAM score of one image: cosine similarity of its embedding to a fixed reference embedding.

    ``reference_embedding`` has shape ``(D,)`` or ``(1, D)`` (numpy or torch; it is detached and copied).
    Called on the model output of ONE image, shape ``(D,)`` or ``(1, D)``, it returns the 0-d tensor
    ``cos(output, reference)``, differentiable w.r.t. the output. Neither vector needs to be L2-normalised
    (ArcFace backbones output un-normalised embeddings); both are compared in fp32.

    A CAM of an image against its own embedding is all zero: the similarity is at its maximum, where the
    gradient vanishes. Use another image of the person (e.g. the unmasked reference) as the reference.
    """

    def __init__(self, reference_embedding):
        ref = torch.as_tensor(reference_embedding).detach()
        if ref.ndim == 2 and ref.shape[0] == 1:
            ref = ref[0]
        if ref.ndim != 1 or ref.numel() == 0:
            raise ValueError(f"reference embedding must have shape (D,) or (1, D), got {tuple(ref.shape)}")
        ref = ref.to(torch.float32).clone()
        if not torch.isfinite(ref).all() or float(ref.norm()) == 0.0:
            raise ValueError("reference embedding must be finite and non-zero")
        self.reference = ref

    def similarity(self, model_output: torch.Tensor) -> torch.Tensor:
        """``cos(model_output, reference)`` as a 0-d fp32 tensor."""
        out = model_output
        if out.ndim == 2 and out.shape[0] == 1:
            out = out[0]
        if out.ndim != 1 or out.shape[0] != self.reference.shape[0]:
            raise ValueError(
                f"expected the embedding of one image, shape ({self.reference.shape[0]},) or "
                f"(1, {self.reference.shape[0]}), got {tuple(model_output.shape)}"
            )
        out = out.float()
        return F.cosine_similarity(out, self.reference.to(out.device), dim=0, eps=1e-8)

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        return self.similarity(model_output)


class DissimilarityTarget(SimilarityTarget):
    """``1 - cos(output, reference)``: the CAM shows what makes the image look *unlike* the reference."""

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        return 1.0 - self.similarity(model_output)


# ------------------------------------------------------------------------------------------ layers
def target_layers(model: nn.Module) -> list[nn.Module]:
    """The layer(s) to explain: ``[model.cam_target_layer]`` when the model names one (ViTs and hybrids),
    else ``[model.layer4]``, the last convolutional stage of an IR-ResNet."""
    layer = getattr(model, "cam_target_layer", None)
    if isinstance(layer, nn.Module):
        return [layer]
    layer = getattr(model, "layer4", None)
    if isinstance(layer, nn.Module):
        return [layer]
    raise ValueError(
        f"don't know which layer of {type(model).__name__} to explain: give the model a "
        "`cam_target_layer` module attribute (or a `layer4` stage, as the IR-ResNets have)"
    )


def reshape_transform(model: nn.Module) -> Callable | None:
    """The model's ``reshape_transform`` (tokens ``(B, T, C)`` -> map ``(B, C, h, w)`` for ViTs), or None
    for convolutional models whose target layer already outputs a map."""
    transform = getattr(model, "reshape_transform", None)
    return transform if callable(transform) else None


# ------------------------------------------------------------------------------------------ CAMs
CAM_METHODS: dict[str, str] = {
    "gradcam": "GradCAM",  # Selvaraju et al., ICCV 2017
    "gradcam++": "GradCAMPlusPlus",  # Chattopadhay et al., WACV 2018
    "hirescam": "HiResCAM",  # Draelos and Carin, arXiv:2011.08891
    "xgradcam": "XGradCAM",  # Fu et al., BMVC 2020
    "layercam": "LayerCAM",  # Jiang et al., IEEE TIP 2021
    "gradcam_elementwise": "GradCAMElementWise",  # pytorch-grad-cam's element-wise Grad-CAM
}
"""Registry of :func:`compute_cams` methods: name (case-insensitive) -> class name in ``pytorch_grad_cam``
(imported on first use). All are gradient-based, so they depend on the target; gradient-free CAMs
(EigenCAM, ...) would ignore the reference and are left out. Add entries to extend it."""


def _cam_class(method: str) -> type:
    import pytorch_grad_cam

    return getattr(pytorch_grad_cam, lookup(CAM_METHODS, str(method).lower(), "CAM method"))


def _model_device(model: nn.Module) -> torch.device:
    tensor = next(model.parameters(), None)
    if tensor is None:
        tensor = next(model.buffers(), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def _check_crops(crops, name: str = "crops") -> np.ndarray:
    array = crops.detach().cpu().numpy() if isinstance(crops, torch.Tensor) else np.asarray(crops)
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[-1] != 3 or array.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8 of shape (N, H, W, 3), got {array.dtype} {array.shape}")
    return array


@contextlib.contextmanager
def _fp32_grad(device: torch.device) -> Iterator[None]:
    """Gradients on (also inside a caller's ``no_grad`` / ``inference_mode``), autocast off."""
    with torch.inference_mode(False), torch.enable_grad(), torch.autocast(device_type=device.type, enabled=False):
        yield


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _embed(model: nn.Module, crops: np.ndarray, input_size: int, batch_size: int) -> torch.Tensor:
    """Raw (un-normalised) fp32 embeddings ``(N, D)`` on the CPU: eval mode, autocast off, no flip."""
    device = _model_device(model)
    outputs = []
    with _eval_mode(model), torch.no_grad(), torch.autocast(device_type=device.type, enabled=False):
        for start in range(0, len(crops), batch_size):
            x = to_input(crops[start:start + batch_size], input_size, device=device)
            outputs.append(model(x).float().cpu())
    return torch.cat(outputs)


def _reference_embeddings(model, references, n: int, input_size: int, batch_size: int) -> torch.Tensor:
    """References as ``(n, D)`` fp32 embeddings: uint8 crops ``(n, H, W, 3)`` are embedded (see :func:`_embed`),
    float arrays ``(n, D)`` are taken as embeddings."""
    ref = references.detach().cpu() if isinstance(references, torch.Tensor) else np.asarray(references)
    is_uint8 = ref.dtype in (np.uint8, torch.uint8)
    if ref.ndim == 4:
        ref = _embed(model, _check_crops(ref, "references"), input_size, batch_size)
    elif ref.ndim == 2 and not is_uint8:
        ref = torch.as_tensor(ref).to(torch.float32)
    else:
        raise ValueError(
            "references must be uint8 crops (N, H, W, 3) or embeddings (N, D), "
            f"got {ref.dtype} {tuple(ref.shape)}"
        )
    if len(ref) != n:
        raise ValueError(f"got {len(ref)} references for {n} crops")
    return ref


@contextlib.contextmanager
def _cam_extractor(model: nn.Module, cam_class: type) -> Iterator:
    """A pytorch-grad-cam CAM object whose hooks are released on exit, whatever happens.

    (The library's own ``with`` block would also release them, but it swallows ``IndexError``.)
    """
    cam = cam_class(model=model, target_layers=target_layers(model), reshape_transform=reshape_transform(model))
    try:
        yield cam
    finally:
        cam.activations_and_grads.release()
        cam.outputs = None


def _resize_maps(maps: np.ndarray, height: int, width: int) -> np.ndarray:
    if maps.shape[-2:] != (height, width):
        maps = F.interpolate(torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32))[:, None],
                             size=(height, width), mode="bilinear", align_corners=False)[:, 0].numpy()
    return np.clip(maps, 0.0, 1.0).astype(np.float32, copy=False)


def compute_cams(
    model: nn.Module,
    crops,
    references,
    input_size: int,
    method: str = "gradcam",
    batch_size: int = 16,
) -> np.ndarray:
    """CAMs of aligned crops w.r.t. their references: ``(N, H, W)`` float32 in ``[0, 1]`` at the crop size.

    ``crops``: uint8 ``(N, H, W, 3)`` aligned crops (112x112 in this study); ``references``: uint8 crops
    ``(N, H', W', 3)`` (embedded in fp32, eval mode, no flip) or embeddings ``(N, D)``, one per crop. The
    score of crop ``i`` is ``SimilarityTarget(references[i])``; ``method`` is one of :data:`CAM_METHODS`.
    The layer is :func:`target_layers` (with :func:`reshape_transform`).

    As in pytorch-grad-cam each map is min-max scaled to ``[0, 1]`` per image at ``input_size``, then
    resized (bilinear) to the crop size. Maps are computed in fp32 with autocast explicitly off, gradients
    on (also when called under ``no_grad``), the model in eval mode on its own device (CPU or CUDA). Its
    training flag is restored, no ``.grad`` is left on its parameters, and the CAM hooks are removed
    afterwards, also on errors.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    cam_class = _cam_class(method)
    crops = _check_crops(crops)
    n, height, width = crops.shape[:3]
    out = np.zeros((n, height, width), dtype=np.float32)
    if n == 0:
        return out
    refs = _reference_embeddings(model, references, n, input_size, batch_size)
    device = _model_device(model)
    try:
        with _eval_mode(model), _cam_extractor(model, cam_class) as cam, _fp32_grad(device):
            for start in range(0, n, batch_size):
                stop = min(n, start + batch_size)
                # An input that requires grad keeps the graph alive even when the parameters are frozen.
                x = to_input(crops[start:stop], input_size, device=device).requires_grad_(True)
                targets = [SimilarityTarget(r) for r in refs[start:stop]]
                maps = cam(input_tensor=x, targets=targets)
                out[start:stop] = _resize_maps(np.asarray(maps, dtype=np.float32), height, width)
    finally:
        model.zero_grad(set_to_none=True)
    return out


# ------------------------------------------------------------------------------------------ regions
EYE_BAND_ABOVE = 0.45
"""The eye band starts this many inter-ocular distances ``d`` above the eye line (eyebrows included)."""
EYE_BAND_BELOW = 0.35
"""... and ends this many ``d`` below it (lower lids and the top of the cheeks)."""
EYE_BAND_SIDE = 0.6
"""... and reaches this many ``d`` beyond each eye's centre sideways (outer eye corners, temples)."""


def _template_geometry(size: int) -> tuple[np.ndarray, float, float]:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 8:
        raise ValueError(f"size must be an integer >= 8, got {size!r}")
    points = template(int(size))
    left, right = points[0], points[1]
    return points, float(np.hypot(*(right - left))), float((left[1] + right[1]) / 2.0)


@lru_cache(maxsize=8)
def _mask_region(size: int) -> np.ndarray:
    points, _, _ = _template_geometry(size)
    region = mask_alpha((size, size), points) > 0.5
    region.setflags(write=False)
    return region


def mask_region(size: int = 112) -> np.ndarray:
    """Bool ``(size, size)``: the synthetic face mask on the aligned crop, i.e. the pixels the mask of
    :mod:`maskstudy.masks` covers by more than half when drawn on the ArcFace template landmarks (nose,
    mouth, chin and the lower cheeks)."""
    return _mask_region(int(size)).copy()


@lru_cache(maxsize=8)
def _eye_band(size: int) -> np.ndarray:
    points, d, eye_y = _template_geometry(size)
    top, bottom = eye_y - EYE_BAND_ABOVE * d, eye_y + EYE_BAND_BELOW * d
    left, right = points[0, 0] - EYE_BAND_SIDE * d, points[1, 0] + EYE_BAND_SIDE * d
    centres = np.arange(size) + 0.5  # pixel i covers [i, i + 1), as in maskstudy.masks
    rows = (centres >= top) & (centres <= bottom)
    cols = (centres >= left) & (centres <= right)
    band = rows[:, None] & cols[None, :] & ~_mask_region(size)
    band.setflags(write=False)
    return band


def eye_band_mask(size: int = 112) -> np.ndarray:
    """Bool ``(size, size)``: the periocular band of the aligned crop, the part of the face a mask leaves visible.

    On the ArcFace template (eye line at ``y = 51.6``, inter-ocular distance ``d = 35.2`` px at 112x112) the
    band spans rows ``eye_y - 0.45 d .. eye_y + 0.35 d`` (``y`` 35.7..63.9: eyebrows to upper cheeks) and
    columns ``x_left_eye - 0.6 d .. x_right_eye + 0.6 d`` (``x`` 17.2..94.7), pixel centres inside; the
    numbers are :data:`EYE_BAND_ABOVE`, :data:`EYE_BAND_BELOW`, :data:`EYE_BAND_SIDE`. The mask's top edge
    rises over the nose bridge to ``y`` ~ 60, into the band's lower rows, so the :func:`mask_region` pixels
    are taken out (about 5% of the rectangle): the two regions never overlap. Scales with ``size``.
    """
    return _eye_band(int(size)).copy()


def cam_mass_share(cams, region) -> np.ndarray:
    """Share of each CAM's mass inside ``region``: ``sum(cam[region]) / sum(cam)``, ``(N,)`` float64.

    ``cams`` is ``(N, H, W)`` (or one ``(H, W)`` map) of non-negative values; ``region`` a bool ``(H, W)``.
    A CAM with zero total mass gives NaN.
    """
    cams = np.asarray(cams, dtype=np.float64)
    if cams.ndim == 2:
        cams = cams[None]
    region = np.asarray(region)
    if cams.ndim != 3:
        raise ValueError(f"cams must have shape (N, H, W), got {cams.shape}")
    if region.dtype != bool or region.shape != cams.shape[1:]:
        raise ValueError(f"region must be a bool mask of shape {cams.shape[1:]}, got {region.dtype} {region.shape}")
    if np.any(cams < 0):
        raise ValueError("cams must be non-negative")
    total = cams.sum(axis=(1, 2))
    inside = (cams * region).sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, inside / np.where(total > 0, total, 1.0), np.nan)


def attention_on_regions(cams) -> pd.DataFrame:
    """Per image, the share of CAM mass on the eye band and inside the mask region: columns
    ``eye_share`` and ``mask_share`` (see :func:`eye_band_mask`, :func:`mask_region`); the maps must be
    square aligned crops (any size, regions scaled to it)."""
    cams = np.asarray(cams)
    if cams.ndim == 2:
        cams = cams[None]
    if cams.ndim != 3 or cams.shape[1] != cams.shape[2]:
        raise ValueError(f"cams must be square maps (N, S, S), got {cams.shape}")
    size = int(cams.shape[1])
    return pd.DataFrame({
        "eye_share": cam_mass_share(cams, eye_band_mask(size)),
        "mask_share": cam_mass_share(cams, mask_region(size)),
    })


# ------------------------------------------------------------------------------------------ faithfulness
BLUR_RADIUS = 8.0
"""Gaussian blur of :func:`deletion_check`: PIL ``GaussianBlur`` radius (~ standard deviation) in pixels of
the 112x112 crop, about a quarter of the inter-ocular distance: eyes, brows and lips become smudges."""
RANDOM_BLOB_GRID = 7
"""Random regions of :func:`deletion_check` are the top pixels of white noise on a ``7 x 7`` grid upsampled
(bilinear) to the crop: blobs about as coarse as an upsampled CAM of a stride-16 backbone (7x7 at 112)."""


def _n_pixels(shape: tuple[int, int], fraction: float) -> int:
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"top_fraction must be in (0, 1], got {fraction}")
    return max(1, int(round(fraction * shape[0] * shape[1])))


def _top_pixels(score: np.ndarray, n_pixels: int, rng: np.random.Generator) -> np.ndarray:
    flat = score.ravel()
    order = np.lexsort((rng.random(flat.size), -flat))  # highest first, ties in random order
    region = np.zeros(flat.size, dtype=bool)
    region[order[:n_pixels]] = True
    return region.reshape(score.shape)


def top_cam_region(cam, fraction: float, rng: np.random.Generator | int | None = 0) -> np.ndarray:
    """Bool ``(H, W)``: the ``round(fraction * H * W)`` (at least 1) pixels with the highest CAM values, ties
    broken at random (``rng``: a Generator or seed). NaN counts as lowest."""
    cam = np.nan_to_num(np.asarray(cam, dtype=np.float64), nan=-np.inf)
    if cam.ndim != 2:
        raise ValueError(f"cam must have shape (H, W), got {cam.shape}")
    return _top_pixels(cam, _n_pixels(cam.shape, fraction), np.random.default_rng(rng))


def random_blob_region(
    shape: tuple[int, int], n_pixels: int, rng: np.random.Generator | int | None = 0
) -> np.ndarray:
    """Bool ``shape``: ``n_pixels`` pixels forming a few random smooth blobs (the top pixels of white noise on a
    :data:`RANDOM_BLOB_GRID` grid, upsampled bilinearly), the control region of :func:`deletion_check`."""
    height, width = int(shape[0]), int(shape[1])
    if not 1 <= n_pixels <= height * width:
        raise ValueError(f"n_pixels must be in 1..{height * width}, got {n_pixels}")
    rng = np.random.default_rng(rng)
    noise = torch.from_numpy(rng.standard_normal((1, 1, RANDOM_BLOB_GRID, RANDOM_BLOB_GRID)))
    field = F.interpolate(noise, size=(height, width), mode="bilinear", align_corners=False)[0, 0].numpy()
    return _top_pixels(field, n_pixels, rng)


def blur_region(crop: np.ndarray, region: np.ndarray, radius: float = BLUR_RADIUS) -> np.ndarray:
    """``crop`` (uint8 ``(H, W, 3)``) with the ``region`` pixels replaced by a Gaussian blur of the whole crop."""
    from PIL import Image, ImageFilter

    crop = np.asarray(crop)
    region = np.asarray(region, dtype=bool)
    if crop.ndim != 3 or crop.shape[-1] != 3 or crop.dtype != np.uint8 or region.shape != crop.shape[:2]:
        raise ValueError(f"need a uint8 (H, W, 3) crop and a bool (H, W) region, got {crop.dtype} {crop.shape}, "
                         f"{region.shape}")
    blurred = np.asarray(Image.fromarray(crop).filter(ImageFilter.GaussianBlur(radius=radius)))
    return np.where(region[..., None], blurred, crop)


def deletion_check(
    model: nn.Module,
    crops,
    references,
    cams,
    input_size: int,
    top_fraction: float = 0.1,
    seed: int = 0,
    batch_size: int = 16,
) -> pd.DataFrame:
    """Does blurring the most-attended pixels hurt the match more than blurring random ones?

    For each crop, the top ``top_fraction`` of its CAM's pixels (:func:`top_cam_region`) and, as a control,
    a random region of exactly the same number of pixels made of smooth blobs (:func:`random_blob_region`)
    are blurred (:func:`blur_region`, radius :data:`BLUR_RADIUS`); original and both blurred crops are
    re-embedded (fp32, eval mode, no flip) and compared with the reference (crops or embeddings, as in
    :func:`compute_cams`). Columns: ``sim_original``, ``sim_top_blurred``, ``sim_random_blurred`` (cosine
    similarities) and ``drop_top = sim_original - sim_top_blurred``, ``drop_random`` likewise. A faithful
    CAM gives ``drop_top > drop_random`` on average. Deterministic for a ``seed``.
    """
    crops = _check_crops(crops)
    n, height, width = crops.shape[:3]
    cams = np.asarray(cams, dtype=np.float64)
    if cams.shape != (n, height, width):
        raise ValueError(
            f"cams must have shape {(n, height, width)} (one map per crop, at the crop size), got {cams.shape}"
        )
    n_pixels = _n_pixels((height, width), top_fraction)
    columns = ["sim_original", "sim_top_blurred", "sim_random_blurred", "drop_top", "drop_random"]
    if n == 0:
        return pd.DataFrame({c: np.zeros(0) for c in columns})
    refs = _reference_embeddings(model, references, n, input_size, batch_size)
    rng = np.random.default_rng(seed)
    top = np.empty_like(crops)
    rand = np.empty_like(crops)
    for i in range(n):
        top[i] = blur_region(crops[i], _top_pixels(np.nan_to_num(cams[i], nan=-np.inf), n_pixels, rng))
        rand[i] = blur_region(crops[i], random_blob_region((height, width), n_pixels, rng))
    emb = _embed(model, np.concatenate([crops, top, rand]), input_size, batch_size)
    sims = F.cosine_similarity(emb, refs.repeat(3, 1), dim=1, eps=1e-8).double().numpy().reshape(3, n)
    return pd.DataFrame({
        "sim_original": sims[0],
        "sim_top_blurred": sims[1],
        "sim_random_blurred": sims[2],
        "drop_top": sims[0] - sims[1],
        "drop_random": sims[0] - sims[2],
    }, columns=columns)


# ------------------------------------------------------------------------------------------ figures
def overlay(crop: np.ndarray, cam: np.ndarray, alpha: float = 0.45, colormap: str = "jet") -> np.ndarray:
    """uint8 ``(H, W, 3)``: ``(1 - alpha) * crop + alpha * colormap(cam)`` (matplotlib ``jet`` by default;
    ``cam`` in ``[0, 1]``, resized bilinearly when its size differs from the crop's; NaN shows as 0)."""
    from matplotlib import colormaps

    crop = np.asarray(crop)
    if crop.ndim != 3 or crop.shape[-1] != 3 or crop.dtype != np.uint8:
        raise ValueError(f"crop must be uint8 (H, W, 3), got {crop.dtype} {crop.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    cam = np.nan_to_num(np.asarray(cam, dtype=np.float32), nan=0.0)
    if cam.ndim != 2:
        raise ValueError(f"cam must have shape (H, W), got {cam.shape}")
    cam = _resize_maps(cam[None], *crop.shape[:2])[0]
    heat = colormaps[colormap](cam)[..., :3] * 255.0
    mixed = (1.0 - alpha) * crop.astype(np.float64) + alpha * heat
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
