"""The README is a contract: its commands run, and the messages it quotes are the real ones.

How each block runs is said by its ``<!-- readme-test: ... -->`` marker: see tests/readme_blocks.py.
The fast tests check the markers and the transcripts (error messages, which stop before any
work); the slow one runs every other block, group by group, with tiny overrides where it trains.
"""

import contextlib
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from commands import cli, script
from mlflow_stores import new_store
from readme_blocks import Block, read_blocks, shell_commands, transcript, with_tiny_overrides

ROOT = Path(__file__).resolve().parents[1]
BLOCKS = [b for b in read_blocks() if b.runs]
_RUN_PATH = re.compile(r"outputs/runs/<run>/([\w.-]+)")


def _units():
    """One test per group (its blocks in README order) and per block without a group."""
    units, groups = [], {}
    for block in BLOCKS:
        if block.is_transcript or "skip" in block.options:
            continue
        group = block.options.get("group")
        # the blocks that write glyphs share a worker, which builds the glyph catalogue once (tests/data/test_glyphs.py)
        marks = [pytest.mark.xdist_group("glyphs")] if "glyphs" in block.text else []
        if group is None:
            units.append(pytest.param([block], id=f"line{block.line}", marks=marks))
        else:
            if group not in groups:
                groups[group] = []
                units.append(pytest.param(groups[group], id=group))
            groups[group].append(block)
    return units


def scratch(tmp_path: Path) -> Path:
    """A folder that looks like the checkout (run.py, conf/, scripts/ linked) with its own outputs/
    (holding an MLflow store MLflow migrated, as after a first run)."""
    for name in ("run.py", "conf", "scripts"):
        (tmp_path / name).symlink_to(ROOT / name)
    new_store(tmp_path / "outputs")  # the embedded MLflow store, migrated (tests/mlflow_stores.py)
    return tmp_path


def environment() -> dict:
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, PYTHONPATH=path, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])  # python, mlflow, ...
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def newest_run(cwd: Path, holding: str) -> str:
    """``outputs/runs/<newest run folder that holds holding>``."""
    runs = sorted(p for p in (cwd / "outputs" / "runs").glob("*") if (p / holding).exists())
    assert runs, f"no run under {cwd / 'outputs' / 'runs'} holds {holding}"
    return f"outputs/runs/{runs[-1].name}/{holding}"


def resolve_runs(text: str, cwd: Path) -> str:
    return _RUN_PATH.sub(lambda m: newest_run(cwd, m.group(1)), text)


# A plain ``python run.py ...`` / ``python scripts/NAME.py ...``: no shell syntax beyond quoting and a
# comment, no prelude, no launcher (which takes over its process), not bench_train.py.
# It runs in this process, as what run.py / the script runs after start-up (tests/commands.py);
# start-up itself is the subject of tests that start real processes. A ```python block (its prelude
# first) runs in this process too, as ``python FILE`` of its text would. Every other command runs in bash.
_SHELL_SYNTAX = re.compile(r"[|;&<>$`(){}*?\\]|^\w+=")


def in_process_argv(command: str, block: Block) -> list[str] | None:
    """The argv after ``python`` of a command this process can run itself, or None."""
    code = command.split(" #")[0]
    if block.prelude or _SHELL_SYNTAX.search(code):
        return None
    argv = shlex.split(code)
    if len(argv) < 2 or argv[0] != "python" or not (argv[1] == "run.py" or argv[1].startswith("scripts/")):
        return None
    if any(arg.startswith(("launcher.nproc_per_node=", "launcher.nnodes=")) for arg in argv):
        return None
    if argv[1] == "scripts/bench_train.py":
        return None  # it trains Paddle models in several modes: a process of its own, as the reader runs it
    return argv[1:]


@contextlib.contextmanager
def in_folder(cwd: Path):
    """This process in ``cwd`` with the environment a README command gets, both put back after."""
    saved_env, saved_cwd, env = dict(os.environ), os.getcwd(), environment()
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    try:
        yield
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)


