"""README.md's code blocks, and how tests/test_readme.py runs each one (its ``readme-test`` marker).

Every ```bash, ```sh, ```console and ```python block of the README runs in a test; a ```text
block whose lines start with ``$ `` is a transcript: each ``$ command`` runs and what it prints
must equal the lines under it, verbatim. Other ```text blocks (trees, tables) are not commands.

How a block runs is said by an HTML comment on the line before it (invisible on GitHub)::

    <!-- readme-test: group=stages; tiny; sub=<a> => b | [x] => ; expect=2; output=does not exist
    prelude lines: Python code run before a python block, shell lines before a bash block
    -->

* ``skip=REASON``: the block cannot run here (a Slurm cluster, a GPU, a server on another
  host, a reinstall of the shared environment); the reason is the skip's message.
* ``group=NAME``: the group's blocks run in README order in one scratch folder (e.g. train, then
  eval of the model it wrote); without a group a block gets its own folder. The folder links
  ``run.py``, ``conf/`` and ``scripts/`` of the checkout, so ``outputs/`` is the scratch one.
* ``tiny``: ``TINY_OVERRIDES`` (one epoch of two steps, 32 px, PP-LCNet x0.25, no export at the end
  of training, ...) are appended
  to every ``run.py`` command of the block.
* ``sub=A => B | C => D``: literal replacements in the block before it runs (e.g. an optional
  ``[...]`` argument, a bigger-than-needed size); `` | `` (with its spaces) separates them, so a
  ``|`` within one (``flat|ivf|hnsw``) stays. ``<run>`` always becomes the newest run folder
  under ``outputs/runs`` when the command runs.
* ``expect=N``: each command must exit with N (default 0); ``output=TEXT``: and print TEXT.

A block without a marker runs as written. Shell blocks run command by command (``\\``
continuations joined) with ``bash``, ``python`` being this interpreter.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
COMMAND_LANGUAGES = ("bash", "sh", "console", "shell", "python")
TINY_OVERRIDES = (
    "trainer.epochs=1",
    "trainer.steps_per_epoch=2",
    "data.image_size=32",
    "backbone.scale=0.25",
    "data.num_workers=0",
    "eval.engine=dygraph",
    "export.check_images=4",
    "export.cpu_onednn=off",
    "export.after_train=false",
)  # the blocks that export run stage=export
_MARKER = re.compile(r"<!--\s*readme-test:(.*?)-->", re.S)
_FENCE = re.compile(r"^```(\S*)\s*$")


@dataclass
class Block:
    line: int  # 1-based line of the opening fence
    language: str
    text: str
    marker: str | None = None  # the marker's first line, None without one
    prelude: str = ""
    options: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"README.md:{self.line} ({self.language})"

    @property
    def is_transcript(self) -> bool:
        return self.language == "text" and any(line.startswith("$ ") for line in self.text.splitlines())

    @property
    def runs(self) -> bool:
        return self.language in COMMAND_LANGUAGES or self.is_transcript

    def substituted(self) -> str:
        text = self.text
        for rule in filter(None, (r.strip() for r in self.options.get("sub", "").split(" | "))):
            old, _, new = rule.partition("=>")
            if old.strip() not in text:
                raise ValueError(f"{self.name}: sub {old.strip()!r} is not in the block (the README changed?)")
            text = text.replace(old.strip(), new.strip())
        return text


def read_blocks(path: Path = README) -> list[Block]:
    """The fenced blocks of ``path`` with the marker right before each (blank lines between allowed)."""
    lines = path.read_text(encoding="utf-8").split("\n")
    blocks, i = [], 0
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        start, language = i, fence.group(1)
        end = i + 1
        while end < len(lines) and lines[end].rstrip() != "```":
            end += 1
        block = Block(start + 1, language, "\n".join(lines[start + 1 : end]) + "\n")
        marker = _marker_before(lines, start)
        if marker is not None:
            block.marker, block.prelude = marker
            block.options = parse_options(block.marker)
        blocks.append(block)
        i = end + 1
    return blocks


def _marker_before(lines: list[str], fence: int) -> tuple[str, str] | None:
    j = fence - 1
    while j >= 0 and not lines[j].strip():
        j -= 1
    if j < 0 or not lines[j].strip().endswith("-->"):
        return None
    k = j
    while k >= 0 and "<!--" not in lines[k]:
        k -= 1
    found = _MARKER.search("\n".join(lines[k : j + 1])) if k >= 0 else None
    if not found:
        return None
    first, _, rest = found.group(1).partition("\n")
    return first.strip(), rest.rstrip() + ("\n" if rest.strip() else "")


def parse_options(marker: str) -> dict[str, str]:
    """``k=v; flag; k=v`` -> ``{k: v, flag: ""}`` (a value may hold ``=``; ``;`` separates)."""
    options = {}
    for part in filter(None, (p.strip() for p in marker.split(";"))):
        key, _, value = part.partition("=")
        if key.strip() not in ("skip", "group", "tiny", "sub", "expect", "output"):
            raise ValueError(f"unknown readme-test option {key.strip()!r} in {marker!r}")
        options[key.strip()] = value.strip()
    return options


def shell_commands(text: str) -> list[str]:
    """Logical command lines of a shell block: ``\\`` continuations joined, blank and comment lines
    and a leading ``$ `` prompt dropped."""
    commands, current = [], ""
    for raw in text.splitlines():
        line = raw.rstrip()
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if not current and line.startswith("$ "):
            line = line[2:]
        current += line[:-1] + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            commands.append(current.strip())
            current = ""
    if current:
        commands.append(current.strip())
    return commands


def transcript(text: str) -> list[tuple[str, str]]:
    """``[(command, expected output)]`` of a ``$ command`` / output transcript."""
    pairs: list[tuple[str, list[str]]] = []
    for line in text.rstrip("\n").splitlines():
        if line.startswith("$ "):
            pairs.append((line[2:], []))
        elif pairs:
            pairs[-1][1].append(line)
    return [(command, "\n".join(out).strip()) for command, out in pairs]


def with_tiny_overrides(command: str) -> str:
    """``command`` with ``TINY_OVERRIDES`` appended when it runs ``run.py`` (before a trailing comment)."""
    if "run.py" not in command:
        return command
    code, hash_, comment = command.partition(" #")
    return f"{code.rstrip()} {' '.join(TINY_OVERRIDES)}" + (f"  #{comment}" if hash_ else "")
