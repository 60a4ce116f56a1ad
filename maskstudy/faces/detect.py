"""Face detection with MTCNN (Zhang et al., IEEE SPL 2016): facenet-pytorch's trained P-Net, R-Net and O-Net,
run stage by stage by :class:`MtcnnCascade`.

Images are read defensively (:func:`load_image`): every way a photo can be bad becomes a recorded status and
reason instead of an exception deep inside a batch. Detection runs in batches, on CUDA when present.

:class:`MtcnnCascade` follows facenet-pytorch's ``detect_face`` step for step, faster: the pyramid levels and
the R-Net / O-Net crops are area-resized from one integral image per photo (:func:`area_resize`, the same
numbers) instead of one ``interpolate`` call per crop; photos of different sizes share the R-Net and O-Net
batches (only P-Net runs per image size, nothing is padded); and an optional first pass searches only for faces
of a data-appropriate size (see :class:`maskstudy.datasets.build.BuildSettings`).
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

#: Statuses a source image can end with; ``ok`` is the only one that yields a detected face.
STATUSES = {
    "ok": "face detected, aligned and masked",
    "unreadable": "the file is not an image PIL can open",
    "truncated": "the image data ends early",
    "too_small": "the image is smaller than the detector's minimum face size",
    "no_face": "MTCNN found no face",
    "low_prob": "the best face is below the probability threshold",
    "too_large": "the image has more pixels than a decompression-bomb check allows",
    "bad_name": "the name is unsafe (.., absolute, outside the data folder) or not valid UTF-8",
    "skipped": "not a photo: hidden file, other extension, user-supplied *_mask.* twin, sub-folder",
    "name_collision": "another source image already maps to the same aligned crop name",
}

MIN_IMAGE_SIDE = 24
#: Photos with a longer side are downscaled for detection (landmarks are mapped back), so that one huge photo
#: does not pad a whole batch to its size.
MAX_DETECT_SIDE = 1600


@dataclass
class LoadedImage:
    """An RGB image or the reason it could not be used; ``notes`` lists conversions that were applied."""

    image: Image.Image | None
    status: str = "ok"
    reason: str = ""
    notes: list[str] = field(default_factory=list)


def file_digest(path: str | Path) -> str:
    """SHA-1 of the file's bytes: the cache key that tells a changed image from a known one."""
    digest = hashlib.sha1()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _to_rgb(image: Image.Image, notes: list[str]) -> Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        notes.append(f"{'16-bit' if mode.startswith('I;16') else mode}->8-bit")
        array = np.asarray(image, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        scaled = (array - low) / (high - low) * 255.0 if high > low else np.zeros_like(array)
        return Image.fromarray(scaled.round().astype(np.uint8), "L").convert("RGB")
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        notes.append("alpha composited on white")
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    notes.append({"CMYK": "CMYK->RGB", "L": "grayscale->RGB", "1": "bilevel->RGB", "P": "palette->RGB"}.get(mode, f"{mode}->RGB"))
    return image.convert("RGB")


def load_image(path: str | Path) -> LoadedImage:
    """Open ``path`` as an upright RGB image, honouring EXIF orientation.

    Never raises for bad image data: unreadable and truncated files come back with ``image=None`` and a status;
    CMYK, grayscale, 16-bit, palette and alpha images are converted and the conversion is noted.
    """
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as handle:
                handle.load()
                image = handle.copy()
                # exif_transpose needs the EXIF block that copy() keeps in .info / getexif()
                exif = handle.getexif()
    except FileNotFoundError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        return LoadedImage(None, "too_large", f"{type(error).__name__}: {error}")
    except UnidentifiedImageError as error:
        return LoadedImage(None, "unreadable", f"{type(error).__name__}: {error}")
    except (OSError, SyntaxError, ValueError) as error:
        message = str(error)
        status = "truncated" if "truncated" in message or "broken data stream" in message else "unreadable"
        return LoadedImage(None, status, f"{type(error).__name__}: {message}")
    notes: list[str] = []
    orientation = exif.get(0x0112, 1) if exif else 1
    if orientation not in (1, None):
        image = ImageOps.exif_transpose(image) or image
        notes.append(f"EXIF orientation {orientation} applied")
    image = _to_rgb(image, notes)
    if min(image.size) < MIN_IMAGE_SIDE:
        return LoadedImage(None, "too_small", f"image is {image.size[0]}x{image.size[1]} px", notes)
    return LoadedImage(image, notes=notes)


@dataclass
class Detection:
    """MTCNN output for one image: all faces, and which one the study uses."""

    boxes: np.ndarray  # (F, 4) x1, y1, x2, y2
    probs: np.ndarray  # (F,)
    landmarks: np.ndarray  # (F, 5, 2)
    chosen: int | None  # index into the faces, None when no face qualifies

    @property
    def n_faces(self) -> int:
        return len(self.probs)


def choose_face(boxes: np.ndarray, probs: np.ndarray, image_size: tuple[int, int], min_prob: float) -> int | None:
    """Index of the face to use: among faces at or above ``min_prob``, the one whose box centre is nearest the
    image centre (ties go to the more probable face); ``None`` when no face reaches ``min_prob``."""
    if len(probs) == 0:
        return None
    width, height = image_size
    centres = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], axis=1)
    distance = np.hypot(centres[:, 0] - width / 2, centres[:, 1] - height / 2) / np.hypot(width, height)
    confident = np.flatnonzero(probs >= min_prob)
    if len(confident) == 0:
        return None
    order = np.lexsort((-probs[confident], np.round(distance[confident], 3)))
    return int(confident[order[0]])


