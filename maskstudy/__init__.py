"""maskstudy: a reproducible study kit for masked-face recognition with attention.

The package holds the logic (data, alignment, masks, cleaning, models, losses, training, evaluation,
explanations, reports, pipeline); the numbered notebooks in ``notebooks/`` orchestrate and plot.
"""

__version__ = "0.1.0"
