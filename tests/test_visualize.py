"""Plots of what a model computes: its embeddings of records and its attention over one
sequence, drawn from the arrays the model returns."""

from __future__ import annotations

import numpy as np
import pytest

from biotransformer import visualize
from biotransformer.config import ModelConfig
from biotransformer.heads import SequenceClassifier
from biotransformer.io import SequenceRecord
from biotransformer.tokenizers import Tokenizer


@pytest.fixture(scope="module")
def tiny_classifier():
    tokenizer = Tokenizer.from_spec("dna")
    config = ModelConfig.from_preset(
        "tiny", vocab_size=tokenizer.vocab_size, pad_id=tokenizer.pad_id, num_heads=2
    )
    model = SequenceClassifier(config, label2id={"0": 0, "1": 1})
    model.tokenizer = tokenizer
    return model.eval()


def test_embedding_plot_has_one_point_per_record_by_label(tmp_path, tiny_classifier):
    rng = np.random.default_rng(0)
    records = [
        SequenceRecord(f"r{i}", "".join(rng.choice(list("ACGT"), 30)), str(i % 3))
        for i in range(12)
    ]
    figure = visualize.plot_embeddings_of(tiny_classifier, records, tmp_path / "pca.png")
    clouds = figure.axes[0].collections
    assert [cloud.get_label() for cloud in clouds] == ["0", "1", "2"]
    assert [len(cloud.get_offsets()) for cloud in clouds] == [4, 4, 4]


def test_attention_plot_is_one_square_per_token(tmp_path, tiny_classifier):
    sequence = "ACGTACGTTA"
    weights, tokens = visualize.attention_weights(tiny_classifier, sequence, layer=-1)
    assert tokens == ["<cls>", *sequence]
    assert weights.shape == (2, 11, 11)
    np.testing.assert_allclose(weights.sum(axis=-1), 1.0, rtol=1e-5)
    figure = visualize.plot_attention_of(tiny_classifier, sequence, tmp_path / "a.png", head=1)
    image = figure.axes[0].get_images()[0].get_array()
    np.testing.assert_allclose(image, weights[1], rtol=1e-6)
    assert [label.get_text() for label in figure.axes[0].get_xticklabels()] == tokens
    with pytest.raises(Exception, match="head 2 does not exist"):
        visualize.plot_attention_of(tiny_classifier, sequence, tmp_path / "b.png", head=2)
