"""What `pip install .` puts into site-packages: one top-level name, gpt2ja (and its dist-info)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_wheel_adds_only_gpt2ja_at_the_top_level(tmp_path):
    # The wheel is what `pip install .` unpacks; building it (offline, this venv's setuptools) is the install's
    # first step, and its top-level names are the ones site-packages gains.
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), "."],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("gpt2ja-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names}
    assert top == {"gpt2ja", f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info"}, sorted(top)
    packages = {name.rsplit("/", 1)[0] for name in names if name.endswith("/__init__.py")}
    for sub in ("crawler", "corpus", "tokenization", "model", "flows", "infra", "studies"):
        assert f"gpt2ja/{sub}" in packages, sub
