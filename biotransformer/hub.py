"""Model sources: what a ``--model`` value (or ``load_model``'s argument) names, found on disk.

=====================  ================================================================
``DIR``                a biotransformer model directory
``hf:ORG/NAME[@REV]``  a HuggingFace Hub repository, through ``huggingface_hub``'s cache:
                       downloaded when online, read from the cache when
                       ``HF_HUB_OFFLINE=1``; REV is a branch, tag or commit (default main)
``ORG/NAME[@REV]``     the same, when no local path of that name exists
``hf:PATH``            a local HuggingFace ESM / ESM C directory (PATH exists)
``fair-esm:PATH``      a fair-esm ESM-2 ``.pt`` file
=====================  ================================================================

A Hub repository holds either a biotransformer model directory (``config.json`` with its
``format_version``) or a HuggingFace ESM / ESM C model, converted on load (``interop``). Only
``*.json``, ``*.txt`` and ``*.safetensors`` files are fetched: weights stored only as pickled
``.bin`` files are refused. ``resolve_model_source`` finds the files; ``load_model`` is the one
dispatch on a source (every command and ``bt.load_model`` reach it through ``api.load_model``);
``import_model`` writes a source as a model directory (``finetune --model``).
``ModelSource.record()`` is the provenance a run writes to ``run.json``: the repository, the
revision asked for and the commit it resolved to.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from biotransformer.errors import ModelDirectoryError

if TYPE_CHECKING:
    from biotransformer.heads import BioTransformerModel

HUB_PREFIX = "hf:"
FAIR_ESM_PREFIX = "fair-esm:"
HUB_PATTERNS = ["*.json", "*.txt", "*.safetensors"]
# ORG/NAME as the Hub spells repositories: letters, digits, '-', '_', '.'; no '..' or '--'.
REPO_ID = re.compile(r"^(?!.*(?:--|\.\.))[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
SOURCE_HELP = (
    "a model directory, hf:ORG/NAME[@REVISION] (a HuggingFace Hub repository, read from the "
    "local HF cache when HF_HUB_OFFLINE=1; plain ORG/NAME when no such local path exists), "
    "hf:PATH (a local HuggingFace ESM or ESM C directory) or fair-esm:PATH (an ESM-2 .pt file)"
)

Format = Literal["biotransformer", "hf", "fair-esm"]


@dataclass(frozen=True)
class ModelSource:
    """A model source found on disk: ``path`` is a directory (a file for ``fair-esm``) in
    ``format``; Hub sources also name the repository, the revision asked for and the commit
    of the snapshot read."""

    text: str
    format: Format
    path: Path
    repo_id: str | None = None
    revision: str | None = None
    commit: str | None = None

    def record(self) -> dict[str, Any]:
        """What ``run.json`` records of the model a run started from."""
        record: dict[str, Any] = {"source": self.text, "format": self.format}
        if self.repo_id is None:
            record["path"] = str(self.path)
        else:
            record.update(repo_id=self.repo_id, revision=self.revision, commit=self.commit)
        return record


def parse_hub_name(name: str) -> tuple[str, str | None] | None:
    """``(repo_id, revision)`` of ``ORG/NAME[@REV]``, or None if ``name`` is not one."""
    repo_id, _, revision = name.partition("@")
    if not REPO_ID.match(repo_id) or (revision == "" and "@" in name):
        return None
    return repo_id, revision or None


def resolve_model_source(text: str | os.PathLike[str]) -> ModelSource:
    """Where the model named by ``text`` lies on this machine (see the module doc); a Hub
    repository is fetched into (or, offline, read from) the HuggingFace cache."""
    text = os.fspath(text)
    if text.startswith(FAIR_ESM_PREFIX):
        return ModelSource(text, "fair-esm", Path(text.removeprefix(FAIR_ESM_PREFIX)))
    if text.startswith(HUB_PREFIX):
        name = text.removeprefix(HUB_PREFIX)
        if Path(name).exists():
            return ModelSource(text, "hf", Path(name))
        hub_name = parse_hub_name(name)
        if hub_name is None:
            raise ModelDirectoryError(
                f"{text}: {name!r} is neither a local HuggingFace directory nor a Hub name. Fix: "
                "write hf:ORG/NAME or hf:ORG/NAME@REVISION (e.g. hf:facebook/esm2_t6_8M_UR50D), "
                "or hf:PATH to an existing directory"
            )
        return _hub_source(text, *hub_name)
    hub_name = parse_hub_name(text)
    if hub_name is not None and not Path(text).exists() and not Path(hub_name[0]).exists():
        return _hub_source(text, *hub_name)
    return ModelSource(text, "biotransformer", Path(text))


def _hub_source(text: str, repo_id: str, revision: str | None) -> ModelSource:
    """The snapshot of ``repo_id`` at ``revision`` in the HuggingFace cache (fetched unless
    offline), as a ModelSource of the format its ``config.json`` states."""
    try:
        from huggingface_hub import constants, snapshot_download
        from huggingface_hub.errors import (
            HfHubHTTPError,
            IncompleteSnapshotError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError:
        raise ModelDirectoryError(
            f"{text}: reading Hub models needs huggingface_hub. Fix: pip install "
            '"biotransformer[hf]"'
        ) from None
    offline = constants.is_offline_mode()
    where = f"{repo_id}@{revision or 'main'}"
    local = "" if text.startswith(HUB_PREFIX) else f"no local path {text} exists, and "
    try:
        snapshot = Path(
            snapshot_download(
                repo_id,
                revision=revision,
                allow_patterns=HUB_PATTERNS,
                local_files_only=offline,
            )
        )
    except RevisionNotFoundError:
        raise ModelDirectoryError(
            f"{text}: the repository {repo_id} has no revision {revision!r}. Fix: name a branch, "
            "tag or commit it has, or drop @REVISION for main"
        ) from None
    except RepositoryNotFoundError:
        raise ModelDirectoryError(
            f"{text}: {local}there is no Hub repository {repo_id} (or it is private). Fix: check "
            "the path or name; for a private or gated model run `hf auth login` first"
        ) from None
    except IncompleteSnapshotError as error:
        raise ModelDirectoryError(
            f"{text}: the cached snapshot of {where} ({error.snapshot_path}) lacks files an "
            "interrupted download left out. Fix: fetch it again online (unset HF_HUB_OFFLINE)"
        ) from None
    except LocalEntryNotFoundError:
        state = "HF_HUB_OFFLINE=1 is set" if offline else "the Hub cannot be reached"
        raise ModelDirectoryError(
            f"{text}: {local}{where} is not in the HuggingFace cache ({constants.HF_HUB_CACHE}) "
            f"and {state}. Fix: fetch it once online (unset HF_HUB_OFFLINE), or point "
            "HF_HUB_CACHE / HF_HOME at a cache that holds it"
        ) from None
    except (HfHubHTTPError, OSError) as error:
        raise ModelDirectoryError(
            f"{text}: {local}fetching {where} failed ({type(error).__name__}: {error}). Fix: "
            "check the path, name or network, or run with HF_HUB_OFFLINE=1 on a cache that "
            "holds the model"
        ) from None
    config = snapshot / "config.json"
    if not config.is_file():
        raise ModelDirectoryError(
            f"{text}: the snapshot {snapshot} holds no config.json. Fix: name a repository of a "
            "biotransformer or HuggingFace ESM model"
        )
    if not any(snapshot.glob("*.safetensors")):
        raise ModelDirectoryError(
            f"{text}: the snapshot {snapshot} holds no .safetensors weights (pickled .bin weights "
            "are not read). Fix: use a revision with model.safetensors, or convert the weights "
            "to safetensors"
        )
    return ModelSource(
        text,
        "biotransformer" if _is_ours(config) else "hf",
        snapshot,
        repo_id=repo_id,
        revision=revision,
        commit=snapshot.name,
    )


def _is_ours(config: Path) -> bool:
    """Whether ``config`` is a biotransformer ``config.json`` (it states a format version)."""
    try:
        document = json.loads(config.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelDirectoryError(
            f"{config}: not JSON ({error}). Fix: the cached file is damaged; delete the snapshot "
            "and fetch it again"
        ) from None
    return isinstance(document, dict) and "format_version" in document


def load_model(
    source: str | os.PathLike[str],
    model_class: type[BioTransformerModel] | str | None = None,
    *,
    require_tokenizer: bool = False,
    **head_options: Any,
) -> Any:
    """The model named by ``source`` (any form of the module doc), in eval mode, with its
    tokenizer and ``model.source`` (``ModelSource.record()``). ``model_class`` and
    ``head_options`` keep the encoder and start a new head, as ``heads.load_model``."""
    from biotransformer import heads

    found = resolve_model_source(source)
    if found.format == "biotransformer":
        model = heads.load_model(
            found.path, model_class, require_tokenizer=require_tokenizer, **head_options
        )
    elif model_class is None and not head_options:
        model = _imported(found)
        if require_tokenizer and model.tokenizer is None:
            raise ModelDirectoryError(
                f"{found.text}: the checkpoint names no tokenizer, so this model cannot read "
                "sequences. Fix: convert it with `biotransformer convert` and add a tokenizer"
            )
    else:
        with tempfile.TemporaryDirectory(prefix="biotransformer-import-") as staging:
            _imported(found).save_pretrained(Path(staging) / "model")
            model = heads.load_model(
                Path(staging) / "model",
                model_class,
                require_tokenizer=require_tokenizer,
                **head_options,
            )
    model.source = found.record()
    return model


def import_model(
    source: str | os.PathLike[str], directory: str | os.PathLike[str]
) -> tuple[Path, ModelSource]:
    """``source`` as a biotransformer model directory: its own when it is one, else converted
    into ``directory``; and the source it came from."""
    found = resolve_model_source(source)
    if found.format == "biotransformer":
        return found.path, found
    return Path(_imported(found).save_pretrained(directory)), found


def _imported(found: ModelSource) -> BioTransformerModel:
    """Our model converted from a HuggingFace directory or a fair-esm file."""
    from biotransformer import interop

    if found.format == "fair-esm":
        return interop.from_fair_esm(found.path)
    return interop.from_hf(found.path)
