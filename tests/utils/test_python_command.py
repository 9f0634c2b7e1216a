"""The interpreter in the commands recog prints (the resume hint): one that runs as printed."""

import sys
from pathlib import Path

from recog.utils.runtime import python_command


def test_python_when_path_finds_this_interpreter(tmp_path, monkeypatch):
    bin_dir = tmp_path / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").symlink_to(sys.executable)  # as a venv's python is
    monkeypatch.setattr(sys, "executable", str(bin_dir / "python"))
    monkeypatch.setenv("PATH", str(bin_dir))  # the venv is active
    assert python_command() == "python"


def test_its_path_when_the_venv_is_not_active(tmp_path, monkeypatch):
    bin_dir = tmp_path / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").symlink_to(sys.executable)
    other = tmp_path / "usr" / "bin"
    other.mkdir(parents=True)
    (other / "python").symlink_to(sys.executable)  # the same binary behind it, but another environment
    monkeypatch.setattr(sys, "executable", str(bin_dir / "python"))
    monkeypatch.setenv("PATH", str(other))
    monkeypatch.chdir(tmp_path)
    assert python_command() == str(Path("venv") / "bin" / "python")  # relative to the working directory
    monkeypatch.chdir(other)
    assert python_command() == str(bin_dir / "python")
