"""Synthetic face masks ("masked twins"): the mask's outline and straps in a face-aligned frame
(:mod:`.geometry`), how each style colours its pixels (:mod:`.styles`) and the drawing on a photo (:mod:`.drawing`).
"""
