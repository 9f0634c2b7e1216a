"""Integrity manifests of the folders recog writes and reads back: ``best_model/``,
``checkpoints/last/`` and ``export/``.

``manifest.json`` lists every other file of the folder with its size and SHA-256::

    {"format": "recog-manifest", "format_version": 1, "kind": "checkpoint" | "export",
     "recog_version": "0.1.0", "files": {"model.safetensors": {"size": 1234, "sha256": "..."}, ...}}

It is written last, into the temp directory that ``recog.utils.atomic.replacing_dir`` swaps in
whole, so a folder with a manifest is complete as its writer left it. Readers call
``check_file`` for each file they use (or ``verify`` for the whole folder): a missing, truncated
or altered file is an ``IntegrityError`` naming the file and what to do, before its bytes are
parsed. Reading the manifest also checks that the folder holds nothing it does not list (a file,
folder or symbolic link added afterwards is an ``IntegrityError``). A folder without
``manifest.json`` (written by recog before manifests existed) still loads, with one warning per
folder.

``read_json`` is the JSON reader for every file of these folders: at most ``MAX_JSON_BYTES``, nested
at most ``MAX_JSON_DEPTH`` levels, or an ``IntegrityError`` (never a ``RecursionError``).
"""

import hashlib
import json
import logging
import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from recog.errors import RecogError

log = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
FORMAT, FORMAT_VERSION = "recog-manifest", 1
KINDS = ("checkpoint", "export")
_WARNED_LEGACY: set = set()
MAX_JSON_BYTES = 64 << 20  # state.json with the RNG states of many processes is well below
MAX_JSON_DEPTH = 64  # recog's JSON files nest a few levels


class IntegrityError(RecogError):
    """A folder's file is missing, truncated or altered (by its manifest), or a file read back is malformed."""


def recog_version() -> str:
    try:
        from importlib.metadata import version

        return version("recog")
    except Exception:  # noqa: BLE001 - not installed (source checkout): the project's own version
        return "0.1.0"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(directory, kind: str) -> dict[str, Any]:
    """Write ``directory/manifest.json`` listing every other file under ``directory`` (call it
    last, inside the temp directory of ``atomic.replacing_dir``); returns what was written."""
    from recog.utils import atomic

    if kind not in KINDS:
        raise ValueError(f"unknown manifest kind {kind!r}: one of {KINDS}")
    directory = Path(directory)
    files = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        name = path.relative_to(directory).as_posix()
        if name != MANIFEST_FILE:
            files[name] = {"size": path.stat().st_size, "sha256": sha256_of(path)}
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "recog_version": recog_version(),
        "files": files,
    }
    atomic.write_file(directory / MANIFEST_FILE, json.dumps(manifest, indent=2) + "\n")
    return manifest


def read_manifest(directory, kind: str, what: str, check_unlisted: bool = True) -> dict[str, Any] | None:
    """The checked ``manifest.json`` of ``directory``; None (after one warning) when there is none.

    ``what`` names the folder in messages (e.g. "checkpoint", "export"). Every field is
    type-checked: a malformed manifest is an ``IntegrityError`` saying so; so is anything in the
    folder it does not list (``unlisted_files``), unless not ``check_unlisted``.
    """
    directory = Path(directory)
    path = directory / MANIFEST_FILE
    if not path.is_file():
        key = str(directory.resolve())
        if key not in _WARNED_LEGACY:
            _WARNED_LEGACY.add(key)
            log.warning(
                "%s has no %s (written by a recog version without integrity manifests): its files are "
                "loaded unverified; write it again with this version to add one",
                directory,
                MANIFEST_FILE,
            )
        return None
    fix = _fix(what)
    manifest = read_json(path, what)
    check_fields(
        path,
        manifest,
        {"format": str, "format_version": int, "kind": str, "recog_version": str, "files": dict},
        required=("format", "format_version", "kind", "files"),
    )
    if manifest["format"] != FORMAT:
        raise IntegrityError(f"{path}: format {manifest['format']!r} is not {FORMAT!r}; {fix}")
    if manifest["format_version"] > FORMAT_VERSION:
        raise IntegrityError(
            f"{path} was written by a newer recog (manifest format version "
            f"{manifest['format_version']} > {FORMAT_VERSION}): update recog to load it"
        )
    if manifest["kind"] != kind:
        raise IntegrityError(f"{directory} is a recog {manifest['kind']}, not a {kind} (by its {MANIFEST_FILE})")
    for name, entry in manifest["files"].items():
        where = f"{path} files[{name!r}]"
        if not isinstance(entry, dict):
            raise IntegrityError(f"{where} must be an object with size and sha256, got {type(entry).__name__}; {fix}")
        check_fields(Path(where), entry, {"size": int, "sha256": str}, required=("size", "sha256"))
        if name.startswith("/") or ".." in Path(name).parts:
            raise IntegrityError(f"{where}: a file outside the folder; {fix}")
    if check_unlisted:
        extra = unlisted_files(directory, manifest)
        if extra:
            raise IntegrityError(
                f"{directory / extra[0]} is not listed in {path}: it was added after the {what} was written; "
                f"remove it, or {fix}"
            )
    return manifest


