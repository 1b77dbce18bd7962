"""The encoder: shapes, padding invariance, positional encodings, attention against a reference."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from biotransformer.config import POSITIONS, ModelConfig
from biotransformer.errors import InputError
from biotransformer.model import (
    Encoder,
    RotaryEmbedding,
    SelfAttention,
    alibi_bias,
    alibi_slopes,
    apply_rotary,
    sinusoidal_table,
)

VOCAB = 11


def tiny(**overrides: object) -> ModelConfig:
    values = {"hidden_size": 16, "num_heads": 2, "ffn_size": 32, "max_length": 32, "pad_id": 0}
    return ModelConfig.from_preset("tiny", vocab_size=VOCAB, **{**values, **overrides})


def encoder(**overrides: object) -> Encoder:
    torch.manual_seed(0)
    return Encoder(tiny(**overrides)).double().eval()


@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize(("norm", "activation"), [("pre", "gelu"), ("post", "swiglu")])
def test_shapes(position: str, norm: str, activation: str) -> None:
    model = encoder(position=position, norm=norm, activation=activation)
    ids = torch.randint(1, VOCAB, (3, 7))
    out = model(ids, output_hidden_states=True, output_attentions=True)
    assert out.last_hidden_state.shape == (3, 7, 16)
    assert len(out.hidden_states) == 3 and all(h.shape == (3, 7, 16) for h in out.hidden_states)
    assert torch.equal(out.hidden_states[-1], out.last_hidden_state)
    assert len(out.attentions) == 2 and all(a.shape == (3, 2, 7, 7) for a in out.attentions)
    plain = model(ids)
    assert plain.hidden_states is None and plain.attentions is None
    torch.testing.assert_close(plain.last_hidden_state, out.last_hidden_state)


@pytest.mark.parametrize("position", POSITIONS)
def test_padding_invariance(position: str) -> None:
    """A sequence alone and right-padded in a batch gives the same hidden states."""
    model = encoder(position=position, num_heads=4)
    short = torch.randint(1, VOCAB, (1, 5))
    long = torch.randint(1, VOCAB, (1, 9))
    batch = torch.cat([F.pad(short, (0, 4), value=0), long])
    mask = (batch != 0).long()
    padded = model(batch, mask, output_attentions=True)
    alone = model(short).last_hidden_state
    torch.testing.assert_close(padded.last_hidden_state[0, :5], alone[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(padded.last_hidden_state[1], model(long).last_hidden_state[0])
    assert padded.attentions[0][0, :, :, 5:].abs().max() == 0  # no weight on padding


def test_no_mask_when_nothing_is_padded() -> None:
    """FlashAttention needs attn_mask=None: an all-ones mask must not produce one."""
    model = encoder(position="rotary")
    assert model.attention_mask_for(None, 4, torch.float32) is None
    assert model.attention_mask_for(torch.ones(2, 4, dtype=torch.long), 4, torch.float32) is None
    mask = model.attention_mask_for(torch.tensor([[1, 1, 0, 0]]), 4, torch.float32)
    assert mask.dtype == torch.bool and mask.tolist() == [[[[True, True, False, False]]]]


def test_alibi_merges_padding_into_one_float_mask() -> None:
    model = encoder(position="alibi", num_heads=4)
    mask = model.attention_mask_for(torch.tensor([[1, 1, 1], [1, 1, 0]]), 3, torch.float64)
    assert mask.shape == (2, 4, 3, 3) and mask.dtype == torch.float64
    assert torch.isinf(mask[1, :, :, 2]).all() and not torch.isinf(mask[0]).any()
    slopes = alibi_slopes(4)
    assert mask[0, 1, 0, 2] == -2 * slopes[1]


def test_alibi_slopes_follow_the_paper() -> None:
    assert alibi_slopes(8).tolist() == [2.0**-i for i in range(1, 9)]
    assert len(alibi_slopes(12)) == 12 and alibi_slopes(12)[8] == 2**-0.5
    bias = alibi_bias(alibi_slopes(2), 3)
    assert torch.equal(bias[0, 0], -torch.tensor([[0, 1, 2], [1, 0, 1], [2, 1, 0]]) * 2**-4)


def test_sinusoidal_table_equals_the_paper() -> None:
    table = sinusoidal_table(50, 16)
    for pos in (0, 1, 17, 49):
        for i in range(8):
            angle = pos / 10000 ** (2 * i / 16)
            assert table[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert table[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)


def test_rotary_is_relative() -> None:
    """q_m . k_n depends only on m - n: shifting every position leaves the scores unchanged."""
    torch.manual_seed(0)
    rotary = RotaryEmbedding(8, 10000.0)
    q, k = torch.randn(2, 1, 1, 6, 8, dtype=torch.float64).unbind(0)
    scores = apply_rotary(q, *rotary(6, q.dtype)) @ apply_rotary(k, *rotary(6, q.dtype)).mT
    shifted = rotary(6, q.dtype, offset=37)
    torch.testing.assert_close(apply_rotary(q, *shifted) @ apply_rotary(k, *shifted).mT, scores)
    assert not torch.allclose(apply_rotary(q, *shifted) @ k.mT, q @ k.mT)
    cos, _ = rotary(3, torch.float64)
    assert cos.shape == (3, 8) and cos.data_ptr() == rotary(4, torch.float64)[0].data_ptr()


def test_rotary_matches_fair_esm() -> None:
    esm_rotary = pytest.importorskip("esm.rotary_embedding")
    torch.manual_seed(0)
    q, k = torch.randn(2, 3, 5, 8).unbind(0)  # (B*H, T, hs), fair-esm's layout
    cos, sin = RotaryEmbedding(8, 10000.0)(5, q.dtype)
    expected = esm_rotary.RotaryEmbedding(8)(q, k)
    torch.testing.assert_close(apply_rotary(q, cos, sin), expected[0])
    torch.testing.assert_close(apply_rotary(k, cos, sin), expected[1])


def rotate_pairs(x: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotary positions written out: each pair (i, i + hs/2) turned by pos / base^(2i/hs)."""
    T, hs = x.shape[-2:]
    out = x.clone()
    for pos in range(T):
        for i in range(hs // 2):
            angle = torch.tensor(pos / base ** (2 * i / hs), dtype=x.dtype)
            a, b = x[..., pos, i], x[..., pos, i + hs // 2]
            out[..., pos, i] = a * angle.cos() - b * angle.sin()
            out[..., pos, i + hs // 2] = b * angle.cos() + a * angle.sin()
    return out


def reference_attention(
    module: SelfAttention,
    x: torch.Tensor,
    keep: torch.Tensor,
    bias: torch.Tensor | None,
    rotary: bool,
) -> torch.Tensor:
    """Multi-head attention written out plainly, per head, with the module's weights."""
    C = x.size(-1)
    H, hs = module.num_heads, module.head_size
    wq, wk, wv = module.qkv.weight.split(C)
    bq, bk, bv = module.qkv.bias.split(C)
    heads = []
    for h in range(H):
        part = slice(h * hs, (h + 1) * hs)
        q = x @ wq[part].T + bq[part]
        k = x @ wk[part].T + bk[part]
        v = x @ wv[part].T + bv[part]
        if rotary:
            q, k = rotate_pairs(q), rotate_pairs(k)
        scores = q @ k.transpose(1, 2) / math.sqrt(hs)
        if bias is not None:
            scores = scores + bias[:, h]
        scores = scores.masked_fill(~keep[:, None, :].bool(), float("-inf"))
        heads.append(torch.softmax(scores, dim=-1) @ v)
    return module.out(torch.cat(heads, dim=-1))


@pytest.mark.parametrize("position", ["learned", "alibi", "rotary"])
def test_sdpa_equals_reference_attention(position: str) -> None:
    model = encoder(position=position, num_heads=4)
    torch.nn.init.normal_(model.layers[0].attn.qkv.bias)
    attention = model.layers[0].attn
    x = torch.randn(2, 6, 16, dtype=torch.float64)
    keep = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    mask = model.attention_mask_for(keep, 6, x.dtype)
    bias = alibi_bias(model.alibi_slopes, 6) if position == "alibi" else None
    rotary = model.rotary(6, x.dtype) if position == "rotary" else None
    expected = reference_attention(attention, x, keep, bias, rotary is not None)
    fast, _ = attention(x, mask, rotary)
    explicit, weights = attention(x, mask, rotary, need_weights=True)
    torch.testing.assert_close(fast, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(explicit, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4, 6, dtype=torch.float64))


def test_batch_longer_than_max_length_is_a_clear_error() -> None:
    model = encoder(position="learned", max_length=8)
    with pytest.raises(InputError, match="9 tokens is longer than the model's max_length = 8"):
        model(torch.ones(1, 9, dtype=torch.long))
    encoder(position="rotary", max_length=8)(torch.ones(1, 9, dtype=torch.long))


def test_pad_embedding_is_zero() -> None:
    assert encoder(pad_id=3).embed_tokens.weight[3].abs().max() == 0


def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    ids = torch.randint(1, VOCAB, (2, 6))
    grads = []
    for checkpointing in (False, True):
        model = encoder(gradient_checkpointing=checkpointing).train()
        model(ids).last_hidden_state.square().sum().backward()
        grads.append(model.layers[0].attn.qkv.weight.grad)
    torch.testing.assert_close(grads[0], grads[1])


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_torch_compile_gives_the_eager_loss_and_gradients() -> None:
    """The masked-LM model compiled in place (as ``training.compile`` and the throughput
    benchmark compile it): the same loss and gradients as eager, with and without padding."""
    from biotransformer.heads import MaskedLM

    config = tiny(position="rotary", mask_id=VOCAB - 1, dropout=0.0)
    torch.manual_seed(0)
    eager = MaskedLM(config, target_logits_only=True)
    compiled = MaskedLM(config, target_logits_only=True)
    compiled.load_state_dict(eager.state_dict())
    compiled.compile()
    ids = torch.randint(1, VOCAB - 1, (3, 12))
    labels = torch.full_like(ids, -100)
    labels[:, ::4] = ids[:, ::4]
    masked = ids.masked_fill(labels != -100, VOCAB - 1)
    padding = torch.ones_like(ids)
    padding[1, 9:] = 0
    for attention_mask in (None, padding):
        losses, grads = [], []
        for model in (eager, compiled):
            model.zero_grad()
            loss = model(masked, attention_mask, labels=labels).loss
            loss.backward()
            losses.append(loss.detach())
            grads.append(model.encoder.layers[0].attn.qkv.weight.grad.clone())
        torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-6)
