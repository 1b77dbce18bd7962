"""Project metadata: the citation file is valid CFF 1.2.0, the wheel layout is sound."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from conftest import REPO_ROOT


def test_citation_cff_validates_against_schema_1_2_0():
    cffconvert = shutil.which(
        "cffconvert", path=os.pathsep.join([os.path.dirname(sys.executable), os.environ["PATH"]])
    )
    if cffconvert is None:
        pytest.fail("cffconvert is missing: install the dev extra (pip install -e '.[dev]')")
    result = subprocess.run(
        [cffconvert, "--validate", "--infile", str(REPO_ROOT / "CITATION.cff")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1.2.0" in (REPO_ROOT / "CITATION.cff").read_text()


def test_datasets_folder_is_not_a_python_package():
    assert not (REPO_ROOT / "datasets" / "__init__.py").exists()
    assert not (REPO_ROOT / "recipes" / "__init__.py").exists()
