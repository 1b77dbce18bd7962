"""Small helpers shared by test modules (fixtures live in conftest.py)."""

from __future__ import annotations


def reset_accelerate_state() -> None:
    """Drop Accelerate's process-wide singletons, so the next Accelerator is built afresh."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def run_torchrun(arguments: list[str], *, env: dict[str, str] | None = None, timeout: float = 170):
    """Run ``torchrun --standalone --nproc_per_node 2 ARGUMENTS``: two real gloo ranks on a
    rendezvous port torchrun picks itself. A failure shows the ranks' own output."""
    import subprocess
    import sys
    from pathlib import Path

    torchrun = Path(sys.executable).with_name("torchrun")
    result = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node", "2", *arguments],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, (
        f"torchrun exited {result.returncode}\n--- stdout\n{result.stdout[-4000:]}"
        f"\n--- stderr\n{result.stderr[-6000:]}"
    )
    return result


def save_legacy_model_directory(model, directory, task: dict | None = None):
    """A model directory as written before the head held its decision fields: ``config.json``
    and the weights from ``save_pretrained`` (its head section without ``threshold`` and
    ``rc_average``), plus the ``task.json`` that ``finetune`` wrote beside them. ``task``
    defaults to the model's own task."""
    import json
    from pathlib import Path

    directory = Path(directory)
    model.save_pretrained(directory)
    config = json.loads((directory / "config.json").read_text())
    for name in ("threshold", "rc_average"):
        config["head"].pop(name, None)
    (directory / "config.json").write_text(json.dumps(config))
    (directory / "task.json").write_text(json.dumps(task or model.task.to_dict()))
    return directory


def tiny_binary_classifier(tokenizer_spec: str = "dna"):
    """A tiny untrained binary classifier (labels '0', '1') with its tokenizer, the same
    weights every call: for tests of the commands' behaviour, not of the model's quality."""
    import torch

    from biotransformer.config import ModelConfig
    from biotransformer.heads import SequenceClassifier
    from biotransformer.tokenizers import Tokenizer

    tokenizer = Tokenizer.from_spec(tokenizer_spec)
    torch.manual_seed(0)
    config = ModelConfig.from_preset(
        "tiny", vocab_size=tokenizer.vocab_size, pad_id=tokenizer.pad_id
    )
    model = SequenceClassifier(config, label2id={"0": 0, "1": 1})
    model.tokenizer = tokenizer
    return model
