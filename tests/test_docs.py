"""The documentation site builds with warnings as errors, its gallery running every example."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

for module in ["sphinx", "numpydoc", "sphinx_gallery", "pydata_sphinx_theme", "matplotlib"]:
    pytest.importorskip(module, reason="the docs extra is not installed")

DOC_DIR = Path(__file__).resolve().parents[1] / "doc"


def test_documentation_builds_without_warnings(tmp_path):
    command = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html"]
    command += ["-d", str(tmp_path / "doctrees"), str(DOC_DIR), str(tmp_path / "html")]
    result = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, "MPLBACKEND": "Agg"}
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert (
        tmp_path / "html" / "generated" / "sksae.SparseAutoencoderOutlierDetector.html"
    ).exists()
    assert (tmp_path / "html" / "auto_examples" / "plot_compression.html").exists()