def read_json(path: Path, what: str = "file") -> Any:
    """The JSON value of ``path``; ``IntegrityError`` naming it if it cannot be read, is not JSON, is
    over ``MAX_JSON_BYTES`` or nests deeper than ``MAX_JSON_DEPTH`` levels."""
    path = Path(path)
    fix = _fix(what)
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_JSON_BYTES + 1)
        if len(raw) > MAX_JSON_BYTES:
            raise IntegrityError(f"{path} is over {MAX_JSON_BYTES >> 20} MiB: not a file recog wrote; {fix}")
        data = json.loads(raw.decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise IntegrityError(f"{path} is not valid JSON ({error}): the {what} is damaged; {fix}") from None
    except RecursionError:
        data = None
        depth = MAX_JSON_DEPTH + 1
    else:
        depth = json_depth(data)
    if depth > MAX_JSON_DEPTH:
        raise IntegrityError(f"{path} nests deeper than {MAX_JSON_DEPTH} levels: not a file recog wrote; {fix}")
    return data


def json_depth(value: Any) -> int:
    """How deep lists and objects nest in ``value`` (a scalar: 0), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, list)):
            deepest = max(deepest, depth)
            if depth <= MAX_JSON_DEPTH:  # deeper is refused anyway
                stack.extend((child, depth + 1) for child in (node.values() if isinstance(node, dict) else node))
    return deepest


def check_file(
    directory, name: str, kind: str, what: str, manifest: dict[str, Any] | None = None, required: bool = True
) -> bool:
    """Check ``directory/name`` against the folder's manifest before it is read.

    Returns whether the file exists. ``IntegrityError`` when the manifest lists it and it is
    missing, of another size or another SHA-256, or when the manifest exists but does not list an
    existing file (added after the folder was written). Without a manifest (a legacy folder) a
    missing file is an ``IntegrityError`` only when ``required``.
    """
    directory = Path(directory)
    if manifest is None:
        manifest = read_manifest(directory, kind, what)
    path = directory / name
    fix = _fix(what)
    if manifest is None:
        if required and not path.is_file():
            raise IntegrityError(f"{path} is missing: the {what} {directory} is incomplete; {fix}")
        return path.is_file()
    entry = manifest["files"].get(name)
    if entry is None:
        if path.exists():
            raise IntegrityError(
                f"{path} is not listed in {directory / MANIFEST_FILE}: it was added after the {what} "
                f"was written; remove it, or {fix}"
            )
        if required:
            raise IntegrityError(
                f"{path} is missing and the {what}'s {MANIFEST_FILE} does not list it: the {what} "
                f"{directory} lacks it; {fix}"
            )
        return False
    if not path.is_file():
        raise IntegrityError(
            f"{path} is missing (listed in {MANIFEST_FILE}, {entry['size']} bytes): the {what} "
            f"{directory} is incomplete; {fix}"
        )
    size = path.stat().st_size
    if size != entry["size"]:
        change = "truncated" if size < entry["size"] else "longer than written"
        raise IntegrityError(
            f"{path} is {change} ({size} bytes, {MANIFEST_FILE} says {entry['size']}): the {what} is damaged; {fix}"
        )
    if sha256_of(path) != entry["sha256"]:
        raise IntegrityError(
            f"{path} was altered (its SHA-256 differs from {MANIFEST_FILE}'s): the {what} is "
            f"damaged or was edited; {fix}"
        )
    return True


def verify(directory, kind: str, what: str, required: Iterable[str] = ()) -> dict[str, Any] | None:
    """Check every file the manifest lists (and that each of ``required`` exists), and that the
    folder holds no other file; returns the manifest, None for a legacy folder (``required`` still
    checked)."""
    directory = Path(directory)
    manifest = read_manifest(directory, kind, what)  # also: nothing in the folder that it does not list
    names = list(dict.fromkeys([*(manifest["files"] if manifest else ()), *required]))
    for name in names:
        check_file(directory, name, kind, what, manifest=manifest, required=name in required or manifest is not None)
    return manifest


def unlisted_files(directory, manifest: dict[str, Any]) -> list:
    """What ``directory`` holds beyond its manifest's files (and the manifest), as relative names:
    unlisted files, symbolic links (listed or not: recog writes none), other special files, and
    folders with no listed file below them. Symbolic links are not followed."""
    directory = Path(directory)
    listed = set(manifest["files"]) | {MANIFEST_FILE}
    holders = {parent.as_posix() for name in listed for parent in Path(name).parents}  # folders of listed files
    found = []
    for top, dirs, files in os.walk(directory):
        for name in dirs + files:
            path = Path(top) / name
            rel = path.relative_to(directory).as_posix()
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode) or not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
                found.append(rel)
            elif stat.S_ISDIR(mode) and rel not in holders:
                found.append(rel + "/")
            elif stat.S_ISREG(mode) and rel not in listed:
                found.append(rel)
        dirs[:] = [d for d in dirs if (Path(top) / d).relative_to(directory).as_posix() in holders]
    return sorted(found)


def check_fields(path: Path, data: Any, types: dict[str, Any], required: Iterable[str] = ()) -> None:
    """``IntegrityError`` unless ``data`` is a JSON object whose ``required`` keys are present and
    whose known keys have the given types (a tuple of types allowed; ``bool`` is not an ``int``)."""
    if not isinstance(data, dict):
        raise IntegrityError(f"{path} must hold a JSON object, got {type(data).__name__}; {_fix('file')}")
    absent = [key for key in required if key not in data]
    if absent:
        raise IntegrityError(f"{path} lacks {', '.join(absent)}: not a file recog wrote, or damaged; {_fix('file')}")
    for key, expected in types.items():
        if key in data and not _is_instance(data[key], expected):
            names = " or ".join(_type_name(t) for t in (expected if isinstance(expected, tuple) else (expected,)))
            raise IntegrityError(
                f"{path}: {key} must be {names}, got {type(data[key]).__name__} "
                f"{json.dumps(data[key])[:60]}; {_fix('file')}"
            )


def _is_instance(value: Any, expected) -> bool:
    expected = expected if isinstance(expected, tuple) else (expected,)
    if isinstance(value, bool):
        return bool in expected
    if float in expected and isinstance(value, int):
        return True
    return isinstance(value, tuple(t for t in expected if t is not None)) or (value is None and None in expected)


def _type_name(kind) -> str:
    return {
        None: "null",
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "true/false",
        dict: "an object",
        list: "a list",
    }.get(kind, getattr(kind, "__name__", str(kind)))


def _fix(what: str) -> str:
    if what == "export":
        return (
            "export the model again (python run.py stage=export model_path=<run>/best_model) or copy the folder "
            "again from where it came from"
        )
    if what == "file":
        return "write it again with recog, or copy it again from where it came from"
    return f"copy the {what} again from where it came from, or use another one (e.g. a run's best_model/)"
