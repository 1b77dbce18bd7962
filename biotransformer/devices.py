"""Where and in what precision a model runs: one resolver for ``--device`` and ``--dtype``.

``--device auto`` takes the GPU when there is one (CUDA, else Apple MPS), else the CPU; under a
launcher (``torchrun``, ``accelerate launch``) each rank takes the GPU of its ``LOCAL_RANK``.
``--dtype auto`` is bf16 on a CUDA GPU that supports it, fp16 on an older CUDA GPU, and fp32 on
the CPU and on MPS. A precision the device cannot run (fp16 on the CPU, bf16 on a GPU without
it) and a device that is not there are refused before any work, naming the flag.

Inference casts the weights (as ``torch_dtype`` does in ``transformers``): half the memory and
the device's fast kernels. Buffers stay float32 (rotary frequencies, regression target
scaling), so positions keep their precision; outputs are handed back as float32 numpy arrays.

On the CPU, oneDNN keeps a compiled kernel for every input shape it meets (up to 1,024 by
default), and inference meets a new shape in nearly every token-budget batch: on 200k short
proteins ``embed``'s peak RSS was 871 MiB, against 569 MiB at 20k records. The inference
commands therefore start with that cache off (``keep_no_cpu_kernel_cache``): 488 MiB at 200k
records, at 4% of the speed (80.7 s against 77.7 s). ``ONEDNN_PRIMITIVE_CACHE_CAPACITY`` set
by the user is kept.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from biotransformer.constants import DEVICE_NAMES, DTYPE_NAMES
from biotransformer.errors import ConfigError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def keep_no_cpu_kernel_cache() -> None:
    """Turn oneDNN's per-shape kernel cache off for this process, unless the user set its
    size; it takes effect when called before the first oneDNN kernel runs (a command's
    start), and does nothing after."""
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "0")


@dataclass(frozen=True)
class Placement:
    """A resolved ``device`` and ``dtype`` with the names they were asked by."""

    device: torch.device
    dtype: torch.dtype

    @property
    def dtype_name(self) -> str:
        return next(name for name, value in DTYPES.items() if value == self.dtype)

    def describe(self) -> str:
        return f"{self.device} ({self.dtype_name})"


def _local_rank() -> int | None:
    """This process's rank on its node under a launcher, or None for a single process."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    return int(os.environ.get("LOCAL_RANK", "0"))


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()


def resolve_device(name: str = "auto") -> torch.device:
    """The ``torch.device`` that ``--device NAME`` asks for, checked to exist."""
    name = name.strip().lower()
    rank = _local_rank()
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif _mps_available() and rank is None:
            name = "mps"
        else:
            return torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        if not _mps_available():
            raise ConfigError(
                "--device mps: this machine has no Apple GPU (MPS) that torch can use. "
                "Fix: use --device cpu or --device auto"
            )
        if rank is not None:
            raise ConfigError(
                "--device mps runs one process; this is one rank of several. Fix: run the "
                "command without the launcher"
            )
        return torch.device("mps")
    if name == "cuda" or name.startswith("cuda:"):
        return _cuda_device(name, rank)
    raise ConfigError(f"--device {name!r} is not one of {', '.join(DEVICE_NAMES)} (N: a GPU index)")


def _cuda_device(name: str, rank: int | None) -> torch.device:
    if not torch.cuda.is_available():
        raise ConfigError(
            f"--device {name}: no CUDA GPU is available to torch {torch.__version__} "
            f"(CUDA build: {torch.version.cuda or 'none'}). Fix: use --device cpu or "
            "--device auto, or install a CUDA build of torch"
        )
    count = torch.cuda.device_count()
    if name == "cuda":
        index = 0 if rank is None else rank
    else:
        if rank is not None:
            raise ConfigError(
                f"--device {name} would put every rank on one GPU. Fix: give --device cuda "
                "(or auto): each rank takes the GPU of its LOCAL_RANK"
            )
        try:
            index = int(name.split(":", 1)[1])
        except ValueError:
            raise ConfigError(f"--device {name!r}: N in cuda:N must be a GPU index") from None
    if not 0 <= index < count:
        raise ConfigError(
            f"--device {name}: GPU {index} does not exist; this machine has {count} "
            f"(0 to {count - 1}). Fix: give --device cuda:N with N below {count}"
        )
    return torch.device("cuda", index)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """The ``torch.dtype`` that ``--dtype NAME`` asks for on ``device``, checked to run there."""
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if name not in DTYPES:
        raise ConfigError(f"--dtype {name!r} is not one of {', '.join(DTYPE_NAMES)}")
    dtype = DTYPES[name]
    if dtype == torch.float16 and device.type == "cpu":
        raise ConfigError(
            "--dtype fp16 on the CPU: torch has no fast fp16 kernels there and some layers "
            "refuse it. Fix: use --dtype bf16 (CPU bf16 kernels) or --dtype fp32, or run on a GPU"
        )
    if dtype == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(
            f"--dtype bf16: {torch.cuda.get_device_name(device)} does not support bfloat16. "
            "Fix: use --dtype fp16 or --dtype fp32"
        )
    return dtype


def resolve_placement(device: str = "auto", dtype: str = "auto") -> Placement:
    """The device and precision that ``--device`` and ``--dtype`` ask for, both checked."""
    resolved = resolve_device(device)
    return Placement(resolved, resolve_dtype(dtype, resolved))


def place_model(model: torch.nn.Module, placement: Placement) -> torch.nn.Module:
    """``model`` moved to the placement's device with its weights cast to its dtype (in place;
    returned for chaining); buffers keep their precision."""
    model.to(placement.device)
    for parameter in model.parameters():
        if parameter.is_floating_point():
            parameter.data = parameter.data.to(placement.dtype)
    return model
