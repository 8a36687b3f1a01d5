"""Every notebook is committed with outputs stripped, paired with its py:percent twin, and has the skeleton
every notebook of the course shares. (Executing them is nbmake's job: `pytest` collects notebooks/.)"""

import json
from pathlib import Path

import jupytext
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))


def _cells(nb):
    return [(c.cell_type, c.source.strip(), tuple(c.metadata.get("tags", ()))) for c in nb.cells]


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks found under notebooks/"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_outputs_are_stripped(path):
    raw = json.loads(path.read_text())
    dirty = [i for i, c in enumerate(raw["cells"]) if c["cell_type"] == "code" and (c.get("outputs") or c.get("execution_count"))]
    assert not dirty, f"{path.name}: cells {dirty} have outputs or execution counts; run nbstripout {path}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_names_its_kernel(path):
    """Without a kernelspec JupyterLab asks the learner to pick a kernel ("Select Kernel") on first open."""
    spec = json.loads(path.read_text())["metadata"].get("kernelspec", {})
    assert spec.get("name") == "python3" and spec.get("language") == "python", (
        f"{path.name}: metadata.kernelspec is {spec!r}; it must name the python3 kernel (.ci/run installs it), "
        "e.g. open it in JupyterLab, pick Python 3, save, and strip the outputs again")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_paired_py_matches(path):
    twin = path.with_suffix(".py")
    assert twin.exists(), f"{path.name} has no paired {twin.name}; run jupytext --set-formats ipynb,py:percent {path}"
    assert _cells(jupytext.read(path)) == _cells(jupytext.read(twin)), (
        f"{path.name} and {twin.name} differ; run jupytext --sync {path}"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_skeleton(path):
    nb = jupytext.read(path)
    markdown = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# "), "first cell: the title"
    assert "Run time" in nb.cells[0].source, "the title cell states the run times"
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", ())]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters'"
    assert "seed_everything" in "\n".join(c.source for c in nb.cells if c.cell_type == "code"), "a seed cell"
    assert "## Summary" in markdown and "## Exercises" in markdown
    assert "Checker" in markdown, "each build section is followed by a checker"
