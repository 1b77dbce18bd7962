"""The Transformer encoder, read top to bottom: positions, attention, feed-forward, block, encoder.

Shapes: B batch, T tokens, C hidden size, H heads, hs head size (C = H * hs).
Padding is on the right; ``attention_mask`` is (B, T) with 1 for a real token, 0 for padding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from biotransformer.config import ModelConfig
from biotransformer.errors import InputError

# ---------------------------------------------------------------------------------------------
# Positional encodings
# ---------------------------------------------------------------------------------------------


def sinusoidal_table(length: int, width: int) -> torch.Tensor:
    """The fixed table of "Attention Is All You Need": PE[p, 2i] = sin(p / 10000^(2i/C)),
    PE[p, 2i+1] = cos(p / 10000^(2i/C)). Returns (length, width) float32."""
    position = torch.arange(length, dtype=torch.float64)[:, None]  # (T, 1)
    inv_freq = 10000.0 ** (-torch.arange(0, width, 2, dtype=torch.float64) / width)  # (C/2,)
    table = torch.zeros(length, width, dtype=torch.float64)
    table[:, 0::2] = torch.sin(position * inv_freq)
    table[:, 1::2] = torch.cos(position * inv_freq)
    return table.float()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) on the last dimension, the convention of ESM-2 and GPT-NeoX."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate queries or keys (..., hs) by their positions; cos, sin (T, hs) broadcast to x,
    e.g. (T, hs) for (B, H, T, hs) or (T, 1, 1, hs) for (B, T, 2, H, hs)."""
    return x * cos + rotate_half(x) * sin


class RotaryEmbedding(nn.Module):
    """cos/sin tables for rotary positions, cached per length, device and dtype."""

    def __init__(self, head_size: int, base: float) -> None:
        super().__init__()
        inv_freq = 1.0 / base ** (torch.arange(0, head_size, 2, dtype=torch.float32) / head_size)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self._cache: tuple[int, torch.device, torch.dtype, torch.Tensor, torch.Tensor] | None = None

    def forward(
        self, length: int, dtype: torch.dtype, offset: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin of shape (length, hs) for positions offset .. offset + length - 1."""
        device = self.inv_freq.device
        needed = offset + length
        cache = self._cache
        if cache is None or cache[0] < needed or cache[1] != device or cache[2] != dtype:
            precise = torch.float64 if dtype == torch.float64 else torch.float32
            positions = torch.arange(needed, device=device, dtype=precise)
            freqs = torch.outer(positions, self.inv_freq.to(precise))  # (T, hs/2)
            angles = torch.cat((freqs, freqs), dim=-1)  # (T, hs)
            cache = (needed, device, dtype, angles.cos().to(dtype), angles.sin().to(dtype))
            self._cache = cache
        return cache[3][offset:needed], cache[4][offset:needed]


def alibi_slopes(num_heads: int) -> torch.Tensor:
    """Per-head slopes of ALiBi (Press et al. 2022): a geometric series 2^(-8/n), ...,
    interleaved as in the paper's reference code when the head count is not a power of 2."""

    def power_of_two_slopes(n: int) -> list[float]:
        start = 2 ** (-8 / n)
        return [start ** (i + 1) for i in range(n)]

    closest = 2 ** math.floor(math.log2(num_heads))
    slopes = power_of_two_slopes(closest)
    if closest < num_heads:
        slopes += power_of_two_slopes(2 * closest)[0::2][: num_heads - closest]
    return torch.tensor(slopes)


def alibi_bias(slopes: torch.Tensor, length: int) -> torch.Tensor:
    """Symmetric encoder bias -slope * |i - j|, shape (1, H, T, T)."""
    positions = torch.arange(length, device=slopes.device)
    distance = (positions[None, :] - positions[:, None]).abs()  # (T, T)
    return -slopes[None, :, None, None] * distance[None, None]  # (1, H, T, T)


# ---------------------------------------------------------------------------------------------
# Attention, feed-forward, block
# ---------------------------------------------------------------------------------------------


class SelfAttention(nn.Module):
    """Multi-head self-attention with a fused qkv projection, through PyTorch's SDPA kernels."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.head_size = config.head_size
        self.dropout = config.attention_dropout
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=config.bias)
        self.out = nn.Linear(config.hidden_size, config.hidden_size, bias=config.bias)
        self.qk_norm = config.qk_norm
        if self.qk_norm:  # ESM C: queries and keys normalised over all heads at once
            self.q_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps, bias=False)
            self.k_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None,
        rotary: tuple[torch.Tensor, torch.Tensor] | None,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``attn_mask``: None, boolean (True = attend) or an additive float bias,
        broadcastable to (B, H, T, T). Returns the output and, on request, the weights."""
        B, T, C = x.shape
        qkv = self.qkv(x)  # (B, T, 3C)
        if self.qk_norm:
            q, k, v = qkv.split(C, dim=-1)
            qkv = torch.cat((self.q_norm(q), self.k_norm(k), v), dim=-1)
        qkv = qkv.view(B, T, 3, self.num_heads, self.head_size)
        qk, v = qkv.split((2, 1), dim=2)  # (B, T, 2, H, hs), (B, T, 1, H, hs)
        v = v.squeeze(2).transpose(1, 2)  # (B, H, T, hs)
        if rotary is not None:
            # Queries and keys rotate in one pass, in the projection's layout; the tables are
            # (T, hs), cast only under autocast.
            cos, sin = (table.to(qk.dtype)[:, None, None] for table in rotary)  # (T, 1, 1, hs)
            qk = apply_rotary(qk, cos, sin)
        q, k = qk.permute(2, 0, 3, 1, 4).unbind(0)  # 2 x (B, H, T, hs), strided views for SDPA
        dropout = self.dropout if self.training else 0.0
        if need_weights:
            y, weights = self._explicit_attention(q, k, v, attn_mask, dropout)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout)
            weights = None
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C)
        return self.out(y), weights

    @staticmethod
    def _explicit_attention(
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        attn_mask: torch.Tensor | None,
        dropout: float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """softmax(q k^T / sqrt(hs) + mask) v, keeping the weights (B, H, T, T) to return."""
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))  # (B, H, T, T)
        if attn_mask is not None and attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        elif attn_mask is not None:
            scores = scores + attn_mask
        weights = scores.softmax(dim=-1)
        y = F.dropout(weights, p=dropout) @ v  # (B, H, T, hs)
        return y, weights


