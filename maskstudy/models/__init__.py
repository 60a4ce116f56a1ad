"""Face-recognition backbones and their registry.

``build_backbone("ir50_se", width=1.0, input_size=112, embedding_size=512)`` builds any name in
``available_backbones()``. Importing this package registers every backbone family. :mod:`.checkpoint` is the
``maskstudy-checkpoint-v1`` format that training writes and evaluation reads; :mod:`.mask_aware` the mask-aware
recogniser built from the pretrained track; :mod:`.model_file` the one door to every model file of the study (and the
pretrained network by name). Imports :mod:`maskstudy.core` and :mod:`maskstudy.faces` only; a new backbone or
attention block goes here, registered by name.
"""

from . import dlib_resnet as _dlib_resnet  # noqa: F401  (registers dlib_resnet29*, dlib's pretrained network)
from . import iresnet as _iresnet  # noqa: F401  (registers the ir* backbones)
from . import vit as _vit  # noqa: F401  (registers vit_* and hybrid_*_vit; teaches count_flops CPU attention)
from .folding import fold_batchnorm
from .registry import (
    UnknownNameError,
    available_backbones,
    build_backbone,
    count_flops,
    count_parameters,
    eval_mode,
    model_device,
    register_backbone,
)

__all__ = [
    "UnknownNameError",
    "available_backbones",
    "build_backbone",
    "count_flops",
    "count_parameters",
    "eval_mode",
    "fold_batchnorm",
    "model_device",
    "register_backbone",
]
