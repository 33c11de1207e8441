"""notebooks/: each is stored without outputs, reads no path outside the repository, takes the test suite's tiny
settings, and runs top to bottom from a temporary working directory, showing every figure it draws."""
import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
CELL_TIMEOUT_S = 600
"""Per cell: catches a hang. Unloaded, each notebook runs in well under 2 minutes; a shared machine is slower."""
OUTSIDE = re.compile(r"""["'](/|~|\.\./)|\.\./shared""")
"""A string literal that starts at the root, the home directory or the parent folder."""
FIGURE_CALL = re.compile(r"(show|PNG|Image)\(")
"""A cell's last line that displays a picture (a notebook's own grid helper, the loss curve PNG)."""


def _code(path: Path) -> list:
    return [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]


def test_the_notebooks_are_there():
    names = {p.name for p in NOTEBOOKS}
    assert {"01_text_sft_lora.ipynb", "02_teach_an_llm_to_see.ipynb", "04_instructpix2pix.ipynb"} <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_clean(path):
    nbformat.validate(nbformat.read(path, as_version=4))
    for i, cell in enumerate(_code(path)):
        assert cell.outputs == [] and cell.execution_count is None, f"{path.name} code cell {i}: outputs kept"
    source = "\n".join(c.source for c in _code(path))
    assert "MMTUNE_NOTEBOOK_FAST" in source, f"{path.name} has no parameter cell for the tests' tiny settings"
    assert not OUTSIDE.search(source), f"{path.name} reads outside the repository: {OUTSIDE.search(source)[0]}"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_at_tiny_settings(path, tmp_path, monkeypatch):
    from nbclient import NotebookClient

    monkeypatch.setenv("MMTUNE_NOTEBOOK_FAST", "1")
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "jupyter"))
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    for i, cell in enumerate(c for c in nb.cells if c.cell_type == "code"):
        if "plt.show()" in cell.source or FIGURE_CALL.match(cell.source.splitlines()[-1]):
            assert any("image/png" in out.get("data", {}) for out in cell.outputs), f"code cell {i}: no figure"
    assert (tmp_path / "runs" / "notebooks" / path.stem).is_dir()  # written under the working directory
