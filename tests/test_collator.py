"""MaskingCollator and PaddingCollator: rates, specials, determinism, span masking, padding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from biotransformer.data.collator import MaskingCollator, PaddingCollator, default_span_length
from biotransformer.errors import ConfigError
from biotransformer.tokenizers import Tokenizer


def _items(tokenizer: Tokenizer, count: int, length: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    letters = np.frombuffer(b"ACGT", np.uint8)
    items = []
    for index in range(count):
        size = int(rng.integers(length // 2, length))
        sequence = letters[rng.integers(0, 4, size)].tobytes().decode()
        items.append({"index": index, "input_ids": tokenizer.encode(sequence)})
    return items


def test_rates_within_tolerance_on_100k_tokens_and_no_special_selected():
    tokenizer = Tokenizer.from_spec("dna:eos=true")
    collator = MaskingCollator(tokenizer, seed=1)
    batch = collator(_items(tokenizer, 200, 1000))
    original = batch["labels"]
    selected = original != -100
    real = batch["attention_mask"].bool()
    specials = torch.tensor(tokenizer.special_ids)
    was_special = torch.isin(torch.where(selected, original, batch["input_ids"]), specials)
    eligible = real & ~torch.isin(batch["input_ids"], specials) | selected
    assert eligible.sum() > 100_000 - 2 * 200
    assert not (selected & ~real).any()
    assert not (selected & was_special).any()
    rate = selected.sum() / eligible.sum()
    assert abs(rate - 0.15) < 0.005
    chosen = batch["input_ids"][selected]
    masked = (chosen == tokenizer.mask_id).float().mean()
    kept = (chosen == original[selected]).float().mean()
    assert abs(masked - 0.8) < 0.015
    assert abs(kept - 0.1) < 0.02  # plus the random draws that hit the original token
    assert (batch["input_ids"][batch["attention_mask"] == 0] == tokenizer.pad_id).all()


def test_cls_eos_and_pad_never_selected():
    tokenizer = Tokenizer.from_spec("protein")
    items = [{"index": i, "input_ids": tokenizer.encode("MKLV" * (i + 1))} for i in range(50)]
    batch = MaskingCollator(tokenizer, mask_rate=0.9, mask_token_rate=1.0, random_token_rate=0)(
        items
    )
    selected = batch["labels"] != -100
    assert not selected[:, 0].any()  # <cls>
    lengths = batch["attention_mask"].sum(1)
    assert not selected[torch.arange(50), lengths - 1].any()  # <eos>
    assert not (selected & (batch["attention_mask"] == 0)).any()


def test_same_seed_epoch_index_gives_same_masks_in_any_batch_order():
    tokenizer = Tokenizer.from_spec("dna")
    items = _items(tokenizer, 8, 100)
    collator = MaskingCollator(tokenizer, seed=3)
    together = collator(items)
    alone = collator([items[5]])
    length = int(alone["attention_mask"].sum())
    assert torch.equal(alone["labels"][0, :length], together["labels"][5, :length])
    collator.set_epoch(1)
    assert not torch.equal(collator(items)["labels"], together["labels"])


def test_span_default_is_2k_minus_1_for_overlapping_kmers_only():
    assert default_span_length(Tokenizer.from_spec("dna-kmer:k=6")) == 11
    assert default_span_length(Tokenizer.from_spec("dna-kmer:k=6,stride=6")) == 1
    assert default_span_length(Tokenizer.from_spec("dna")) == 1


def _recoverable_bases(ids: np.ndarray, selected: np.ndarray, k: int) -> np.ndarray:
    """Bases an oracle reads off the unselected overlapping k-mers around them."""
    known = np.zeros(len(ids) + k - 1, dtype=bool)
    for position in np.flatnonzero(~selected):
        known[position : position + k] = True
    return known


def test_span_masking_hides_whole_kmers_from_an_oracle():
    k = 6
    tokenizer = Tokenizer.from_spec(f"dna-kmer:k={k},cls=false")
    items = _items(tokenizer, 50, 800, seed=2)
    spans = MaskingCollator(tokenizer, seed=0)(items)
    single = MaskingCollator(tokenizer, seed=0, span_length=1)(items)
    hidden_with_spans = hidden_with_single = 0
    for row, item in enumerate(items):
        length = len(item["input_ids"])
        for batch in (spans, single):
            selected = (batch["labels"][row, :length] != -100).numpy()
            hidden = ~_recoverable_bases(item["input_ids"], selected, k)
            if batch is spans:
                hidden_with_spans += hidden.sum()
                window = np.convolve(selected, np.ones(2 * k - 1), "same")
                for centre in np.flatnonzero(window == 2 * k - 1):
                    assert hidden[centre : centre + k].all()
            else:
                hidden_with_single += hidden.sum()
    # Lone masked k-mers are spelled by their neighbours: only chance runs and edges hide bases.
    assert hidden_with_single < 0.05 * hidden_with_spans
    assert hidden_with_spans > 0.03 * sum(len(item["input_ids"]) for item in items)


def test_bad_rates_are_config_errors():
    tokenizer = Tokenizer.from_spec("dna")
    with pytest.raises(ConfigError, match="mask_rate"):
        MaskingCollator(tokenizer, mask_rate=0)
    with pytest.raises(ConfigError, match="random_token_rate"):
        MaskingCollator(tokenizer, mask_token_rate=0.9, random_token_rate=0.2)


def test_padding_collator_sequence_and_token_labels():
    items = [
        {"input_ids": np.array([2, 5, 6]), "labels": 1, "index": 0},
        {"input_ids": np.array([2, 7]), "labels": 0, "index": 1},
    ]
    batch = PaddingCollator(pad_id=0)(items)
    assert batch["input_ids"].tolist() == [[2, 5, 6], [2, 7, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["labels"].tolist() == [1, 0]
    assert batch["index"].tolist() == [0, 1]

    tokens = [
        {"input_ids": np.array([2, 5, 6]), "labels": np.array([-100, 1, 0])},
        {"input_ids": np.array([2, 7]), "labels": np.array([-100, 1])},
    ]
    assert PaddingCollator(0)(tokens)["labels"].tolist() == [[-100, 1, 0], [-100, 1, -100]]

    regression = [{"input_ids": np.array([1]), "labels": 0.5}, {"input_ids": [1], "labels": 2.0}]
    labels = PaddingCollator(0)(regression)["labels"]
    assert labels.dtype == torch.float32 and labels.tolist() == [0.5, 2.0]

    multilabel = [{"input_ids": np.array([1, 2]), "labels": np.array([1, 0])}] * 2
    stacked = PaddingCollator(0, token_labels=False)(multilabel)["labels"]
    assert stacked.tolist() == [[1, 0], [1, 0]]
