"""Import and export ESM-2, Nucleotide Transformer and ESM C checkpoints held in local files.

``from_hf`` reads HuggingFace ``EsmForMaskedLM`` / ``EsmForSequenceClassification`` /
``EsmForTokenClassification`` and their ESM C counterparts ``EsmcFor...`` (a directory or a
loaded model), ``from_fair_esm`` a fair-esm ESM-2 ``.pt`` file, and ``to_hf`` writes a
directory that ``transformers`` loads with its own ESM or ESM C classes (ESM C for a model
with ``qk_norm``). Weights map one to one: separate query, key and value projections become
our fused ``qkv``, ESM C's gate and up projections our fused SwiGLU ``ffn.up``, and every
other tensor keeps its shape. Nothing here touches the network:
``hub`` finds Hub checkpoints in the HuggingFace cache and hands their directories here.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import pickle
from pathlib import Path
from typing import Any

import torch

from biotransformer.atomic import atomic_directory, json_text
from biotransformer.config import ModelConfig
from biotransformer.errors import ConfigError, ModelDirectoryError
from biotransformer.heads import (
    MODEL_FILES,
    BioTransformerModel,
    LabelHeadConfig,
    MaskedLM,
    SequenceClassifier,
    TokenClassifier,
)
from biotransformer.tokenizers import ESM2_TOKENS, Tokenizer

logger = logging.getLogger(__name__)

HF_VOCAB_FILE = "vocab.txt"
TOKENIZER_COPY = "biotransformer_tokenizer.json"
HF_FILES = ("generation_config.json", HF_VOCAB_FILE, TOKENIZER_COPY)  # besides MODEL_FILES
ESM_MASK_RATIO_TRAIN = 0.15 * 0.8  # ESM's <mask> share in pretraining, used by token dropout
CONTACT_KEY = "esm.contact_head.regression.weight"
HEAD_SUFFIXES = {
    MaskedLM: "ForMaskedLM",
    SequenceClassifier: "ForSequenceClassification",
    TokenClassifier: "ForTokenClassification",
}
HF_CLASSES = {
    f"{family}{suffix}": cls for family in ("Esm", "Esmc") for cls, suffix in HEAD_SUFFIXES.items()
}
MODEL_TYPES = ("esm", "esmc")
ESMC_NORM_EPS = 1e-5  # ESM C's LayerNorms keep torch's default eps


def require_transformers() -> Any:
    """The ``transformers`` module, or a ConfigError saying how to install it."""
    try:
        import transformers
    except ImportError:
        raise ConfigError(
            "importing and exporting HuggingFace checkpoints needs transformers: pip install "
            '"biotransformer[hf]"'
        ) from None
    return transformers


# ---------------------------------------------------------------------------------------------
# Weight names
# ---------------------------------------------------------------------------------------------


def _layer_names(config: ModelConfig, prefix: str, names: dict[str, str]) -> dict[str, list[str]]:
    """Our key -> the checkpoint keys it is made of, for every block; ``names`` maps our
    per-block module names (``attn.q``, ``attn.k``... for the fused qkv) onto theirs."""
    mapping: dict[str, list[str]] = {}
    for i in range(config.num_layers):
        ours, theirs = f"encoder.layers.{i}.", f"{prefix}{i}."
        for kind in ("weight", "bias"):
            mapping[f"{ours}attn.qkv.{kind}"] = [
                f"{theirs}{names[part]}.{kind}" for part in ("attn.q", "attn.k", "attn.v")
            ]
            for module in ("attn.out", "attn_norm", "ffn_norm", "ffn.up", "ffn.down"):
                mapping[f"{ours}{module}.{kind}"] = [f"{theirs}{names[module]}.{kind}"]
    return mapping


HF_BLOCK = {
    "attn.q": "attention.self.query",
    "attn.k": "attention.self.key",
    "attn.v": "attention.self.value",
    "attn.out": "attention.output.dense",
    "attn_norm": "attention.LayerNorm",
    "ffn_norm": "LayerNorm",
    "ffn.up": "intermediate.dense",
    "ffn.down": "output.dense",
}
FAIR_ESM_BLOCK = {
    "attn.q": "self_attn.q_proj",
    "attn.k": "self_attn.k_proj",
    "attn.v": "self_attn.v_proj",
    "attn.out": "self_attn.out_proj",
    "attn_norm": "self_attn_layer_norm",
    "ffn_norm": "final_layer_norm",
    "ffn.up": "fc1",
    "ffn.down": "fc2",
}


ESMC_BLOCK = {
    "attn.q": "self_attn.q_proj",
    "attn.k": "self_attn.k_proj",
    "attn.v": "self_attn.v_proj",
    "attn.out": "self_attn.o_proj",
    "attn.q_norm": "self_attn.q_norm",
    "attn.k_norm": "self_attn.k_norm",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "ffn.gate": "mlp.gate_proj",
    "ffn.value": "mlp.up_proj",
    "ffn.down": "mlp.down_proj",
}


def is_esmc(config: ModelConfig) -> bool:
    """Whether ``config`` is of the ESM C family (q/k norms), exported as ``EsmcFor...``."""
    return config.qk_norm


def esmc_names(model: BioTransformerModel) -> dict[str, list[str]]:
    """Our state-dict key -> the HuggingFace ESM C keys it is made of: ESM C has no biases
    but in its block LayerNorms and its heads."""
    config = model.config
    mapping = {
        "encoder.embed_tokens.weight": ["esmc.embed_tokens.weight"],
        "encoder.final_norm.weight": ["esmc.norm.weight"],
    }
    for i in range(config.num_layers):
        ours, theirs = f"encoder.layers.{i}.", f"esmc.layers.{i}."
        block = {f"{ours}{k}.weight": [f"{theirs}{v}.weight"] for k, v in ESMC_BLOCK.items()}
        block[f"{ours}attn.qkv.weight"] = [
            *block.pop(f"{ours}attn.q.weight"),
            *block.pop(f"{ours}attn.k.weight"),
            *block.pop(f"{ours}attn.v.weight"),
        ]
        block[f"{ours}ffn.up.weight"] = [
            *block.pop(f"{ours}ffn.gate.weight"),
            *block.pop(f"{ours}ffn.value.weight"),
        ]
        for module in ("attn_norm", "ffn_norm"):
            block[f"{ours}{module}.bias"] = [f"{theirs}{ESMC_BLOCK[module]}.bias"]
        mapping.update(block)
    heads = {
        MaskedLM: {
            "lm_head.dense": "lm_head.dense",
            "lm_head.norm": "lm_head.layer_norm",
            "lm_head.decoder.weight": "lm_head.decoder.weight",
            "lm_head.bias": "lm_head.decoder.bias",
        },
        SequenceClassifier: {"dense": "classifier.dense", "classifier": "classifier.out_proj"},
        TokenClassifier: {"classifier": "score"},
    }[type(model)]
    for ours, theirs in heads.items():
        if ours.endswith(("weight", "bias")):
            mapping[ours] = [theirs]
        else:
            for kind in ("weight", "bias"):
                mapping[f"{ours}.{kind}"] = [f"{theirs}.{kind}"]
    return mapping


def hf_names(model: BioTransformerModel) -> dict[str, list[str]]:
    """Our state-dict key -> the HuggingFace ESM (or ESM C) keys it is made of (several for
    qkv, and for ESM C's SwiGLU)."""
    config = model.config
    if is_esmc(config):
        return esmc_names(model)
    mapping = {"encoder.embed_tokens.weight": ["esm.embeddings.word_embeddings.weight"]}
    if config.position == "learned":
        mapping["encoder.embed_positions.weight"] = ["esm.embeddings.position_embeddings.weight"]
    for kind in ("weight", "bias"):
        if config.embedding_layer_norm:
            mapping[f"encoder.embedding_norm.{kind}"] = [f"esm.embeddings.layer_norm.{kind}"]
        mapping[f"encoder.final_norm.{kind}"] = [f"esm.encoder.emb_layer_norm_after.{kind}"]
    mapping.update(_layer_names(config, "esm.encoder.layer.", HF_BLOCK))
    heads = {
        MaskedLM: {"lm_head.dense": "lm_head.dense", "lm_head.norm": "lm_head.layer_norm"},
        SequenceClassifier: {"dense": "classifier.dense", "classifier": "classifier.out_proj"},
        TokenClassifier: {"classifier": "classifier"},
    }[type(model)]
    for ours, theirs in heads.items():
        for kind in ("weight", "bias"):
            mapping[f"{ours}.{kind}"] = [f"{theirs}.{kind}"]
    if isinstance(model, MaskedLM):
        mapping["lm_head.bias"] = ["lm_head.bias"]
        if not config.tie_embeddings:
            mapping["lm_head.decoder.weight"] = ["lm_head.decoder.weight"]
        mapping.update(_contact_names(model, "esm.contact_head."))
    return mapping


def _contact_names(model: MaskedLM, prefix: str) -> dict[str, list[str]]:
    """The contact head's keys, when ``model`` has one."""
    if not model.head_config.contact_head:
        return {}
    return {f"contact_head.regression.{k}": [f"{prefix}regression.{k}"] for k in ("weight", "bias")}


def fair_esm_names(model: MaskedLM) -> dict[str, list[str]]:
    """Our ``MaskedLM`` key -> fair-esm ``ESM2`` keys (its LM head is tied to the embedding)."""
    config = model.config
    mapping = {
        "encoder.embed_tokens.weight": ["embed_tokens.weight"],
        "lm_head.bias": ["lm_head.bias"],
    }
    for kind in ("weight", "bias"):
        mapping[f"encoder.final_norm.{kind}"] = [f"emb_layer_norm_after.{kind}"]
        mapping[f"lm_head.dense.{kind}"] = [f"lm_head.dense.{kind}"]
        mapping[f"lm_head.norm.{kind}"] = [f"lm_head.layer_norm.{kind}"]
    mapping.update(_layer_names(config, "layers.", FAIR_ESM_BLOCK))
    mapping.update(_contact_names(model, "contact_head."))
    return mapping


def _load_mapped(
    model: BioTransformerModel, state: dict[str, torch.Tensor], mapping: dict[str, list[str]]
) -> list[str]:
    """Fill ``model`` from ``state`` through ``mapping``; every model weight must be found.
    Returns the checkpoint keys that were not used."""
    missing = sorted({key for keys in mapping.values() for key in keys} - set(state))
    if missing:
        raise ModelDirectoryError(f"the checkpoint lacks {missing[:4]} ({len(missing)} missing)")
    ours = {k for k in model.state_dict() if k not in model.tied_weight_keys}
    unmapped = sorted(ours - set(mapping))
    if unmapped:
        raise ConfigError(f"no checkpoint weight maps onto {unmapped}")
    tensors = {key: torch.cat([state[k] for k in keys]) for key, keys in mapping.items()}
    model.load_state_dict(tensors, strict=False)
    used = {k for keys in mapping.values() for k in keys}
    return sorted(set(state) - used)


# ---------------------------------------------------------------------------------------------
# HuggingFace -> ours
# ---------------------------------------------------------------------------------------------


def config_from_hf(hf_config: Any) -> ModelConfig:
    """The ModelConfig that computes what a HuggingFace ``EsmConfig`` (or ``EsmcConfig``)
    computes."""
    if hf_config.model_type == "esmc":
        return config_from_esmc(hf_config)
    if getattr(hf_config, "is_folding_model", False) or getattr(hf_config, "is_decoder", False):
        raise ConfigError("only ESM encoders import (not ESMFold, not decoders)")
    kind = hf_config.position_embedding_type
    if kind not in ("rotary", "absolute"):
        raise ConfigError(f"ESM position_embedding_type {kind!r} has no equivalent here")
    pad_id = hf_config.pad_token_id
    if pad_id is None:
        raise ConfigError("the ESM config has no pad_token_id")
    absolute = kind == "absolute"
    offset = pad_id + 1 if absolute else 0
    return ModelConfig(
        vocab_size=hf_config.vocab_size,
        hidden_size=hf_config.hidden_size,
        num_layers=hf_config.num_hidden_layers,
        num_heads=hf_config.num_attention_heads,
        ffn_size=hf_config.intermediate_size,
        dropout=float(hf_config.hidden_dropout_prob or 0.0),
        attention_dropout=float(hf_config.attention_probs_dropout_prob or 0.0),
        max_length=hf_config.max_position_embeddings - offset,
        position="learned" if absolute else "rotary",
        layer_norm_eps=float(hf_config.layer_norm_eps),
        tie_embeddings=bool(hf_config.tie_word_embeddings),
        pad_id=pad_id,
        rotary_base=float(hf_config.rope_theta),
        initializer_range=float(hf_config.initializer_range),
        mask_id=hf_config.mask_token_id,
        token_dropout=bool(hf_config.token_dropout),
        token_dropout_ratio=ESM_MASK_RATIO_TRAIN,
        embedding_layer_norm=bool(hf_config.emb_layer_norm_before),
        position_offset=offset,
    )


def config_from_esmc(hf_config: Any) -> ModelConfig:
    """The ModelConfig that computes what a HuggingFace ``EsmcConfig`` computes: pre-LN
    blocks with q/k LayerNorms, rotary positions, SwiGLU, bias-free linears, each sublayer's
    output divided by sqrt(layers / 36), a final LayerNorm without bias, an untied decoder."""
    rope = dict(hf_config.rope_parameters or {})
    problems = {
        "rope_parameters.rope_type": rope.get("rope_type", "default") != "default",
        "hidden_act": hf_config.hidden_act != "silu",
        "attention_bias": bool(hf_config.attention_bias),
        "mlp_bias": bool(hf_config.mlp_bias),
        "head_dim": hf_config.head_dim * hf_config.num_attention_heads != hf_config.hidden_size,
        "tie_word_embeddings": bool(hf_config.tie_word_embeddings),
        "pad_token_id": hf_config.pad_token_id is None,
    }
    for name, problem in problems.items():
        if problem:
            raise ConfigError(
                f"ESM C config {name} = {getattr(hf_config, name.split('.')[0])!r} has no "
                "equivalent here"
            )
    return ModelConfig(
        vocab_size=hf_config.vocab_size,
        hidden_size=hf_config.hidden_size,
        num_layers=hf_config.num_hidden_layers,
        num_heads=hf_config.num_attention_heads,
        ffn_size=hf_config.intermediate_size,
        attention_dropout=float(hf_config.attention_dropout or 0.0),
        max_length=hf_config.max_position_embeddings,
        position="rotary",
        activation="swiglu",
        layer_norm_eps=ESMC_NORM_EPS,
        tie_embeddings=False,
        pad_id=hf_config.pad_token_id,
        bias=False,
        rotary_base=float(rope.get("rope_theta", 10000.0)),
        initializer_range=float(hf_config.initializer_range),
        mask_id=hf_config.mask_token_id,
        qk_norm=True,
        residual_scale=esmc_residual_scale(hf_config.num_hidden_layers),
        final_norm_bias=False,
    )


def esmc_residual_scale(num_layers: int) -> float:
    """ESM C's residual scaling (from ESM3): each sublayer's output is divided by this."""
    return math.sqrt(num_layers / 36)


def from_hf(
    source: str | os.PathLike[str] | Any, *, tokenizer: Tokenizer | None = None
) -> BioTransformerModel:
    """Our model equal to a HuggingFace ESM or ESM C model: a directory or an ``EsmFor...`` /
    ``EsmcFor...`` instance.

    The tokenizer comes from ``tokenizer``, else the directory (our copy, or ``vocab.txt``:
    ESM-2's alphabet, or a Nucleotide Transformer 6-mer vocabulary), else ESM-2's alphabet
    when the vocabulary has its 33 tokens, or ESM C's for an ESM C model; else the model has
    none (a warning says so).
    """
    transformers = require_transformers()
    directory = None
    if isinstance(source, (str, os.PathLike)):
        directory = Path(source)
        hf_model, name, missing = _read_hf_directory(transformers, directory)
    else:
        hf_model, missing = source, []
        name = type(hf_model).__name__
        if name not in HF_CLASSES:
            raise ConfigError(f"{name} is not one of {list(HF_CLASSES)}")
    hf_config = hf_model.config
    config = config_from_hf(hf_config)
    model_class = HF_CLASSES[name]
    state = {k: v.detach().cpu() for k, v in hf_model.state_dict().items()}
    if model_class is MaskedLM:
        model: BioTransformerModel = MaskedLM(
            config, contact_head=_has_contact_head(state, missing, CONTACT_KEY)
        )
    else:
        model = model_class(config, _label_head(hf_config, model_class))
    unused = _load_mapped(model, state, hf_names(model))
    if unused:
        logger.info("checkpoint weights not imported: %s", unused)
    model.tokenizer = tokenizer or _hf_tokenizer(directory, config)
    if model.tokenizer is None:
        logger.warning("no tokenizer found for this checkpoint: attach one as model.tokenizer")
    return model.eval()


HF_FIX = (
    "pass a local HuggingFace ESM or ESM C directory (config.json with model_type 'esm' or "
    "'esmc' and model.safetensors), as transformers' save_pretrained or "
    "'biotransformer convert --to hf' writes it"
)


def _has_contact_head(state: dict[str, torch.Tensor], missing: list[str], key: str) -> bool:
    """Whether a checkpoint holds a trained contact head: its regression weight is stored
    (not initialised by transformers for want of one) and not all zero (what ``to_hf`` writes
    for a model without one)."""
    return key in state and key not in missing and bool(state[key].any())


def _read_hf_directory(transformers: Any, directory: Path) -> tuple[Any, str, list[str]]:
    """The ``EsmFor...`` model saved in ``directory``, its class name and the weights the
    directory lacked; a missing or malformed file is a ``ModelDirectoryError`` naming the
    directory."""
    if not directory.is_dir():
        raise ModelDirectoryError(f"{directory}: not a directory. Fix: {HF_FIX}")
    if not (directory / "config.json").is_file():
        raise ModelDirectoryError(f"{directory / 'config.json'}: not found. Fix: {HF_FIX}")
    try:
        hf_config = transformers.AutoConfig.from_pretrained(directory)
    except Exception as error:  # transformers raises OSError, ValueError, KeyError...
        raise ModelDirectoryError(
            f"{directory / 'config.json'}: cannot be read by transformers "
            f"({type(error).__name__}: {_first_line(error)}). Fix: {HF_FIX}"
        ) from None
    if getattr(hf_config, "model_type", None) not in MODEL_TYPES:
        raise ModelDirectoryError(
            f"{directory / 'config.json'}: model_type {hf_config.model_type!r} is not one of "
            f"{list(MODEL_TYPES)}; only ESM-2, Nucleotide Transformer and ESM C checkpoints "
            f"import. Fix: {HF_FIX}"
        )
    default = "EsmcForMaskedLM" if hf_config.model_type == "esmc" else "EsmForMaskedLM"
    architectures = getattr(hf_config, "architectures", None) or [default]
    name = architectures[0]
    if name not in HF_CLASSES:
        raise ConfigError(f"{directory}: {name} is not one of {list(HF_CLASSES)}")
    try:
        model, info = getattr(transformers, name).from_pretrained(
            directory, output_loading_info=True
        )
        return model, name, list(info["missing_keys"])
    except Exception as error:  # missing or truncated weights, shapes unlike config.json
        raise ModelDirectoryError(
            f"{directory}: its weights cannot be loaded ({type(error).__name__}: "
            f"{_first_line(error)}). Fix: {HF_FIX}"
        ) from None


def _first_line(error: BaseException) -> str:
    """The first line of an exception's message (library messages run to many lines)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _label_head(hf_config: Any, model_class: type) -> LabelHeadConfig:
    multi_label = hf_config.problem_type == "multi_label_classification"
    if hf_config.problem_type == "regression" or (hf_config.num_labels < 2 and not multi_label):
        raise ConfigError("ESM regression heads do not import: import the encoder as MaskedLM")
    label2id = {str(k): int(v) for k, v in hf_config.label2id.items()}
    if sorted(label2id.values()) != list(range(hf_config.num_labels)):
        label2id = None
    return LabelHeadConfig(
        num_labels=hf_config.num_labels,
        problem_type="multi_label" if multi_label else "single_label",
        label2id=label2id,
        classifier="esm" if model_class is SequenceClassifier else "linear",
    )


def _hf_tokenizer(directory: Path | None, config: ModelConfig) -> Tokenizer | None:
    if directory is not None and (directory / TOKENIZER_COPY).is_file():
        return Tokenizer.load(directory / TOKENIZER_COPY)
    if directory is not None and (directory / HF_VOCAB_FILE).is_file():
        tokens = (directory / HF_VOCAB_FILE).read_text().split()
        return tokenizer_from_vocab(tokens)
    if is_esmc(config):
        return esmc_tokenizer(config.vocab_size)
    if config.vocab_size == len(ESM2_TOKENS) and config.pad_id == ESM2_TOKENS.index("<pad>"):
        return Tokenizer.from_spec("protein")
    return None


def esmc_tokenizer(vocab_size: int) -> Tokenizer:
    """ESM C's alphabet with its ids: ESM-2's 33 tokens with the chain break ``|`` in place of
    ``<null_1>``, padded to the model's ``vocab_size`` with unused tokens."""
    tokens = ["|" if token == "<null_1>" else token for token in ESM2_TOKENS]
    tokens += [f"<unused_{i}>" for i in range(len(tokens), vocab_size)]
    return Tokenizer.from_spec("protein", vocabulary=tokens)


def tokenizer_from_vocab(tokens: list[str]) -> Tokenizer:
    """Our tokenizer for a checkpoint's ``vocab.txt``: ESM-2's alphabet, or a Nucleotide
    Transformer vocabulary (k-mers of ACGT plus single letters, read as non-overlapping
    k-mers with single-letter fallback) with the checkpoint's own ids."""
    if tuple(tokens) == ESM2_TOKENS:
        return Tokenizer.from_spec("protein")
    kmers = [t for t in tokens if not t.startswith("<") and len(t) > 1]
    k = len(kmers[0]) if kmers else 0
    if not kmers or len(kmers) != 4**k or any(len(t) != k or set(t) - set("ACGT") for t in kmers):
        raise ConfigError(
            f"{HF_VOCAB_FILE} is neither ESM-2's alphabet nor a Nucleotide Transformer k-mer "
            "vocabulary: pass tokenizer=... explicitly"
        )
    spec = f"dna-kmer:k={k},stride={k},ambiguous=fallback,eos=false"
    return Tokenizer.from_spec(spec, vocabulary=tokens)


# ---------------------------------------------------------------------------------------------
# fair-esm -> ours
# ---------------------------------------------------------------------------------------------


def from_fair_esm(path: str | os.PathLike[str]) -> MaskedLM:
    """Our ``MaskedLM`` equal to a fair-esm ESM-2 checkpoint file (``esm2_*.pt``).

    The file is read with ``weights_only=True``, allowing only ``argparse.Namespace`` (the
    type of fair-esm's stored ``cfg``) beyond tensors and containers.
    """
    path = Path(path)
    fix = (
        "pass an ESM-2 checkpoint file (esm2_*.pt) as fair-esm saved it; if it was cut short, "
        "download it again"
    )
    if not path.is_file():
        raise ModelDirectoryError(f"{path}: not found or not a file. Fix: {fix}")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ModelDirectoryError(
            f"{path}: refused by torch.load(weights_only=True): {_first_line(error)}. Only "
            f"ESM-2 checkpoints storing their cfg as argparse.Namespace or a dict are read. "
            f"Fix: {fix}"
        ) from None
    except Exception as error:  # truncated, not a zip, bytes the legacy unpickler trips on
        raise ModelDirectoryError(
            f"{path}: not a readable PyTorch checkpoint ({type(error).__name__}: "
            f"{_first_line(error)}). Fix: {fix}"
        ) from None
    try:
        cfg = data["cfg"]["model"]
        state = data["model"]
        cfg = vars(cfg) if isinstance(cfg, argparse.Namespace) else dict(cfg)
        if not isinstance(state, dict) or not all(
            isinstance(v, torch.Tensor) for v in state.values()
        ):
            raise TypeError("'model' is not a mapping of names to tensors")
        state = {_strip_fair_esm_prefix(k): v for k, v in state.items()}
        width = cfg["encoder_embed_dim"]
        config = ModelConfig(
            vocab_size=len(ESM2_TOKENS),
            hidden_size=width,
            num_layers=cfg["encoder_layers"],
            num_heads=cfg["encoder_attention_heads"],
            ffn_size=4 * width,
            max_length=1026,
            position="rotary",
            pad_id=ESM2_TOKENS.index("<pad>"),
            mask_id=ESM2_TOKENS.index("<mask>"),
            token_dropout=bool(cfg["token_dropout"]),
            token_dropout_ratio=ESM_MASK_RATIO_TRAIN,
        )
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as error:
        what = f"no {error}" if isinstance(error, KeyError) else _first_line(error)
        raise ModelDirectoryError(
            f"{path}: not a fair-esm ESM-2 checkpoint (expected cfg.model and model "
            f"entries: {what}). Fix: {fix}"
        ) from None
    model = MaskedLM(
        config, contact_head=_has_contact_head(state, [], "contact_head.regression.weight")
    )
    try:
        unused = _load_mapped(model, state, fair_esm_names(model))
    except (ModelDirectoryError, ConfigError, RuntimeError) as error:
        raise ModelDirectoryError(f"{path}: {_first_line(error)}. Fix: {fix}") from None
    if unused:
        logger.info("checkpoint weights not imported: %s", unused)
    model.tokenizer = Tokenizer.from_spec("protein")
    return model.eval()


def _strip_fair_esm_prefix(key: str) -> str:
    for prefix in ("encoder.sentence_encoder.", "encoder."):
        if key.startswith(prefix):
            return key[len(prefix) :]
    return key


# ---------------------------------------------------------------------------------------------
# ours -> HuggingFace
# ---------------------------------------------------------------------------------------------


def hf_blocker(model: BioTransformerModel) -> str | None:
    """Why ``model`` cannot be written as a HuggingFace ESM model (ESM C with ``qk_norm``),
    or None if it can."""
    config = model.config
    if is_esmc(config):
        blockers = {
            "position": config.position != "rotary",
            "activation": config.activation != "swiglu",
            "bias": config.bias,
            "final_norm_bias": config.final_norm_bias,
            "residual_scale": not math.isclose(
                config.residual_scale, esmc_residual_scale(config.num_layers)
            ),
            "layer_norm_eps": config.layer_norm_eps != ESMC_NORM_EPS,
            "token_dropout": config.token_dropout,
            "embedding_layer_norm": config.embedding_layer_norm,
            "tie_embeddings": isinstance(model, MaskedLM) and config.tie_embeddings,
        }
    else:
        blockers = {
            "position": config.position not in ("rotary", "learned"),
            "activation": config.activation != "gelu",
            "bias": not config.bias,
            "final_norm_bias": not config.final_norm_bias,
            "residual_scale": config.residual_scale != 1.0,
        }
    blockers |= {"norm": config.norm != "pre", "pad_id": config.pad_id is None}
    for option, blocked in blockers.items():
        if blocked:
            return f"ModelConfig.{option} = {getattr(config, option)!r}"
    if type(model) not in HF_CLASSES.values():
        return f"the {type(model).__name__} head"
    if isinstance(model, SequenceClassifier):
        head = model.head_config
        if head.classifier != "esm" or head.pooling != "cls":
            return (
                f"classifier = {head.classifier!r} with pooling = {head.pooling!r} (ESM's head is "
                "classifier='esm' on pooling='cls': fine-tune with --classifier esm --pooling cls)"
            )
    return None


def config_to_hf(model: BioTransformerModel) -> Any:
    """The HuggingFace ``EsmConfig`` (``EsmcConfig`` with ``qk_norm``) of ``model`` (see
    ``hf_blocker`` for what cannot be)."""
    transformers = require_transformers()
    config = model.config
    learned = config.position == "learned"
    extra: dict[str, Any] = {}
    if isinstance(model, (SequenceClassifier, TokenClassifier)):
        head = model.head_config
        label2id = head.label2id or {f"LABEL_{i}": i for i in range(head.num_labels or 0)}
        extra = {
            "label2id": label2id,
            "id2label": {i: label for label, i in label2id.items()},
            "problem_type": "multi_label_classification"
            if head.problem_type == "multi_label"
            else "single_label_classification",
        }
    family = "Esmc" if is_esmc(config) else "Esm"
    extra["architectures"] = [f"{family}{HEAD_SUFFIXES[type(model)]}"]
    shared = {
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "intermediate_size": config.ffn_size,
        "initializer_range": config.initializer_range,
        "pad_token_id": config.pad_id,
        "mask_token_id": config.mask_id,
        **extra,
    }
    if is_esmc(config):
        return transformers.EsmcConfig(
            attention_dropout=config.attention_dropout,
            max_position_embeddings=config.max_length,
            rope_parameters={"rope_type": "default", "rope_theta": config.rotary_base},
            tie_word_embeddings=False,
            **shared,
        )
    return transformers.EsmConfig(
        hidden_dropout_prob=config.dropout,
        attention_probs_dropout_prob=config.attention_dropout,
        max_position_embeddings=config.max_length + (config.pad_id + 1 if learned else 0),
        position_embedding_type="absolute" if learned else "rotary",
        rope_theta=config.rotary_base,
        layer_norm_eps=config.layer_norm_eps,
        token_dropout=config.token_dropout,
        emb_layer_norm_before=config.embedding_layer_norm,
        tie_word_embeddings=config.tie_embeddings,
        **shared,
    )


def hf_state_dict(model: BioTransformerModel) -> dict[str, torch.Tensor]:
    """Our weights under HuggingFace ESM names (qkv split, learned positions re-offset)."""
    config = model.config
    state = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for ours, theirs in hf_names(model).items():
        for key, part in zip(theirs, state[ours].chunk(len(theirs)), strict=True):
            out[key] = part.detach().cpu().clone()
    if config.position == "learned" and config.position_offset != config.pad_id + 1:
        table = state["encoder.embed_positions.weight"][config.position_offset :]
        shifted = torch.zeros(config.pad_id + 1 + config.max_length, config.hidden_size)
        shifted[config.pad_id + 1 :] = table
        out["esm.embeddings.position_embeddings.weight"] = shifted
    if isinstance(model, MaskedLM) and config.tie_embeddings:
        out["lm_head.decoder.weight"] = out["esm.embeddings.word_embeddings.weight"]
    return out


def to_hf(model: BioTransformerModel, directory: str | os.PathLike[str]) -> Path:
    """Write ``model`` as a HuggingFace ESM directory (ESM C with ``qk_norm``: ``config.json``,
    weights, ``vocab.txt`` and our tokenizer as ``biotransformer_tokenizer.json``), loadable by
    ``transformers`` alone. Raises ``ConfigError`` naming the option ESM cannot express."""
    transformers = require_transformers()
    blocker = hf_blocker(model)
    if blocker is not None:
        raise ConfigError(f"cannot export to HuggingFace ESM: {blocker} has no ESM equivalent")
    if (
        model.config.token_dropout
        and abs(model.config.token_dropout_ratio - ESM_MASK_RATIO_TRAIN) > 1e-9
    ):
        raise ConfigError(
            f"cannot export to HuggingFace ESM: ModelConfig.token_dropout_ratio = "
            f"{model.config.token_dropout_ratio} (ESM fixes it at {ESM_MASK_RATIO_TRAIN})"
        )
    hf_config = config_to_hf(model)
    hf_model = getattr(transformers, hf_config.architectures[0])(hf_config)
    contact_head = getattr(getattr(hf_model, "esm", None), "contact_head", None)
    if contact_head is not None:  # zero when ours has none: imports as none
        torch.nn.init.zeros_(contact_head.regression.weight)
        torch.nn.init.zeros_(contact_head.regression.bias)
    missing, unexpected = hf_model.load_state_dict(hf_state_dict(model), strict=False)
    missing = [k for k in missing if not k.endswith("inv_freq") and "contact_head" not in k]
    if missing or unexpected:
        raise ConfigError(
            f"HF ESM weights do not match: missing {missing}, unexpected {unexpected}"
        )
    tokenizer = model.tokenizer
    with atomic_directory(directory, replaces=(*MODEL_FILES, *HF_FILES)) as staging:
        hf_model.save_pretrained(staging)
        if tokenizer is not None:
            (staging / HF_VOCAB_FILE).write_text("\n".join(tokenizer.tokens) + "\n")
            (staging / TOKENIZER_COPY).write_text(json_text(tokenizer.to_dict(), indent=1))
    return Path(directory)
