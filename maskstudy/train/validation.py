"""Per-epoch validation: masked-unmasked pairs of held-out identities, scored at the best threshold."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..datasets.pairs import generate_pairs, masked_name, scenario_pairs
from ..evaluate.embed import compute_embeddings
from ..evaluate.metrics import best_threshold
from ..faces.align import CROP_SIZE
from ..faces.preprocess import load_crops
from .config import Log, TrainConfig
from .data import class_key


class Validation:
    """Masked-unmasked pairs of the held-out identities, with their crops decoded once."""

    def __init__(self, val_rows: pd.DataFrame, data_dir: Path, config: TrainConfig, log: Log):
        self.size = 0
        if val_rows.empty or config.val_pairs < 2:
            return
        keys = (val_rows["dataset"].astype(str) + "/" + val_rows["aligned"].astype(str)).tolist()
        classes = class_key(val_rows)
        sizes = classes.value_counts().to_numpy()
        pos_cap = int((sizes * (sizes - 1) // 2).sum())
        neg_cap = int((sizes.sum() ** 2 - (sizes ** 2).sum()) // 2)
        n = min(pos_cap, neg_cap, config.val_pairs // 2)
        if n == 0:
            return
        images = pd.DataFrame({"identity": classes.to_numpy(), "image": keys})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pairs = generate_pairs(images, n_folds=1, pairs_per_fold=2 * n, seed=config.seed)
        pairs = scenario_pairs(pairs, "masked_unmasked", seed=config.seed)
        lookup = {}
        for i, key in enumerate(keys):
            lookup[key] = (i, False)
            lookup[masked_name(key)] = (i, True)
        ends = [lookup[x] for x in pairs["a"]] + [lookup[x] for x in pairs["b"]]
        unique = sorted(set(ends))
        position = {e: k for k, e in enumerate(unique)}
        self.a = np.array([position[lookup[x]] for x in pairs["a"]])
        self.b = np.array([position[lookup[x]] for x in pairs["b"]])
        self.labels = pairs["label"].to_numpy()
        root = data_dir
        paths = [root / val_rows["dataset"].iat[i] / "aligned" / val_rows["masked" if m else "aligned"].iat[i]
                 for i, m in unique]
        self.crops = load_crops(paths, CROP_SIZE)
        self.size = len(self.labels)
        log(f"train: validation on {self.size} masked-unmasked pairs of {classes.nunique()} held-out identities "
            f"({len(unique)} crops)")

    def accuracy(self, backbone: nn.Module, input_size: int, device: torch.device, amp_dtype: torch.dtype | None,
                 channels_last: bool, batch_size: int) -> float:
        """Best-threshold accuracy (:func:`~maskstudy.evaluate.metrics.best_threshold`) of the cosine scores of
        the pairs, embedded as in training (no flip, the run's autocast dtype and memory format); NaN without
        pairs or with non-finite embeddings."""
        if self.size == 0:
            return float("nan")
        emb = compute_embeddings(backbone, self.crops, input_size, batch_size=batch_size, device=device, flip=False,
                                 normalise=True, amp_dtype=amp_dtype, channels_last=channels_last).numpy()
        scores = (emb[self.a] * emb[self.b]).sum(axis=1)
        if not np.isfinite(scores).all():
            return float("nan")
        return best_threshold(scores, self.labels)[1]
