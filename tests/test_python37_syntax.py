"""The Python 3.7 syntax guard (vermin) over the shipped code, and a check that the guard itself bites."""
import os
import shutil
import subprocess

from support import REPO

SHIPPED = ("unet_perf", "benchmarks", "tools")
VERMIN_ARGS = ["-q", "-t=3.7-", "--violations", "--no-tips", "--no-parse-comments"]  # as .ci/run calls it


def test_shipped_code_is_python37_syntax():
    vermin = shutil.which("vermin")
    assert vermin, "vermin is in the test extra: pip install vermin"
    paths = [name for name in SHIPPED if os.path.isdir(os.path.join(REPO, name))]
    result = subprocess.run([vermin] + VERMIN_ARGS + paths, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
    assert result.stdout.strip() == "", result.stdout
    assert result.returncode == 0


def test_vermin_catches_a_python38_construct(tmp_path):
    """Guards the guard: the same vermin call rejects a walrus."""
    (tmp_path / "walrus.py").write_text("if (n := 3) > 2:\n    print(n)\n")
    result = subprocess.run([shutil.which("vermin") or "vermin"] + VERMIN_ARGS + [str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
    assert "walrus.py" in result.stdout
