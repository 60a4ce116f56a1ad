"""CAMs of a face-embedding network: the similarity target, the layer to explain, raw maps, randomised copies.

Grad-CAM (Selvaraju et al., ICCV 2017) weights the channels of a feature map by the spatially averaged
gradient of a scalar score; HiResCAM (R. L. Draelos and L. Carin, "Use HiResCAM instead of Grad-CAM for
faithful explanations of convolutional neural networks", arXiv:2011.08891, 2020) multiplies gradient and
activation element-wise before summing over channels. A face-recognition model has no class score, so the
score is the **cosine similarity between the image's embedding and a fixed reference embedding**
(:class:`SimilarityTarget`), the "similarity target" idea of pytorch-grad-cam (J. Gildenblat and
contributors, https://github.com/jacobgil/pytorch-grad-cam), whose CAM classes are used as is.

The IR-ResNet head flattens the last feature map into a Linear layer (no global pooling), so each cell has
its own weights: Grad-CAM's spatial averaging of the gradient discards them, HiResCAM keeps them and is the
default here. Maps are returned raw (ReLU'd, never min-max scaled) so that mass shares mean something.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..evaluate.embed import compute_embeddings
from ..faces.preprocess import check_crops, to_input
from ..models.registry import eval_mode, lookup, model_device
from .geometry import cell_centres, cell_centres_2d, grid_size, grid_to_crop, resize_centres


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


@contextlib.contextmanager
def _fp32_grad(device: torch.device) -> Iterator[None]:
    """Gradients on (also inside a caller's ``no_grad`` / ``inference_mode``), autocast off."""
    with torch.inference_mode(False), torch.enable_grad(), torch.autocast(device_type=device.type, enabled=False):
        yield


def _embed(model: nn.Module, crops: np.ndarray, input_size: int, batch_size: int) -> torch.Tensor:
    """The embeddings CAM scores compare: raw (un-normalised) fp32 ``(N, D)`` on the CPU, eval mode, autocast
    off, no flip (:func:`~maskstudy.evaluate.embed.compute_embeddings` in that setting)."""
    return compute_embeddings(model, crops, input_size, batch_size=batch_size, flip=False, normalise=False,
                              amp_dtype=None)


def _reference_embeddings(model, references, n: int, input_size: int, batch_size: int) -> torch.Tensor:
    """References as ``(n, D)`` fp32 embeddings: uint8 crops ``(n, H, W, 3)`` are embedded (see :func:`_embed`),
    float arrays ``(n, D)`` are taken as embeddings."""
    ref = references.detach().cpu() if isinstance(references, torch.Tensor) else np.asarray(references)
    is_uint8 = ref.dtype in (np.uint8, torch.uint8)
    if ref.ndim == 4:
        ref = _embed(model, check_crops(ref, "references"), input_size, batch_size)
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


def _raw_maps(cam, x: torch.Tensor, targets: list) -> np.ndarray:
    """One forward/backward through a pytorch-grad-cam object; the method's map of the (single) target layer,
    ReLU'd, on the layer's own grid: ``(B, h, w)``. Unlike ``cam(...)`` nothing is min-max scaled or resized."""
    outputs = cam.activations_and_grads(x)
    cam.model.zero_grad()
    sum(target(output) for target, output in zip(targets, outputs)).backward()
    activations = cam.activations_and_grads.activations[0].cpu().numpy()
    gradients = cam.activations_and_grads.gradients[0].cpu().numpy()
    layer = cam.target_layers[0]
    maps = cam.get_cam_image(x, layer, targets, activations, gradients, False)
    return np.maximum(np.asarray(maps, dtype=np.float32), 0.0)


def compute_grid_cams(
    model: nn.Module,
    crops,
    references,
    input_size: int,
    method: str = "hirescam",
    batch_size: int = 16,
) -> np.ndarray:
    """Raw CAMs on the target layer's own grid: ``(N, g, g)`` float32 >= 0 (ReLU'd, never rescaled).

    ``crops``: uint8 ``(N, H, W, 3)`` aligned crops; ``references``: uint8 crops (embedded in fp32, eval mode,
    no flip) or embeddings ``(N, D)``, one per crop. The score of crop ``i`` is
    ``SimilarityTarget(references[i])``; ``method`` is one of :data:`CAM_METHODS` (default HiResCAM, Draelos
    and Carin 2020: element-wise gradient x activation summed over channels; when the score is linear in the
    feature map the cells' values sum to the score. The IR-ResNet's BN-flatten-FC-BN head is linear in eval mode,
    the cosine on top is linearised at the probe by its gradient, so the maps are exact to first order). The map
    values keep their units (similarity per cell), so maps of one model can be compared and averaged.

    Computed in fp32 with autocast off, gradients on (also under ``no_grad``), the model in eval mode on its
    own device; its training flag is restored, no ``.grad`` is left on its parameters, hooks are removed,
    also on errors.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    cam_class = _cam_class(method)
    crops = check_crops(crops)
    n = len(crops)
    refs = _reference_embeddings(model, references, n, input_size, batch_size) if n else None
    device = model_device(model)
    chunks = []
    try:
        with eval_mode(model), _cam_extractor(model, cam_class) as cam, _fp32_grad(device):
            for start in range(0, n, batch_size):
                stop = min(n, start + batch_size)
                # An input that requires grad keeps the graph alive even when the parameters are frozen.
                x = to_input(crops[start:stop], input_size, device=device).requires_grad_(True)
                chunks.append(_raw_maps(cam, x, [SimilarityTarget(r) for r in refs[start:stop]]))
    finally:
        model.zero_grad(set_to_none=True)
    if not chunks:
        g = grid_size(model)
        return np.zeros((0, g, g), dtype=np.float32)
    return np.concatenate(chunks)


def compute_cams(model: nn.Module, crops, references, input_size: int, method: str = "hirescam",
                 batch_size: int = 16) -> np.ndarray:
    """Raw CAMs at the crop size: ``(N, H, W)`` float32 >= 0, :func:`compute_grid_cams` brought to the crop by
    :func:`~maskstudy.explain.geometry.grid_to_crop` (each cell's value at the centre of its receptive field,
    linear in between). Not min-max scaled: divide by a map's maximum for display only."""
    crops = check_crops(crops)
    grid_maps = compute_grid_cams(model, crops, references, input_size, method, batch_size)
    return grid_to_crop(grid_maps, crop_centres(model, grid_maps.shape[-1], crops.shape[1]), crops.shape[1])


def crop_centres(model: nn.Module, grid: int, crop_size: int) -> np.ndarray:
    """:func:`cell_centres` of ``model``, or :func:`resize_centres` for a model of unknown geometry (a model
    can state its own as ``cam_receptive_grid = (stride, first_centre)`` in input pixels)."""
    if callable(getattr(model, "cam_crop_centres", None)):
        return cell_centres_2d(model, crop_size)
    try:
        centres = cell_centres(model, crop_size)
    except (ValueError, AttributeError):
        return resize_centres(grid, crop_size)
    if len(centres) != grid:
        raise ValueError(f"{type(model).__name__}: the CAM grid is {grid} cells, its geometry says {len(centres)}")
    return centres


def randomized_copy(model: nn.Module, seed: int = 0) -> nn.Module:
    """A deep copy of ``model`` with every parameter re-drawn from its layer's initialiser (and BN statistics
    reset): the "full randomisation" of the model-parameter sanity check of Adebayo et al., "Sanity Checks for
    Saliency Maps", NeurIPS 2018. A map that survives this is not explaining the trained weights."""
    import copy

    clone = copy.deepcopy(model)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        for module in clone.modules():
            if module is not clone and callable(getattr(module, "reset_parameters", None)):
                module.reset_parameters()
        with torch.no_grad():
            for name, parameter in clone.named_parameters():
                if name.endswith(("cls_token", "pos_embed", "reg_token")):
                    parameter.normal_(0.0, 0.02)
    finally:
        torch.random.set_rng_state(generator_state)
    return clone.eval()


# ------------------------------------------------------------------------------------------ figures
def overlay(crop: np.ndarray, cam: np.ndarray, alpha: float = 0.45, colormap: str = "jet") -> np.ndarray:
    """uint8 ``(H, W, 3)``: ``(1 - alpha) * crop + alpha * colormap(cam)`` (matplotlib ``jet`` by default;
    ``cam`` in ``[0, 1]`` (values outside are clipped), resized bilinearly when its size differs from the
    crop's; NaN shows as 0). Raw CAMs: pass ``cam / cam.max()``."""
    from matplotlib import colormaps

    crop = np.asarray(crop)
    if crop.ndim != 3 or crop.shape[-1] != 3 or crop.dtype != np.uint8:
        raise ValueError(f"crop must be uint8 (H, W, 3), got {crop.dtype} {crop.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    cam = np.nan_to_num(np.asarray(cam, dtype=np.float32), nan=0.0)
    if cam.ndim != 2:
        raise ValueError(f"cam must have shape (H, W), got {cam.shape}")
    if cam.shape != crop.shape[:2]:
        cam = F.interpolate(torch.from_numpy(np.ascontiguousarray(cam))[None, None], size=crop.shape[:2],
                            mode="bilinear", align_corners=False)[0, 0].numpy()
    heat = colormaps[colormap](np.clip(cam, 0.0, 1.0))[..., :3] * 255.0
    mixed = (1.0 - alpha) * crop.astype(np.float64) + alpha * heat
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
