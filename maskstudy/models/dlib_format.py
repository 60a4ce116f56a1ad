"""A reader of dlib's serialised DNN files (``*.dat`` of ``dlib::serialize(net)``), in pure Python.

dlib (D. E. King, "Dlib-ml: A Machine Learning Toolkit", JMLR 10, 2009) writes a network as its loss layer's
details, then one version number per layer (outermost first), then the layers from the input upwards. Integers
are dlib's packed form (a byte holding the length and the sign, then that many little-endian bytes), floats a
packed mantissa and exponent, booleans one ASCII byte, and every tensor's values raw little-endian float32 after a
packed header (version, samples, k, rows, columns). Each layer's details start with its name (``con_4``,
``affine_``, ``relu_``, ``max_pool_2``, ``avg_pool_2``, ``add_prev_``, ``fc_2``); after them come three
state flags and three (empty) state tensors of the layer wrapper, and, after the first layer above the input,
its sample expansion factor. Tag and skip layers write only their version.

Only what the face recognition network ``dlib_face_recognition_resnet_model_v1`` uses is understood; anything
else is a :class:`DlibFormatError` naming the file and the byte offset.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: Layer kinds this reader understands (each layer's name without its version suffix).
KNOWN_LAYERS = ("input_rgb_image_sized", "con", "affine", "relu", "max_pool", "avg_pool", "add_prev", "fc")


class DlibFormatError(ValueError):
    """The file is not a dlib network of the kind this reader knows (message: file, byte offset, what was found)."""


@dataclass
class DlibLayer:
    """One layer as stored: its ``kind`` (see :data:`KNOWN_LAYERS`), the ``name`` as written (with its version),
    the byte ``offset`` of its details, integer/float ``settings`` and its parameter tensors ``params``."""

    kind: str
    name: str
    offset: int
    settings: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)


@dataclass
class DlibNet:
    """A parsed network: the loss layer's name and settings, and the layers from the input upwards."""

    path: Path
    loss: str
    loss_settings: dict
    layers: list[DlibLayer]

    def of_kind(self, kind: str) -> list[DlibLayer]:
        return [layer for layer in self.layers if layer.kind == kind]


