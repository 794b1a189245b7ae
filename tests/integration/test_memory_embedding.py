"""memory.embedding against sentence-transformers on the same packaged weights.

The numpy encoder replaces sentence-transformers on the query path; it must give the
same vectors, or stored findings and new queries would be compared in different spaces.
This test imports sentence-transformers (and so torch): that is the reference.
"""

from __future__ import annotations

import numpy as np
import pytest

from memory.embedding import DIM, MAX_TOKENS, minilm, model_dir

TEXTS = [
    "KV cache per token",
    "memory held per generated token for attention",
    "mla: Multi-head Latent Attention shrinks the KV cache by caching a low-rank latent\n"
    "metric kv_cache_ratio: measured 0.071 x, paper 0.07 x, verdict reproduced",
    "FP8 GEMM — relative error < 0.25 %, d_h^R = 64, Ünïcödé and 数字",
    "x",
    # Longer than the model's 256-token window: both sides must cut it at the same place.
    " ".join(f"token{i}" for i in range(400)),
]


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    sentence_transformers = pytest.importorskip("sentence_transformers")
    model = sentence_transformers.SentenceTransformer(str(model_dir()), device="cpu")
    assert model.max_seq_length == MAX_TOKENS
    return np.asarray(model.encode(TEXTS, batch_size=4), dtype=np.float32)


def test_vectors_equal_sentence_transformers(reference: np.ndarray) -> None:
    ours = minilm()(TEXTS)

    assert ours.shape == (len(TEXTS), DIM)
    assert np.abs(ours - reference).max() < 1e-5
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_a_query_alone_equals_the_same_text_in_a_padded_batch(reference: np.ndarray) -> None:
    """Padding must not leak into the mean: a short text batched with long ones (padded)
    and on its own (unpadded) gives one vector."""
    alone = minilm().query(TEXTS[0])

    assert np.abs(alone - reference[0]).max() < 1e-5
    assert np.abs(alone - minilm()(TEXTS)[0]).max() < 1e-5


def test_empty_input_is_an_empty_matrix() -> None:
    assert minilm()([]).shape == (0, DIM)
