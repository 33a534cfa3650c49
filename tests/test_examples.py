"""examples/quickstart.ipynb runs top to bottom (nbclient), and matches examples/quickstart.py."""

import re
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def script_cells(path: Path) -> list[tuple[str, str]]:
    """(kind, source) per `# %%` cell of the plain-script version."""
    cells = []
    for chunk in re.split(r"^# %%", path.read_text(), flags=re.M)[1:]:
        head, _, body = chunk.partition("\n")
        body = body.strip("\n")
        if head.strip() == "[markdown]":
            cells.append(("markdown", "\n".join(line[2:] if line.startswith("# ") else line.lstrip("#")
                                                for line in body.splitlines())))
        else:
            cells.append(("code", body))
    return cells


def test_notebook_and_script_say_the_same():
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(EXAMPLES / "quickstart.ipynb", as_version=4)
    assert [(c.cell_type, c.source) for c in nb.cells] == script_cells(EXAMPLES / "quickstart.py")


def test_quickstart_notebook_runs(monkeypatch):
    """The default path: convert the bundled trained FP8 checkpoint to 4-bit, generate, draft with MTP."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.delenv("MLXSEEK_MODEL", raising=False)
    nb = nbformat.read(EXAMPLES / "quickstart.ipynb", as_version=4)
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(EXAMPLES)}}).execute()
    out = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "deepseek_v3: 4 layers" in out
    assert "finish: length" in out
    assert "same text as plain decoding: True" in out
    assert out.count("new prompt tokens prefilled") == 2
    assert "| mlxseek | float32 |" in out
