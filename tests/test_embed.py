import numpy as np

from personal_rm.data import Comparison
from personal_rm.embed import CachedEncoder, embed_comparisons, pair_text


class CountingEncoder:
    def __init__(self, inner):
        self.inner, self.model_id, self.dim, self.texts_encoded = (
            inner,
            inner.model_id,
            inner.dim,
            0,
        )

    def encode(self, texts, progress=False):
        self.texts_encoded += len(texts)
        return self.inner.encode(texts)


def test_minilm_vectors_are_normalised_and_semantic(minilm):
    cat, kitten, tax = minilm.encode(
        ["A cat sat on the mat.", "A kitten sat on a rug.", "File your tax return."]
    )
    assert np.allclose([np.linalg.norm(v) for v in (cat, kitten, tax)], 1.0, atol=1e-5)
    assert cat @ kitten > cat @ tax + 0.2


def test_cache_encodes_each_text_once_and_returns_identical_vectors(minilm, tmp_path):
    counting = CountingEncoder(minilm)
    comparisons = [
        Comparison("u1", "Say hi", "Hello!", "Go away."),
        Comparison("u2", "Say hi", "Hello!", "Hi there, friend."),
    ]
    first = embed_comparisons(comparisons, CachedEncoder(counting, tmp_path))
    assert counting.texts_encoded == 3  # "Hello!" is shared
    again = embed_comparisons(comparisons, CachedEncoder(counting, tmp_path))  # a new process
    assert counting.texts_encoded == 3
    np.testing.assert_array_equal(first.chosen, again.chosen)
    np.testing.assert_allclose(
        first.chosen[0], minilm.encode([pair_text("Say hi", "Hello!")])[0], atol=1e-6
    )
    assert list(first.user_ids) == ["u1", "u2"]
