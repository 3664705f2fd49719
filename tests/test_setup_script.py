"""The README's set-up script refuses to start a multi-GB install on a disk that cannot hold it."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("df") is None, reason="needs df")
def test_setup_stops_with_one_line_when_disk_is_too_small(tmp_path):
    venv = tmp_path / "venv"
    # No disk has a million GB free, so the guard must fire before pip runs.
    env = {"PATH": "/usr/bin:/bin", "TINLT_VENV": str(venv), "TINLT_SETUP_NEED_GB": "1000000",
           "PYTHON": sys.executable, "TINLT_FMNIST": "/nonexistent"}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "setup.sh")], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    errors = proc.stderr.strip().splitlines()
    assert len(errors) == 1
    assert str(venv) in errors[0] and "1000000 GB" in errors[0]
    assert "Traceback" not in proc.stderr
    # pip never ran: the stamp is absent and torch is not in the new venv.
    assert not (venv / ".tinlt-installed").exists()
    assert not list(venv.glob("lib/python*/site-packages/torch"))
