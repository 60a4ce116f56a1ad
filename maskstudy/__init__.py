"""maskstudy: a reproducible study kit for masked-face recognition with attention.

The subpackages are the study's stages, in the order data flows through them; a module may import from its own
stage and from the stages before it, never from a later one (``tests/test_layout.py`` checks this, and that no
imports close a circle):

* :mod:`.core`: atomic files, seeds, CPU threads, and the profiles (the study's sizes as plain data);
* :mod:`.faces`: one photo at a time: MTCNN detection, alignment, synthetic masks, model input;
* :mod:`.datasets`: LFW, CelebA-style identity folders, MFR2, pairs and splits, the aligned-set build;
* :mod:`.models`: backbones, attention blocks, dlib's pretrained network, the checkpoint format;
* :mod:`.evaluate`: embeddings, verification and identification metrics, statistics, the face recogniser;
* :mod:`.teachers`: pretrained recognisers behind one interface (distillation targets, reference rows);
* :mod:`.train`: margin losses, the training loop, distillation, fine-tuning the pretrained network;
* :mod:`.explain`: Grad-CAM, its faithfulness, and where on the face it looks;
* :mod:`.study`: the design (which models, seeds and tests), running them, the comparisons and findings;
* :mod:`.report`: run folders (tables, figures, index.html, README section) and the papermill pipeline.

The numbered notebooks in ``notebooks/`` orchestrate and plot; ``python -m maskstudy`` is the command line.
"""

__version__ = "0.1.0"

#: The stages in import order: a module of a stage imports only from its own stage and earlier ones.
STAGES = ("core", "faces", "datasets", "models", "evaluate", "teachers", "train", "explain", "study", "report")