class _Reader:
    def __init__(self, data: bytes, path: Path):
        self.data, self.path, self.pos = data, path, 0

    def fail(self, what: str, at: int | None = None) -> DlibFormatError:
        return DlibFormatError(f"{self.path}: at byte {self.pos if at is None else at}: {what} "
                               "(not a dlib network file of the kind maskstudy reads, or a truncated one)")

    def need(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise self.fail(f"the file ends ({len(self.data)} bytes) where {n} more bytes were expected")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def integer(self) -> int:
        head = self.need(1)[0]
        size = head & 0x0F
        if size > 8 or head & 0x70:
            raise self.fail(f"byte 0x{head:02x} does not start a packed integer", self.pos - 1)
        value = int.from_bytes(self.need(size), "little")
        return -value if head & 0x80 else value

    def real(self) -> float:
        mantissa = self.integer()
        exponent = self.integer()
        return float(mantissa) * 2.0 ** exponent

    def flag(self) -> bool:
        start = self.pos
        byte = self.need(1)
        if byte not in (b"0", b"1"):
            raise self.fail(f"expected a boolean '0' or '1', found 0x{byte[0]:02x}", start)
        return byte == b"1"

    def text(self, limit: int = 64) -> str:
        start = self.pos
        size = self.integer()
        if not 0 < size <= limit:
            raise self.fail(f"expected a layer name, found a length of {size}", start)
        raw = self.need(size)
        if not all(32 < c < 127 for c in raw):
            raise self.fail(f"expected a layer name, found bytes {raw[:16].hex(' ')}", start)
        return raw.decode("ascii")

    def tensor(self, alias: bool = False) -> np.ndarray | tuple[int, ...]:
        """A tensor's values as float32 of shape (samples, k, rows, columns); an alias tensor's shape only."""
        start = self.pos
        version = self.integer()
        if version != (1 if alias else 2):
            raise self.fail(f"unknown {'alias ' if alias else ''}tensor version {version}", start)
        shape = tuple(self.integer() for _ in range(4))
        if any(s < 0 for s in shape):
            raise self.fail(f"negative tensor shape {shape}", start)
        if alias:
            return shape
        count = int(np.prod(shape))
        return np.frombuffer(self.need(4 * count), dtype="<f4").reshape(shape).astype(np.float32)


def _details(reader: _Reader, kind: str, layer: DlibLayer) -> None:
    """Read the settings and parameters of one layer's details (after its name)."""
    settings, params = layer.settings, layer.params
    if kind == "input_rgb_image_sized":
        settings["mean_rgb"] = [reader.real() for _ in range(3)]
        settings["rows"], settings["columns"] = reader.integer(), reader.integer()
    elif kind == "con":
        flat = reader.tensor()
        for key in ("filters", "rows", "columns", "stride_y", "stride_x", "padding_y", "padding_x"):
            settings[key] = reader.integer()
        weight_shape, bias_shape = reader.tensor(alias=True), reader.tensor(alias=True)
        for key in ("lr", "wd", "bias_lr", "bias_wd"):
            settings[key] = reader.real()
        n_weight, n_bias = int(np.prod(weight_shape)), int(np.prod(bias_shape))
        if flat.size != n_weight + n_bias:
            raise reader.fail(f"{layer.name}: {flat.size} parameters for filters {weight_shape} and biases "
                              f"{bias_shape}", layer.offset)
        values = flat.ravel()
        params["weight"] = values[:n_weight].reshape(weight_shape)
        params["bias"] = values[n_weight:].reshape(-1)
    elif kind == "affine":
        flat = reader.tensor()
        gamma_shape, beta_shape = reader.tensor(alias=True), reader.tensor(alias=True)
        settings["mode"] = reader.integer()
        n_gamma = int(np.prod(gamma_shape))
        if flat.size != n_gamma + int(np.prod(beta_shape)):
            raise reader.fail(f"{layer.name}: {flat.size} parameters for gamma {gamma_shape} and beta {beta_shape}",
                              layer.offset)
        values = flat.ravel()
        params["gamma"], params["beta"] = values[:n_gamma], values[n_gamma:]
    elif kind in ("max_pool", "avg_pool"):
        for key in ("rows", "columns", "stride_y", "stride_x", "padding_y", "padding_x"):
            settings[key] = reader.integer()
    elif kind == "fc":
        settings["outputs"], settings["inputs"] = reader.integer(), reader.integer()
        flat = reader.tensor()
        weight_shape, bias_shape = reader.tensor(alias=True), reader.tensor(alias=True)
        settings["bias_mode"] = reader.integer()
        for key in ("lr", "wd", "bias_lr", "bias_wd"):
            settings[key] = reader.real()
        n_weight = int(np.prod(weight_shape))
        values = flat.ravel()
        # dlib's fc computes input x W with W of shape (inputs, outputs)
        params["weight"] = values[:n_weight].reshape(settings["inputs"], settings["outputs"])
        if values.size > n_weight:
            params["bias"] = values[n_weight:].reshape(-1)
    # relu_ and add_prev_ have no details beyond their name


def _kind(name: str) -> str | None:
    if name == "input_rgb_image_sized":
        return name
    for kind in KNOWN_LAYERS[1:]:
        if name.startswith(kind + "_") and (name[len(kind) + 1:].isdigit() or name == kind + "_"):
            return kind
    return None


def read_dlib_net(path: str | os.PathLike) -> DlibNet:
    """Parse a dlib network file into its layers (input first); raises :class:`DlibFormatError` for a file this
    reader does not understand, and ``FileNotFoundError`` for a missing one."""
    path = Path(path)
    reader = _Reader(path.read_bytes(), path)
    if reader.integer() != 1:
        raise reader.fail("unknown network version", 0)
    loss = reader.text()
    if not loss.startswith("loss_metric_"):
        raise reader.fail(f"expected a metric-loss network (loss_metric_), found {loss!r}", 1)
    loss_settings = {"margin": reader.real(), "distance_threshold": reader.real()}
    # one version (1 to 3) per wrapped layer, then the input layer's name (never shorter than 4 characters)
    start = reader.pos
    while True:
        at = reader.pos
        value = reader.integer()
        if value not in (1, 2, 3):
            reader.pos = at
            break
    if reader.pos == start:
        raise reader.fail("no layer versions after the loss layer", start)
    layers: list[DlibLayer] = []
    while reader.pos < len(reader.data):
        offset = reader.pos
        name = reader.text()
        kind = _kind(name)
        if kind is None:
            raise reader.fail(f"unknown layer {name!r} (known: {', '.join(KNOWN_LAYERS)})", offset)
        layer = DlibLayer(kind, name, offset)
        _details(reader, kind, layer)
        if kind != "input_rgb_image_sized":
            for _ in range(3):
                reader.flag()
            for _ in range(3):
                reader.tensor()
            if len(layers) == 1:  # the layer wrapping the input also stores its sample expansion factor
                reader.integer()
        layers.append(layer)
    if not layers or layers[0].kind != "input_rgb_image_sized":
        raise reader.fail("the first layer is not input_rgb_image_sized", start)
    return DlibNet(path, loss, loss_settings, layers)
