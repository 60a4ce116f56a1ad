"""Evaluation embeddings kept on disk: reused while model and crop are unchanged, recomputed otherwise."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import torch
from test_evaluate import MeanColour, write_crop

from maskstudy.evaluate import verification
from maskstudy.evaluate.store import EmbeddingStore, model_fingerprint
from maskstudy.study.testsets import TestSets, evaluate_model


@pytest.fixture
def crops(tmp_path):
    root = tmp_path / "aligned"
    for k, colour in enumerate(["red", "green", "blue"]):
        for i in range(2):
            write_crop(root, f"P{k}/P{k}_{i}.png", colour)
    return root


def test_store_round_trip_and_changed_crop(tmp_path, crops):
    model = MeanColour()
    store = EmbeddingStore(tmp_path / "store", model, 16, crops)
    assert store.load() == {}
    cache = {"P0/P0_0.png": np.ones(3, np.float32), "P1/P1_0.png": np.zeros(3, np.float32), "gone.png": np.ones(3)}
    assert store.save(cache) == store.path
    loaded = EmbeddingStore(tmp_path / "store", MeanColour(), 16, crops).load()
    assert sorted(loaded) == ["P0/P0_0.png", "P1/P1_0.png"]  # a crop that does not exist is not kept
    np.testing.assert_array_equal(loaded["P0/P0_0.png"], np.ones(3))

    write_crop(crops, "P0/P0_0.png", "blue")  # same name, new content
    stat = os.stat(crops / "P0/P0_0.png")
    os.utime(crops / "P0/P0_0.png", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert sorted(store.load()) == ["P1/P1_0.png"]

    store.path.write_bytes(b"not a zip")
    assert store.load() == {}  # a damaged store costs a recomputation, not a crash
    assert not [p for p in store.path.parent.iterdir() if p.name.endswith(".tmp")]


def test_store_key_follows_weights_input_size_and_flip(tmp_path, crops):
    a, b = MeanColour(), MeanColour()
    assert model_fingerprint(a) == model_fingerprint(b)
    with torch.no_grad():
        b.dummy.fill_(1.0)
    assert model_fingerprint(a) != model_fingerprint(b)
    paths = {EmbeddingStore(tmp_path, a, 16, crops).path, EmbeddingStore(tmp_path, b, 16, crops).path,
             EmbeddingStore(tmp_path, a, 32, crops).path, EmbeddingStore(tmp_path, a, 16, crops, flip=False).path,
             EmbeddingStore(tmp_path, a, 16, tmp_path).path}
    assert len(paths) == 5
    assert model_fingerprint(torch.nn.Linear(2, 2).to(torch.bfloat16))  # any dtype hashes


def test_evaluate_model_reruns_without_embedding(tmp_path, crops, monkeypatch):
    rows = [(fold, f"P{k}/P{k}_0.png", f"P{k}/P{k}_1.png", 1) for fold in (1, 2) for k in range(3)]
    rows += [(fold, f"P{k}/P{k}_0.png", f"P{(k + 1) % 3}/P{(k + 1) % 3}_1.png", 0) for fold in (1, 2) for k in range(3)]
    pairs_dir = tmp_path / "pairs"
    pairs_dir.mkdir()
    pd.DataFrame(rows, columns=["fold", "a", "b", "label"]).to_csv(pairs_dir / "unmasked_unmasked.csv", index=False)
    empty = pd.DataFrame(columns=["identity", "aligned", "masked"])
    tests = TestSets(pairs_dir, crops, ["unmasked_unmasked"], empty, empty[["identity", "aligned"]],
                     embedding_dir=tmp_path / "eval_embeddings")

    embedded = []
    real = verification.embed_paths

    def counting(model, input_size, rels, root, cache=None, **kw):
        embedded.extend(r for r in dict.fromkeys(rels) if r not in (cache or {}))
        return real(model, input_size, rels, root, cache, **kw)

    monkeypatch.setattr(verification, "embed_paths", counting)
    first = evaluate_model(MeanColour(), 16, tests, identification=False, n_boot=100)
    assert len(embedded) == 6
    embedded.clear()
    second = evaluate_model(MeanColour(), 16, tests, identification=False, n_boot=100)
    assert embedded == []
    pd.testing.assert_frame_equal(first.verification, second.verification)
