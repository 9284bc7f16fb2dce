"""Execute the four notebooks (jupytext percent scripts, each ending in assertions) and check pairing."""

from __future__ import annotations

import importlib.util
import json
import runpy
from pathlib import Path

import pytest

NB = Path(__file__).resolve().parents[1] / "notebooks"
SCRIPTS = ["01_pipeline.py", "02_convergence.py", "03_initialisation.py", "04_cascade.py"]


def _sync():
    spec = importlib.util.spec_from_file_location("nb_sync", NB / "sync.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("script", SCRIPTS)
def test_notebook_runs(script, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CHORDS_NB_OUT", str(tmp_path))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.chdir(tmp_path)  # any working directory: chords_core and theory are installed packages
    source = (NB / script).read_text()
    assert "sys.path" not in source, f"{script}: import the installed packages, no sys.path edits"
    runpy.run_path(str(NB / script), run_name="__main__")
    assert "all checks passed" in capsys.readouterr().out
    assert len(list(tmp_path.glob("*.png"))) >= 2  # each notebook saves its figures


@pytest.mark.parametrize("script", SCRIPTS)
def test_ipynb_is_paired(script):
    sync = _sync()
    expected = sync.notebook((NB / script).read_text())
    stored = json.loads((NB / script).with_suffix(".ipynb").read_text())
    assert [(c["cell_type"], "".join(c["source"])) for c in stored["cells"]] == [
        (c["cell_type"], "".join(c["source"])) for c in expected["cells"]
    ], f"{script} and its .ipynb differ: run python notebooks/sync.py"
    assert [c["cell_type"] for c in expected["cells"]].count("markdown") >= 3


def test_sync_parses_percent_format():
    cells = _sync().cells("# %% [markdown]\n# # Title\n# text\n\n# %%\nx = 1\n\n\n# %%\nassert x == 1\n")
    assert [c["cell_type"] for c in cells] == ["markdown", "code", "code"]
    assert "".join(cells[0]["source"]) == "# Title\ntext"
    assert "".join(cells[1]["source"]) == "x = 1"
