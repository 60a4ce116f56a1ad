"""Pretrained face recognisers as references and distillation teachers (see :mod:`.registry` for the names).

Every teacher embeds photos inside the kit's MTCNN face boxes (:mod:`.base`), so that detection is the same for
every recogniser of the study; :mod:`.cache` keeps their embeddings on disk. :mod:`.training` embeds the training
photos (the targets of :mod:`maskstudy.train.distill`); :mod:`maskstudy.study.reference` runs the study's tests on
a teacher, on the same pairs as the trained models. Imports :mod:`maskstudy.core` up to :mod:`maskstudy.evaluate`.
"""

from .base import Teacher, TeacherUnavailableError, default_cache_dir
from .cache import TeacherEmbeddings, manifest_teacher_embeddings, teacher_embeddings
from .registry import TEACHERS, available_teachers, build_teacher

__all__ = [
    "TEACHERS",
    "Teacher",
    "TeacherEmbeddings",
    "TeacherUnavailableError",
    "available_teachers",
    "build_teacher",
    "default_cache_dir",
    "manifest_teacher_embeddings",
    "teacher_embeddings",
]