#: MTCNN's pyramid step (Zhang et al. 2016; facenet-pytorch's default).
PYRAMID_FACTOR = 0.709
#: Faces the first detection pass looks for, in pixels: with the default pyramid (20 px, factor 0.709) the levels
#: for 20 and 28 px faces wait for a second pass, which only photos without a confident face of 36 px or more
#: get. LFW's faces are 79 px and more (none of 500 photos needs it); 44 of 300 in-the-wild CelebA photos do.
FIRST_PASS_FACE_SIZE = 36.0


def pyramid_scales(height: int, width: int, min_face_size: float, factor: float = PYRAMID_FACTOR) -> list[float]:
    """The P-Net image pyramid as facenet-pytorch builds it: the first scale maps a ``min_face_size`` face onto
    P-Net's 12 px window, each next one is ``factor`` times smaller, down to a shorter side of 12 px."""
    if not min_face_size > 0 or not 0 < factor < 1:
        raise ValueError(f"need min_face_size > 0 and 0 < factor < 1, got {min_face_size} and {factor}")
    scale, shorter, scales = 12.0 / min_face_size, min(height, width) * 12.0 / min_face_size, []
    while shorter >= 12:
        scales.append(scale)
        scale, shorter = scale * factor, shorter * factor
    return scales


def integral_image(image: np.ndarray) -> np.ndarray:
    """Summed-area table of a uint8 HWC image: ``(H + 1, W + 1, C)`` int32 with a zero first row and column."""
    height, width, channels = image.shape
    if height * width * 255 >= 2**31:
        raise ValueError(f"image of {height}x{width} px is too large for an int32 integral image")
    integral = np.zeros((height + 1, width + 1, channels), np.int32)
    np.cumsum(np.cumsum(image, axis=0, dtype=np.int32), axis=1, out=integral[1:, 1:])
    return integral


def area_resize(integral: np.ndarray, regions: np.ndarray, out_height: int, out_width: int) -> np.ndarray:
    """Regions ``(y0, y1, x0, x1)`` of the image whose :func:`integral_image` is ``integral``, each resized to
    ``out_height`` x ``out_width`` by area averaging: (K, out_height, out_width, C) float32.

    The numbers of ``torch.nn.functional.interpolate(mode="area")`` (adaptive average pooling: output row ``i``
    averages input rows ``floor(i * h / out)`` to ``ceil((i + 1) * h / out)``), which facenet-pytorch's MTCNN
    resizes with (equal up to the last bit of the division), for all regions at once instead of one call each.
    """
    width, channels = integral.shape[1] - 1, integral.shape[2]
    flat = integral.reshape(-1, channels)
    y0, y1, x0, x1 = np.asarray(regions, np.int64).reshape(-1, 4).T
    rows, cols = np.arange(out_height), np.arange(out_width)
    top = y0[:, None] + (rows * (y1 - y0)[:, None]) // out_height
    bottom = y0[:, None] - (-(rows + 1) * (y1 - y0)[:, None]) // out_height  # ceil
    left = x0[:, None] + (cols * (x1 - x0)[:, None]) // out_width
    right = x0[:, None] - (-(cols + 1) * (x1 - x0)[:, None]) // out_width
    count = ((bottom - top)[:, :, None] * (right - left)[:, None, :]).astype(np.float32)
    top, bottom = top[:, :, None] * (width + 1), bottom[:, :, None] * (width + 1)
    left, right = left[:, None, :], right[:, None, :]
    sums = np.take(flat, bottom + right, axis=0)
    sums -= np.take(flat, top + right, axis=0)
    sums -= np.take(flat, bottom + left, axis=0)
    sums += np.take(flat, top + left, axis=0)
    resized = sums.astype(np.float32)
    resized /= count[..., None]
    return resized