def run_command(argv: list[str], cwd: Path, capfd) -> subprocess.CompletedProcess:
    with in_folder(cwd):
        if argv[0] == "run.py":
            return cli(*argv[1:], capfd=capfd)
        if argv[0].startswith("scripts/"):
            return script(argv[0].removeprefix("scripts/"), *argv[1:], capfd=capfd)
        return script(cwd / argv[0], capfd=capfd)  # a python block, written to a file in cwd


def run_block(block: Block, cwd: Path, capfd=None) -> None:
    expect = int(block.options.get("expect", "0"))
    wanted = block.options.get("output")
    text = block.substituted()
    if block.language == "python":
        commands = [block.prelude + text]
    else:
        commands = shell_commands(text)
        if "tiny" in block.options:
            commands = [with_tiny_overrides(c) for c in commands]
    for command in commands:
        command = resolve_runs(command, cwd)  # <run>: the newest run when this command starts
        if block.language == "python":
            script = cwd / f"readme_{block.line}.py"
            script.write_text(command)
            argv = [sys.executable, script.name]
        else:
            argv = ["bash", "-c", block.prelude + command]
        if capfd is None:
            own = None
        elif block.language == "python":  # python FILE, as the reader runs it, in this process
            own = [script.name]
        else:
            own = in_process_argv(command, block)
        if own is not None:
            result = run_command(own, cwd, capfd)
        else:
            result = subprocess.run(argv, cwd=cwd, env=environment(), capture_output=True, text=True, timeout=1800)
        output = result.stdout + result.stderr
        shown = f"{block.name}: {argv[-1]!r} exited {result.returncode}, expected {expect}\n{output[-4000:]}"
        assert result.returncode == expect, shown
        assert "Traceback" not in output, shown
        if wanted:
            assert wanted in output, f"{block.name}: {wanted!r} not in the output of {argv[-1]!r}\n{output[-4000:]}"


# ---------------------------------------------------------------------- fast: markers and transcripts


def test_every_command_block_is_run_or_skipped_with_a_reason():
    assert BLOCKS, "no command blocks found in README.md"
    for block in BLOCKS:
        if "skip" in block.options:
            assert block.options["skip"], f"{block.name}: skip needs a reason (skip=REASON)"
        block.substituted()  # every sub still matches the README's text
        if block.language != "python" and not block.is_transcript:
            assert shell_commands(block.text), f"{block.name}: no commands"
    skipped = [b for b in BLOCKS if "skip" in b.options]
    assert len(skipped) < len(BLOCKS) / 2, "most of the README is skipped"


@pytest.mark.slow
@pytest.mark.parametrize("block", [b for b in BLOCKS if b.is_transcript], ids=lambda b: f"line{b.line}")
def test_quoted_messages_are_the_real_ones(block, tmp_path, capfd):
    """Each ``$ command`` of a transcript prints exactly the lines the README shows under it (a plain
    ``python run.py ...`` in this process, as the blocks' commands)."""
    cwd = scratch(tmp_path)
    for command, expected in transcript(block.substituted()):
        own = in_process_argv(command, block)
        if own is not None:
            result = run_command(own, cwd, capfd)
        else:
            result = subprocess.run(
                ["bash", "-c", command], cwd=cwd, env=environment(), capture_output=True, text=True, timeout=600
            )
        assert (result.stdout + result.stderr).strip() == expected, f"{block.name}: {command}"
        assert result.returncode == int(block.options.get("expect", "2"))


# ---------------------------------------------------------------------- slow: every other block


@pytest.mark.slow
@pytest.mark.parametrize("blocks", _units())
def test_readme_blocks_run(blocks, tmp_path, capfd):
    cwd = scratch(tmp_path)
    for block in blocks:
        run_block(block, cwd, capfd)
