"""Dataset cards and ``biotransformer datasets``: cards parse, checksums match the real files,
downloads go through a loopback HTTP server, and offline use fails fast with instructions."""

from __future__ import annotations

import csv
import functools
import hashlib
import http.server
import logging
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from biotransformer.cli import main
from biotransformer.dataset_cards import (
    REQUIRED_FIELDS,
    cards_folder,
    fetch_dataset,
    get_card,
    list_cards,
)
from biotransformer.errors import BioTransformerError, ConfigError

SHARED_COPIES = {
    "gue-prom_300_tata": "gue/prom_300_tata",
    "gue-tf_0": "gue/tf_0",
    "amp-modlamp": "peptides",
}


class _Server:
    """A static file server on 127.0.0.1 that counts the requests it answers."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[str] = []
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                server.requests.append(self.path)

        handler = functools.partial(Handler, directory=str(root))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def serve(self, url: str, content: bytes) -> None:
        """Make ``content`` available under the path of ``url``."""
        target = self.root / urlsplit(url).path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[_Server]:
    loopback = _Server(tmp_path / "served")
    thread = threading.Thread(target=loopback.httpd.serve_forever, daemon=True)
    thread.start()
    yield loopback
    loopback.httpd.shutdown()
    loopback.httpd.server_close()
    thread.join()


@pytest.fixture(autouse=True)
def _no_mirror_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BIOTRANSFORMER_DATASETS_MIRROR", raising=False)


def _raw_cards() -> list[dict]:
    return [
        yaml.safe_load(entry.read_text())
        for entry in cards_folder().iterdir()
        if entry.name.endswith(".yaml")
    ]


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_every_card_parses_and_has_the_required_fields():
    raw = _raw_cards()
    cards = list_cards()
    assert len(cards) == len(raw) >= 6
    assert len({card.name for card in cards}) == len(cards)
    for data in raw:
        assert set(REQUIRED_FIELDS) <= set(data), data["name"]
    for card in cards:
        assert all(url.startswith("https://") for url in card.source), card.name
        split_names = set(card.derive_splits or card.splits)
        assert {"train", "test"} <= split_names, card.name
        assert card.derive_splits or {entry.split for entry in card.files} == split_names
        assert card.manual.strip() and card.citation.strip() and card.license.strip()


def test_checksums_are_null_or_64_hex_digits():
    for data in _raw_cards():
        for entry in data["files"]:
            sha256 = entry["sha256"]
            assert sha256 is None or (
                len(sha256) == 64 and set(sha256) <= set("0123456789abcdef")
            ), f"{data['name']}: {entry['file']}"
            if sha256 is not None:
                assert entry.get("checksum_of"), "say which file version a checksum refers to"


def test_recorded_checksums_are_those_of_the_real_files(shared_data: Path):
    for name, folder in SHARED_COPIES.items():
        for entry in get_card(name).files:
            real = (shared_data / folder / entry.file).read_bytes()
            assert hashlib.sha256(real).hexdigest() == entry.sha256, f"{name}: {entry.file}"


def test_unknown_name_lists_the_known_ones_and_suggests_the_closest():
    with pytest.raises(ConfigError, match="Did you mean 'gue-tf_0'") as error:
        get_card("gue-tf0")
    assert "amp-modlamp" in str(error.value)


def test_real_modlamp_file_through_loopback_server_is_verified_cached_and_converted(
    shared_data: Path, server: _Server, tmp_path: Path
):
    card = get_card("amp-modlamp")
    (entry,) = card.files
    server.serve(entry.url, (shared_data / "peptides" / entry.file).read_bytes())

    written = fetch_dataset(
        "amp-modlamp", tmp_path / "out", cache_dir=tmp_path / "cache", base_url=server.url
    )

    assert len(server.requests) == 1
    assert set(written) == {"train", "dev", "test"}
    rows = {split: _read_csv(path) for split, path in written.items()}
    assert {split: len(split_rows) for split, split_rows in rows.items()} == card.splits
    every = [row for split_rows in rows.values() for row in split_rows]
    assert len(every) == 5200
    assert {row["label"] for row in every} == {"0", "1"}
    assert all(row["sequence"].isalpha() and row["sequence"].isupper() for row in every)
    train, test = ({row["sequence"] for row in rows[s]} for s in ("train", "test"))
    assert not train & test, "duplicate sequences must not straddle splits"

    again = fetch_dataset(
        "amp-modlamp", tmp_path / "again", cache_dir=tmp_path / "cache", base_url=server.url
    )
    assert len(server.requests) == 1, "a cache hit must not download again"
    assert (again["dev"]).read_text() == written["dev"].read_text()


def test_checksum_mismatch_is_refused_and_nothing_is_kept(server: _Server, tmp_path: Path):
    (entry,) = get_card("amp-modlamp").files
    server.serve(entry.url, b"2,1,UniProt,AMP\nGLWSKIKE, 1\nMKRTYQPN, 0\n")

    with pytest.raises(BioTransformerError, match="checksum mismatch") as error:
        fetch_dataset(
            "amp-modlamp", tmp_path / "out", cache_dir=tmp_path / "cache", base_url=server.url
        )

    assert "not kept" in str(error.value)
    assert not list((tmp_path / "cache").rglob("*AMPvsUniProt*"))
    assert not (tmp_path / "out").exists()


def test_offline_fails_fast_with_instructions_for_getting_the_files_by_hand(tmp_path: Path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    start = time.monotonic()

    with pytest.raises(BioTransformerError) as error:
        fetch_dataset(
            "gue-tf_0",
            tmp_path / "out",
            cache_dir=tmp_path / "cache",
            base_url=f"http://127.0.0.1:{closed_port}",
        )

    assert time.monotonic() - start < 3
    message = str(error.value)
    assert "could not download" in message
    assert "by hand" in message and "DNABERT_2" in message
    assert all(name in message for name in ("train.csv", "dev.csv", "test.csv"))
    assert "--from FOLDER" in message


def test_without_published_checksum_first_download_is_recorded_and_later_checked(
    server: _Server, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    card = get_card("nt-downstream-promoter_all")
    fasta = {"train": ">a|1\nACGTACGT\n>b|0\nTTTTGGGG\n", "test": ">c|0\nGGGGCCCC\n"}
    for entry in card.files:
        assert entry.sha256 is None
        server.serve(entry.url, fasta[entry.split].encode())
    cache = tmp_path / "cache"

    with caplog.at_level(logging.WARNING, logger="biotransformer.dataset_cards"):
        written = fetch_dataset(card.name, tmp_path / "out", cache_dir=cache, base_url=server.url)

    assert "NOT verified against a published checksum" in caplog.text
    assert [row["label"] for row in _read_csv(written["train"])] == ["1", "0"]
    assert _read_csv(written["test"]) == [{"sequence": "GGGGCCCC", "label": "0"}]
    cached = cache / card.name / "train.fna"
    recorded = (cache / card.name / "train.fna.sha256").read_text().strip()
    assert recorded == hashlib.sha256(fasta["train"].encode()).hexdigest()

    cached.write_text(">a|1\nAAAAAAAA\n")
    with pytest.raises(BioTransformerError, match="expected " + recorded):
        fetch_dataset(card.name, tmp_path / "out", cache_dir=cache, base_url=server.url)
    assert not cached.exists()


def test_folder_dataset_comes_from_a_local_folder(tmp_path: Path):
    card = get_card("genomic-benchmarks-human_nontata_promoters")
    source = tmp_path / "human_nontata_promoters"
    for split, label, sequence in [
        ("train", "positive", "ACGT"),
        ("train", "negative", "TTTT"),
        ("test", "positive", "GGGG"),
    ]:
        (source / split / label).mkdir(parents=True, exist_ok=True)
        (source / split / label / f"{sequence}.txt").write_text(f"{sequence}\n")

    with pytest.raises(BioTransformerError, match="by hand"):
        fetch_dataset(card.name, tmp_path / "out", cache_dir=tmp_path / "cache")
    written = fetch_dataset(
        card.name, tmp_path / "out", cache_dir=tmp_path / "cache", from_dir=source
    )

    assert _read_csv(written["train"]) == [
        {"sequence": "TTTT", "label": "0"},
        {"sequence": "ACGT", "label": "1"},
    ]
    assert _read_csv(written["test"]) == [{"sequence": "GGGG", "label": "1"}]


def test_cli_list_prints_a_table_of_every_card(capsys: pytest.CaptureFixture):
    assert main(["datasets", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:5] == ["NAME", "TASK", "ALPHABET", "SPLITS", "LICENSE"]
    listed = {line.split()[0] for line in lines[1:]}
    assert listed == {card.name for card in list_cards()}
    assert any("gue-tf_0" in line and "train/dev/test" in line for line in lines)


def test_cli_get_from_a_local_folder_and_unknown_name(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
):
    local = tmp_path / "by-hand"
    shutil.copytree(shared_data / "gue" / "prom_300_tata", local)
    argv = ["datasets", "get", "gue-prom_300_tata", "--out", str(tmp_path / "out")]

    assert main([*argv, "--from", str(local), "--cache", str(tmp_path / "cache")]) == 0

    assert "dev\t" in capsys.readouterr().out
    assert len(_read_csv(tmp_path / "out" / "dev.csv")) == 613
    assert main(["datasets", "get", "no-such-set", "--out", str(tmp_path / "x")]) == 2
    assert "Known datasets" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("card_name", "file", "content", "says"),
    [
        ("gue-prom_core_tata", "train.csv", b"\xff\xfe\x00A\x00C", "not UTF-8 text"),
        ("gue-prom_core_tata", "train.csv", b"sequence,label\nACGT\n", "fewer fields"),
        ("gue-prom_core_tata", "train.csv", b"seq;lab\nACGT;1\n", "expected a header"),
        (
            "nt-downstream-promoter_all",
            "train.fna",
            b">a\nACGT\n",
            "expected a header 'NAME|LABEL'",
        ),
        ("nt-downstream-promoter_all", "train.fna", b"ACGT\n>a|1\n", "before the first '>'"),
    ],
)
def test_cli_get_of_a_malformed_file_names_it(
    card_name: str,
    file: str,
    content: bytes,
    says: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
):
    card = get_card(card_name)
    local = tmp_path / "by-hand"
    local.mkdir()
    for entry in card.files:
        good = b"sequence,label\nACGT,1\n" if entry.file.endswith(".csv") else b">a|1\nACGT\n"
        (local / entry.file).write_bytes(content if entry.file == file else good)
    argv = ["datasets", "get", card_name, "--out", str(tmp_path / "out"), "--from", str(local)]
    assert main([*argv, "--cache", str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert file in err and says in err
    assert "Fix:" in err
    assert not (tmp_path / "out").exists()