#: P-Net levels smaller than this run on PyTorch's own convolution, larger ones on oneDNN (see
#: :meth:`MtcnnCascade._run_pnet`); R-Net and O-Net run in chunks of NET_CHUNK crops, padded to NET_CHUNK_STEP.
PNET_ONEDNN_PIXELS = 100 * 100
NET_CHUNK, NET_CHUNK_STEP = 512, 64

#: Integral images of photos up to this many pixels are kept for all three stages of a batch (12 bytes a pixel).
CACHED_INTEGRAL_PIXELS = 1 << 20


class _Photos:
    """The photos of one detection call and their integral images, computed once and kept for the three stages
    (photos up to :data:`CACHED_INTEGRAL_PIXELS`; larger ones are recomputed, to bound the memory)."""

    def __init__(self, images: list[np.ndarray]):
        self.images, self._integrals = images, {}

    def integral(self, i: int) -> np.ndarray:
        if i in self._integrals:
            return self._integrals[i]
        integral = integral_image(self.images[i])
        if self.images[i].shape[0] * self.images[i].shape[1] <= CACHED_INTEGRAL_PIXELS:
            self._integrals[i] = integral
        return integral


class MtcnnCascade:
    """MTCNN's three stages on a list of RGB arrays of any sizes: P-Net proposals per image size, then R-Net and
    O-Net on the crops of all images at once. Returns, per image, ``boxes`` (F, 5: x1, y1, x2, y2, probability)
    and ``landmarks`` (F, 5, 2), in facenet-pytorch's order (most probable first).

    ``nets`` is a facenet-pytorch ``MTCNN`` (its ``pnet``, ``rnet``, ``onet``). Every step is facenet-pytorch's
    ``detect_face``, with its area resizing computed by :func:`area_resize`, so that with one pass the outputs
    equal ``MTCNN.detect`` up to float rounding.

    Two passes when ``first_pass_face_size`` is set: the pyramid levels for faces of at least that size first
    (the levels for small faces cost most: a level's pixels grow with the square of its scale, and they propose
    most of the candidates R-Net checks); photos without a face of that size and probability
    ``first_pass_min_prob`` are then searched again with the remaining levels added, which for them is exactly the
    one-pass result of the whole pyramid down to ``min_face_size``.
    """

    def __init__(self, nets, min_face_size: float = 20, thresholds: Sequence[float] = (0.6, 0.7, 0.7),
                 factor: float = PYRAMID_FACTOR, device: str = "cpu", first_pass_face_size: float | None = None,
                 first_pass_min_prob: float = 0.9):
        if len(thresholds) != 3:
            raise ValueError(f"need three stage thresholds (P-Net, R-Net, O-Net), got {list(thresholds)}")
        pyramid_scales(100, 100, min_face_size, factor)  # checks the two values
        if first_pass_face_size is not None and not first_pass_face_size > 0:
            raise ValueError(f"first_pass_face_size must be positive or None, got {first_pass_face_size}")
        self.pnet, self.rnet, self.onet = nets.pnet, nets.rnet, nets.onet
        self.min_face_size, self.factor = float(min_face_size), float(factor)
        self.thresholds = [float(t) for t in thresholds]
        self.first_pass_face_size = None if first_pass_face_size is None else float(first_pass_face_size)
        self.first_pass_min_prob = float(first_pass_min_prob)
        self.device = device

    def __call__(self, images: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        import torch

        images = list(images)
        for image in images:
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise ValueError(f"need RGB uint8 arrays (H, W, 3), got {image.dtype} {image.shape}")
        if not images:
            return []
        photos, everyone = _Photos(images), list(range(len(images)))
        with torch.inference_mode():
            if self.first_pass_face_size is None:
                return self._refine(photos, self._propose(photos, everyone, None), everyone)
            coarse = self._propose(photos, everyone, True)
            results = self._refine(photos, coarse, everyone)
            again = [i for i, (boxes, _) in enumerate(results) if not self._first_pass_suffices(boxes)]
            if again:
                fine = self._propose(photos, again, False)
                theirs = torch.isin(coarse[1], torch.as_tensor(again, device=coarse[1].device))
                merged = (torch.cat([coarse[0][theirs], fine[0]]), torch.cat([coarse[1][theirs], fine[1]]))
                for i, result in zip(again, self._refine(photos, merged, again)):
                    results[i] = result
            return results

    def _first_pass_suffices(self, boxes: np.ndarray) -> bool:
        """Whether the first pass found a face it is made for: probability ``first_pass_min_prob`` or more, and at
        least ``first_pass_face_size`` (geometric mean of the box sides); the levels for smaller faces place
        small faces more precisely."""
        sides = np.sqrt(np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None))
        return bool(((boxes[:, 4] >= self.first_pass_min_prob) & (sides >= self.first_pass_face_size)).any())

    def _batch(self, resized: list[np.ndarray], order: np.ndarray | None = None):
        """Resized images or crops (each (K, h, w, 3) float32), rows taken in ``order``, as one normalised N3HW
        tensor, channels-last in memory (P-, R- and O-Net's convolutions run faster on it)."""
        import torch

        stack = resized[0] if len(resized) == 1 else np.concatenate(resized)
        if order is not None:
            stack = stack[order]
        stack = (stack - np.float32(127.5)) * np.float32(0.0078125)
        return torch.from_numpy(stack).to(self.device).permute(0, 3, 1, 2)

    def _crops(self, photos: _Photos, boxes, owner, side: int):
        """Crops of ``boxes`` (clipped to their image, as facenet-pytorch's ``pad``) resized to ``side``, and the
        mask of boxes that overlap their image at all (the others are dropped)."""
        corners = boxes[:, :4].trunc().int().cpu().numpy().astype(np.int64)
        index = owner.cpu().numpy()
        sizes = np.array([image.shape[:2] for image in photos.images])
        x, y = np.maximum(corners[:, 0], 1) - 1, np.maximum(corners[:, 1], 1) - 1
        ex, ey = np.minimum(corners[:, 2], sizes[index, 1]), np.minimum(corners[:, 3], sizes[index, 0])
        keep = (ey > y) & (ex > x)
        order = np.flatnonzero(keep)
        if len(order) == 0:
            return None, keep
        order = order[np.argsort(index[order], kind="stable")]  # by image: one integral image per image
        resized, starts = [], np.flatnonzero(np.r_[True, np.diff(index[order]) != 0])
        for begin, end in zip(starts, np.r_[starts[1:], len(order)]):
            members = order[begin:end]
            regions = np.stack([y[members], ey[members], x[members], ex[members]], axis=1)
            resized.append(area_resize(photos.integral(index[members[0]]), regions, side, side))
        return self._batch(resized, np.argsort(order, kind="stable")), keep  # rows in the order of the boxes

    # -- running the nets: oneDNN (mkldnn) builds its convolution kernels anew for every input shape, which costs
    # more than a small net's whole forward pass; so shapes are kept few
    def _run_pnet(self, level):
        """P-Net on one pyramid level. Its shapes change with every photo size and level: small levels run on
        PyTorch's own convolution, which needs no per-shape kernels (same numbers up to float rounding)."""
        import torch

        if self.device != "cpu" or level.shape[2] * level.shape[3] >= PNET_ONEDNN_PIXELS:
            return self.pnet(level)
        before = torch.backends.mkldnn.enabled
        torch.backends.mkldnn.enabled = False
        try:
            return self.pnet(level)
        finally:
            torch.backends.mkldnn.enabled = before

    @staticmethod
    def _run_in_chunks(net, crops) -> tuple:
        """R-Net or O-Net on ``crops`` in chunks of :data:`NET_CHUNK`, the last one padded to a multiple of
        :data:`NET_CHUNK_STEP` crops (the padding's outputs are dropped): a handful of shapes, their kernels
        reused, instead of one new shape per call. Like facenet's ``fixed_batch_process``, it bounds the memory."""
        import torch

        outputs = []
        for start in range(0, len(crops), NET_CHUNK):
            chunk = crops[start:start + NET_CHUNK]
            padded = -(-len(chunk) // NET_CHUNK_STEP) * NET_CHUNK_STEP
            if padded != len(chunk):
                filler = torch.zeros((padded - len(chunk), *chunk.shape[1:]), dtype=chunk.dtype, device=chunk.device)
                chunk = torch.cat([chunk, filler.contiguous(memory_format=torch.channels_last)])
            outputs.append([out[:min(NET_CHUNK, len(crops) - start)] for out in net(chunk)])
        return tuple(torch.cat(parts) for parts in zip(*outputs))

    # -- the three stages, as facenet-pytorch's detect_face ---------------------------------------------------
    def _propose(self, photos: _Photos, members: list[int], large_faces: bool | None):
        """Stage 1: P-Net over the pyramid of each image in ``members`` (in groups of one size), NMS per scale
        and image. ``large_faces``: only the levels for faces of at least ``first_pass_face_size`` (True), only
        the others (False), or all (None). Returns the proposals (K, 9) and the index of their image."""
        import torch
        from facenet_pytorch.models.utils.detect_face import generateBoundingBox
        from torchvision.ops.boxes import batched_nms

        by_size: dict[tuple[int, int], list[int]] = {}
        for i in members:
            by_size.setdefault(photos.images[i].shape[:2], []).append(i)
        proposals = [torch.zeros((0, 9), device=self.device)]
        owners = [torch.zeros(0, dtype=torch.long, device=self.device)]
        for (height, width), group in by_size.items():
            group_t = torch.as_tensor(group, device=self.device)
            for scale in pyramid_scales(height, width, self.min_face_size, self.factor):
                # the level's face size 12 / scale, with a margin for the rounding of repeated products
                if large_faces is not None and (12.0 / scale >= self.first_pass_face_size * (1 - 1e-9)) != large_faces:
                    continue
                size = (int(height * scale + 1), int(width * scale + 1))
                whole = np.array([[0, height, 0, width]])
                level = self._batch([area_resize(photos.integral(i), whole, *size) for i in group])
                regression, probs = self._run_pnet(level)
                found, local = generateBoundingBox(regression, probs[:, 1], scale, self.thresholds[0])
                pick = batched_nms(found[:, :4], found[:, 4], local, 0.5)
                proposals.append(found[pick])
                owners.append(group_t[local[pick]])
        return torch.cat(proposals), torch.cat(owners)

    def _refine(self, photos: _Photos, proposed, members: list[int]):
        """Stages 2 and 3 on the proposals of ``members``: NMS per image, R-Net on 24x24 crops, O-Net on 48x48
        crops (probabilities, box refinement, 5 landmarks), a last NMS. Returns one result per member."""
        import torch
        from facenet_pytorch.models.utils.detect_face import bbreg, nms_numpy, rerec
        from torchvision.ops.boxes import batched_nms

        empty = (np.zeros((0, 5), np.float32), np.zeros((0, 5, 2), np.float32))
        boxes, owner = proposed
        pick = batched_nms(boxes[:, :4], boxes[:, 4], owner, 0.7)
        boxes, owner = boxes[pick], owner[pick]
        width, height = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        boxes = rerec(torch.stack([boxes[:, 0] + boxes[:, 5] * width, boxes[:, 1] + boxes[:, 6] * height,
                                   boxes[:, 2] + boxes[:, 7] * width, boxes[:, 3] + boxes[:, 8] * height,
                                   boxes[:, 4]], dim=1))
        for side, net in ((24, self.rnet), (48, self.onet)):
            if len(boxes) == 0:
                return [empty for _ in members]
            crops, keep = self._crops(photos, boxes, owner, side)
            if crops is None:
                return [empty for _ in members]
            keep = torch.as_tensor(keep, device=boxes.device)
            boxes, owner = boxes[keep], owner[keep]
            out = self._run_in_chunks(net, crops)
            regression, probs = out[0], out[-1]
            score = probs[:, 1]
            passed = score > self.thresholds[1 if side == 24 else 2]
            boxes = torch.cat((boxes[passed, :4], score[passed].unsqueeze(1)), dim=1)
            owner, regression = owner[passed], regression[passed]
            if side == 24:
                pick = batched_nms(boxes[:, :4], boxes[:, 4], owner, 0.7)
                boxes = rerec(bbreg(boxes[pick], regression[pick]))
                owner = owner[pick]
            else:
                points = out[1][passed]
                width, height = boxes[:, 2] - boxes[:, 0] + 1, boxes[:, 3] - boxes[:, 1] + 1
                landmarks = torch.stack((width[:, None] * points[:, :5] + boxes[:, :1] - 1,
                                         height[:, None] * points[:, 5:] + boxes[:, 1:2] - 1), dim=2)
                boxes = bbreg(boxes, regression)
        boxes, landmarks, owner = boxes.cpu().numpy(), landmarks.cpu().numpy(), owner.cpu().numpy()
        results = []
        for i in members:  # NMS with the "Min" overlap, per image
            mine = np.flatnonzero(owner == i)
            if len(mine) == 0:
                results.append(empty)
                continue
            pick = mine[nms_numpy(boxes[mine, :4], boxes[mine, 4], 0.7, "Min").astype(int)]
            results.append((boxes[pick].copy(), landmarks[pick].copy()))
        return results


class FaceDetector:
    """Batched MTCNN: P-Net, R-Net and O-Net give boxes, probabilities and 5 landmarks per face.

    The weights ship inside the facenet-pytorch wheel, so nothing is downloaded. A photo whose longer side
    exceeds ``max_side`` is first downscaled, and its boxes and landmarks are scaled back. ``min_face_size``
    (pixels) and ``factor`` set the P-Net pyramid; ``first_pass_face_size`` (pixels, or None for one pass)
    looks for faces of at least that size first and searches the rest of the pyramid only for photos without a
    face of probability ``min_prob`` (see :class:`MtcnnCascade`). With ``first_pass_face_size=None`` the
    results are facenet-pytorch's ``MTCNN.detect``'s (up to float rounding); with the default they differ only
    where a first-pass face is confident but the whole pyramid would place it a little differently or find a
    smaller, more central one (measured: 0 of 500 LFW photos, 1 of 300 CelebA photos changed face).
    """

    def __init__(self, device: str | None = None, min_face_size: float = 20, min_prob: float = 0.9,
                 thresholds: Sequence[float] = (0.6, 0.7, 0.7), max_side: int = MAX_DETECT_SIDE,
                 factor: float = PYRAMID_FACTOR, first_pass_face_size: float | None = FIRST_PASS_FACE_SIZE):
        import torch
        from facenet_pytorch import MTCNN

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.min_prob = float(min_prob)
        self.max_side = int(max_side)
        self.settings = {"min_face_size": float(min_face_size), "factor": float(factor),
                         "first_pass_face_size": None if first_pass_face_size is None else float(first_pass_face_size),
                         "thresholds": [float(t) for t in thresholds], "min_prob": self.min_prob,
                         "max_side": self.max_side, "detector": "facenet-pytorch MTCNN"}
        #: facenet-pytorch's MTCNN: the trained nets, and ``mtcnn.detect``, the reference the cascade reproduces
        self.mtcnn = MTCNN(keep_all=True, min_face_size=min_face_size, thresholds=list(thresholds), factor=factor,
                           device=self.device, select_largest=False, post_process=False)
        self.cascade = MtcnnCascade(self.mtcnn, min_face_size, thresholds, factor, self.device,
                                    first_pass_face_size, self.min_prob)

    def detect(self, images: Sequence[Image.Image]) -> list[Detection]:
        """Detect faces in a batch of RGB images (of any sizes)."""
        if not images:
            return []
        scales = [min(1.0, self.max_side / max(image.size)) for image in images]
        scaled = [image if scale == 1.0 else
                  image.resize((max(1, round(image.size[0] * scale)), max(1, round(image.size[1] * scale))),
                               Image.Resampling.BILINEAR)
                  for image, scale in zip(images, scales)]
        found = self.cascade([np.asarray(image.convert("RGB")) for image in scaled])
        results = []
        for image, scale, (boxes, marks) in zip(images, scales, found):
            boxes, probs = np.asarray(boxes[:, :4], float) / scale, np.asarray(boxes[:, 4], float)
            marks = np.asarray(marks, float).reshape(-1, 5, 2) / scale
            results.append(Detection(boxes, probs, marks, choose_face(boxes, probs, image.size, self.min_prob)))
        return results
