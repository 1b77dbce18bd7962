"""Every fenced shell and Python block of the README runs as written, except a short reviewed
list.

Blocks run in README order: the usage blocks (commands and the "Python API" snippets) work on
the files the main job's quickstart leaves in ``quickstart-run/``. A Python block runs as a
script of its own (``python -c``) with the Python running the tests."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from conftest import REPO_ROOT

BLOCK_PATTERN = re.compile(
    r"^```(?P<language>bash|python)(?P<info>[^\n]*)\n(?P<body>.*?)^```", re.S | re.M
)

# Blocks that cannot run inside this test, each with its reason. Keep this list short.
NOT_RUN = {
    "tests": "it runs pytest, which is what is running this test",
    "multi-gpu": "needs several GPUs",
}


def readme_blocks() -> dict[str, tuple[str, str]]:
    """Each named block's (language, body), in README order."""
    text = (REPO_ROOT / "README.md").read_text()
    blocks: dict[str, tuple[str, str]] = {}
    for match in BLOCK_PATTERN.finditer(text):
        name = re.search(r"name=(\S+)", match["info"])
        assert name, f"README {match['language']} block without a name=...: {match['body'][:60]!r}"
        assert name[1] not in blocks, f"README block name {name[1]!r} used twice"
        blocks[name[1]] = (match["language"], match["body"])
    return blocks


def test_every_block_is_named_and_skips_are_real_blocks():
    blocks = readme_blocks()
    assert blocks, "the README has no bash blocks"
    assert set(NOT_RUN) <= set(blocks), "NOT_RUN names a block the README no longer has"


def test_biology_example_mutates_the_tata_box_where_a_promoter_has_it():
    """The biology block scores a promoter of the quickstart's task: its TATA box starts
    where ``synthetic`` plants promoter boxes, the ``in-tata-box`` variant changes a base of
    that box (its ref letter is the sequence's) and ``outside-box`` one far from it."""
    from biotransformer.synthetic import SyntheticTask

    _, block = readme_blocks()["biology"]
    sequence = re.search(r"printf '>tss\\n([ACGT]+)\\n'", block)[1]
    task = SyntheticTask()
    assert len(sequence) == task.length
    box = sequence.find(task.box)
    assert box in task.promoter_starts() and sequence.count(task.box) == 1
    variants = re.search(r"printf 'id\\tposition\\tref\\talt\\n(.*?)' >", block)[1]
    rows = [row.split("\\t") for row in variants.split("\\n") if row]
    positions = {name: int(position) - 1 for name, position, _, _ in rows}  # 1-based in the TSV
    assert all(sequence[int(position) - 1] == ref for _, position, ref, _ in rows)
    assert box <= positions["in-tata-box"] < box + len(task.box)
    assert abs(positions["outside-box"] - box) >= task.decoy_distance


@pytest.mark.slow
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("name", [n for n in readme_blocks() if n not in NOT_RUN])
def test_readme_block_runs(name):
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    language, body = readme_blocks()[name]
    command = [sys.executable, "-c"] if language == "python" else ["bash", "-euo", "pipefail", "-c"]
    result = subprocess.run(
        [*command, body],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, (
        f"README block {name!r} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
