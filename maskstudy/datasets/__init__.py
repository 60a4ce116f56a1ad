"""The data sets and their protocols, and the aligned sets built from them.

* photos on disk: identity folders (:mod:`.identity_folders`), LFW's protocol files (:mod:`.lfw_files`) and
  download (:mod:`.download`), MFR2's real masks (:mod:`.mfr2`, evaluation only);
* the study's splits (:mod:`.protocol`) and verification pairs with their masked scenarios (:mod:`.pairs`);
* the build of notebook 01 (:mod:`.build`: detect, align, draw the masked twins, keep a manifest), the masked
  evaluation photos (:mod:`.masked_photos`) and notebook 02's side-face cleaning (:mod:`.cleaning`).

Imports :mod:`maskstudy.core` and :mod:`maskstudy.faces`; a new test set's files and pairs go here.
"""