class FeedForward(nn.Module):
    """Position-wise feed-forward: Linear -> GELU -> Linear, or SwiGLU (silu(a) * b)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.gated = config.activation == "swiglu"
        inner = 2 * config.ffn_size if self.gated else config.ffn_size
        self.up = nn.Linear(config.hidden_size, inner, bias=config.bias)
        self.down = nn.Linear(config.ffn_size, config.hidden_size, bias=config.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.up(x)  # (B, T, F) or (B, T, 2F)
        if self.gated:
            gate, value = h.chunk(2, dim=-1)
            h = F.silu(gate) * value
        else:
            h = F.gelu(h)
        return self.down(h)


class Block(nn.Module):
    """One Transformer layer: attention then feed-forward, each with a residual connection.
    Pre-LN normalises each sublayer's input; post-LN (the original paper) its residual sum.
    Each sublayer's output is divided by ``residual_scale`` before it joins the residual
    (1: not at all; ESM C: sqrt(num_layers / 36))."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.pre_norm = config.norm == "pre"
        self.residual_scale = config.residual_scale
        self.attn_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attn = SelfAttention(config)
        self.ffn_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.ffn = FeedForward(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None,
        rotary: tuple[torch.Tensor, torch.Tensor] | None,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.pre_norm:
            h, weights = self.attn(self.attn_norm(x), attn_mask, rotary, need_weights)
            x = x + self.residual(h)
            x = x + self.residual(self.ffn(self.ffn_norm(x)))
        else:
            h, weights = self.attn(x, attn_mask, rotary, need_weights)
            x = self.attn_norm(x + self.residual(h))
            x = self.ffn_norm(x + self.residual(self.ffn(x)))
        return x, weights

    def residual(self, h: torch.Tensor) -> torch.Tensor:
        """A sublayer's output as it joins the residual stream: dropout, then the scale."""
        h = self.dropout(h)
        return h if self.residual_scale == 1.0 else h / self.residual_scale


# ---------------------------------------------------------------------------------------------
# Encoder
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def init_weights(module: nn.Module, std: float) -> None:
    """Normal(0, std) for linear and embedding weights, zero biases and padding embedding;
    LayerNorm keeps its default (weight 1, bias 0)."""
    for sub in module.modules():
        if isinstance(sub, (nn.Linear, nn.Embedding)):
            nn.init.normal_(sub.weight, std=std)
        if isinstance(sub, nn.Linear) and sub.bias is not None:
            nn.init.zeros_(sub.bias)
        if isinstance(sub, nn.Embedding) and sub.padding_idx is not None:
            sub.weight[sub.padding_idx].zero_()


@dataclass
class EncoderOutput:
    """``last_hidden_state`` (B, T, C); ``hidden_states`` (embeddings, then each layer's
    output, the last one after the final LayerNorm) and ``attentions`` ((B, H, T, T) per
    layer) only when requested."""

    last_hidden_state: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


class Encoder(nn.Module):
    """Token embeddings + positions -> ``num_layers`` blocks -> final LayerNorm (pre-LN)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(
            config.vocab_size, config.hidden_size, padding_idx=config.pad_id
        )
        if config.position == "learned":
            rows = config.position_offset + config.max_length
            self.embed_positions = nn.Embedding(rows, config.hidden_size)
        if config.position == "sinusoidal":
            table = sinusoidal_table(config.max_length, config.hidden_size)
            self.register_buffer("position_table", table, persistent=False)
        if config.position == "rotary":
            self.rotary = RotaryEmbedding(config.head_size, config.rotary_base)
        if config.position == "alibi":
            self.register_buffer("alibi_slopes", alibi_slopes(config.num_heads), persistent=False)
        self.embedding_norm = (
            nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
            if config.embedding_layer_norm
            else nn.Identity()
        )
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.num_layers))
        self.final_norm = (
            nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps, bias=config.final_norm_bias)
            if config.norm == "pre"
            else nn.Identity()
        )
        init_weights(self, config.initializer_range)

    def attention_mask_for(
        self, attention_mask: torch.Tensor | None, length: int, dtype: torch.dtype
    ) -> torch.Tensor | None:
        """The mask SDPA receives: None when nothing is padded (keeps FlashAttention usable),
        else a boolean (B, 1, 1, T) with True = attend; for ALiBi the distance bias and the
        padding merged into one float mask (1 or B, H, T, T)."""
        padded = attention_mask is not None and not bool(attention_mask.all())
        if self.config.position == "alibi":
            bias = alibi_bias(self.alibi_slopes, length).to(dtype)  # (1, H, T, T)
            if padded:
                keep = attention_mask[:, None, None, :].bool()  # (B, 1, 1, T)
                bias = torch.where(keep, bias, float("-inf"))  # (B, H, T, T)
            return bias
        if not padded:
            return None
        return attention_mask[:, None, None, :].bool()  # (B, 1, 1, T)

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """Token embeddings (rescaled by token dropout when configured) plus absolute
        positions, the optional embedding LayerNorm, padding zeroed (as ESM), then dropout."""
        config = self.config
        T = input_ids.size(1)
        x = self.embed_tokens(input_ids)  # (B, T, C)
        if config.token_dropout:
            is_mask = input_ids == config.mask_id  # (B, T)
            x = x.masked_fill(is_mask[:, :, None], 0.0)
            lengths = attention_mask.sum(-1) if attention_mask is not None else T
            observed = is_mask.sum(-1).to(x.dtype) / lengths  # (B,)
            x = x * (1 - config.token_dropout_ratio) / (1 - observed)[:, None, None]
        if config.position == "learned":
            start = config.position_offset
            x = x + self.embed_positions.weight[start : start + T]
        elif config.position == "sinusoidal":
            x = x + self.position_table[:T].to(x.dtype)
        x = self.embedding_norm(x)
        if attention_mask is not None:
            x = x * attention_mask[:, :, None].to(x.dtype)
        return self.dropout(x)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> EncoderOutput:
        """Encode token ids (B, T); ``attention_mask`` (B, T) is 1 for tokens, 0 for padding."""
        T = input_ids.size(1)
        config = self.config
        if config.max_length < T and config.position in ("learned", "sinusoidal"):
            raise InputError(
                f"a batch of {T} tokens is longer than the model's max_length = "
                f"{config.max_length} ({config.position} positions)",
                fix="cut sequences into windows of at most max_length tokens, or build a model "
                "with a larger max_length",
            )
        x = self.embed(input_ids, attention_mask)  # (B, T, C)
        rotary = self.rotary(T, x.dtype) if config.position == "rotary" else None
        attn_mask = self.attention_mask_for(attention_mask, T, x.dtype)

        hidden_states = [x] if output_hidden_states else None
        attentions = [] if output_attentions else None
        use_checkpoint = config.gradient_checkpointing and self.training
        for layer in self.layers:
            if use_checkpoint:
                x, weights = checkpoint(
                    layer, x, attn_mask, rotary, output_attentions, use_reentrant=False
                )
            else:
                x, weights = layer(x, attn_mask, rotary, output_attentions)
            if hidden_states is not None:
                hidden_states.append(x)
            if attentions is not None:
                attentions.append(weights)
        x = self.final_norm(x)
        if hidden_states is not None:
            hidden_states[-1] = x
        return EncoderOutput(
            last_hidden_state=x,
            hidden_states=tuple(hidden_states) if hidden_states is not None else None,
            attentions=tuple(attentions) if attentions is not None else None,
        )
