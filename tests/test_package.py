"""An installed mmtune works away from the repository: the wheel carries the recipes and model configs the CLI needs,
and `mmtune --help`, `mmtune demo --help` and the demo's recipe lookup work from another directory."""
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The wheel built from this checkout, unpacked into its own site directory (dependencies from this venv)."""
    tmp = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp),
                    str(ROOT)], check=True, cwd=tmp)
    wheel = next(tmp.glob("mmtune-*.whl"))
    site = tmp / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, cwd=tmp)
    return wheel, site


def run_installed(site: Path, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(site)}
    done = subprocess.run([sys.executable, *args], cwd=site.parent, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_wheel_carries_recipes_and_model_configs(installed):
    names = set(zipfile.ZipFile(installed[0]).namelist())
    shipped = {p.relative_to(ROOT / "mmtune").as_posix() for p in (ROOT / "mmtune" / "configs").rglob("*.yaml")}
    assert shipped and {f"mmtune/{n}" for n in shipped} <= names
    assert "mmtune/encoders/model_configs/mmtune-vit-demo.json" in names
    assert "data_builders/synth/shapes.py" in names  # the demo writes its data with it


def test_installed_cli_runs_from_another_directory(installed):
    site = installed[1]
    assert "build-data" in run_installed(site, "-m", "mmtune.cli", "--help")
    assert "demo/vlm_tiny.yaml" in run_installed(site, "-m", "mmtune.cli", "demo", "--help")
    found = run_installed(site, "-c", "import mmtune, mmtune.recipe as r; print(mmtune.__file__); "
                                      "print(r.load_recipe('demo/vlm_tiny.yaml').model.llm); "
                                      "print(r.find_recipe('demo/vlm_tiny.yaml'))").split()
    assert found[0].startswith(str(site)), "the test imported the checkout, not the installed wheel"
    assert found[1] == "tiny:llama-demo" and found[2].startswith(str(site))
