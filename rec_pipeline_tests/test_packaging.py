"""A wheel install works: the migrations ship in the package, and nothing reads the checkout."""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_a_wheel_install_runs_the_main_job_from_an_empty_folder(tmp_path):
    source = tmp_path / "source"  # a copy: building writes build/ and *.egg-info beside the sources
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "rec_pipeline", "sql"):
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy
        copy(ROOT / name, source / name, **({"symlinks": True, "ignore": shutil.ignore_patterns("__pycache__")}
                                          if copy is shutil.copytree else {}))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--wheel-dir", str(tmp_path / "dist"), str(source)], check=True, timeout=300)
    [wheel] = (tmp_path / "dist").glob("rec_pipeline-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = Path(subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # The dependencies come from this test's environment (a path line: its .pth files, among them
    # the editable install of the checkout, are not run), the package only from the wheel.
    (site / "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--quiet",
                    "--no-deps", str(wheel)], check=True, timeout=300)

    empty = tmp_path / "empty"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("REC_PIPELINE_") and k != "DAGSTER_HOME"}
    run = subprocess.run([str(venv / "bin" / "rec-pipeline"), "run", "--events", "2000", "--json"], cwd=empty,
                         env=env | {"REC_PIPELINE_HOME": str(empty / "home")}, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["landed"] == 2000
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import rec_pipeline; print(rec_pipeline.__file__)"],
                           cwd=empty, env=env, capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(site)), "the package came from the wheel, not the checkout"
    assert sorted(p.name for p in (site / "rec_pipeline" / "sql").iterdir()) == sorted(
        p.name for p in (ROOT / "sql").glob("*.sql"))
    assert not (site / "rec_pipeline_tests").exists(), "the tests do not ship"
