"""Every knob in a notebook's parameters cell reaches the code: each name the cell assigns is read by a later
code cell before anything assigns it again. (A knob that is set but never read, or overwritten before it is
read, changes nothing when a learner, or papermill, edits it.)"""

import ast
from pathlib import Path

import jupytext
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))


def _code(source: str) -> ast.Module:
    """A code cell's source as Python (IPython magics and shell escapes dropped)."""
    lines = [line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))]
    return ast.parse("\n".join(lines))


def _assigned(tree: ast.Module) -> list[str]:
    """Names a cell binds at its top level (``X = …``, ``X: int = …``, ``A, B = …``), in order."""
    names = []
    for stmt in tree.body:
        targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target] if isinstance(
            stmt, (ast.AnnAssign, ast.AugAssign)) else []
        for target in targets:
            names += [n.id for n in ast.walk(target) if isinstance(n, ast.Name)]
    return list(dict.fromkeys(names))


def _first_event(name: str, trees: list[ast.Module]) -> str:
    """"read" when the first top-level statement after the parameters cell that mentions ``name`` reads it (a
    read anywhere in the statement, a function body included, counts), "overwritten" when it only binds it, and
    "unused" when no statement mentions it."""
    for tree in trees:
        for stmt in tree.body:
            ctxs = {type(n.ctx) for n in ast.walk(stmt) if isinstance(n, ast.Name) and n.id == name}
            if ast.Load in ctxs:
                return "read"
            if ctxs:
                return "overwritten"
    return "unused"


def dead_knobs(cells: list[tuple[str, str, tuple]]) -> dict[str, str]:
    """``{name: "unused" | "overwritten"}`` for the parameters cell's names that never reach the code, given
    cells as ``(cell_type, source, tags)``."""
    tagged = [i for i, (kind, _, tags) in enumerate(cells) if kind == "code" and "parameters" in tags]
    assert len(tagged) == 1, f"expected one code cell tagged 'parameters', found {len(tagged)}"
    knobs = _assigned(_code(cells[tagged[0]][1]))
    later = [_code(src) for kind, src, _ in cells[tagged[0] + 1 :] if kind == "code"]
    return {name: event for name in knobs if (event := _first_event(name, later)) != "read"}


def _cells(path: Path):
    return [(c.cell_type, c.source, tuple(c.metadata.get("tags", ()))) for c in jupytext.read(path).cells]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_parameter_reaches_the_code(path):
    dead = dead_knobs(_cells(path))
    assert not dead, f"{path.name}: parameters-cell knobs that change nothing: {dead}"


def test_the_check_can_fail():
    cells = [
        ("markdown", "# title", ()),
        ("code", "A = 1  # read\nB, C = 2, 3\nD: int = 4\nE = 5\nF = 6", ("parameters",)),
        ("code", "%matplotlib inline\nprint(A)\nB = 7\nprint(B)", ()),  # B overwritten before any read
        ("code", "def f():\n    return C\nE = E + 1", ()),  # C read inside a function, E read while re-bound
        ("markdown", "F and D are only named in prose", ()),
    ]
    assert dead_knobs(cells) == {"B": "overwritten", "D": "unused", "F": "unused"}
