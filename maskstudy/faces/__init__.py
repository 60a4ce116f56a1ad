"""One face photo at a time: MTCNN detection (:mod:`.detect`), alignment onto the ArcFace 112x112 template
(:mod:`.align`), landmark-driven synthetic masks (:mod:`.masks`: their geometry, styles and drawing) and the model
input of an aligned crop (:mod:`.preprocess`). Imports only :mod:`maskstudy.core`; a new mask style goes in
:mod:`.masks.styles`.
"""
