"""Data roots: folders a worker reads videos from instead of receiving them.

A lab that keeps its videos on storage the worker can read declares it on the worker:
``sleap-rtc worker --data-root NAME=PATH`` (repeatable, read-only). The worker advertises
the root NAMES (never their paths) as the metadata property ``data_roots``, a flat list.

The client maps a local video to a root by a prefix: ``--data-root NAME=PREFIX`` on the
CLI, or the remembered mapping in ``data-roots.json`` in the client's config dir
(``DataRootMap.load`` / ``save``; the GUI writes it when the user picks a root once). A
video under PREFIX is sent as ``{root: NAME, path: <relative path>, size, sample}``
where ``sample`` is ``core.file_hashes.sampled_digest`` of the client's copy.

The worker (``resolve_in_root``) refuses: an unknown root; a path that is absolute, has a
``..`` part, a NUL, or more than ``MAX_ROOT_PATH_CHARS`` characters; a path that resolves
(links followed) outside the root; anything that is not a regular file; a size or sample
digest other than the client's. sleap-nn then reads the file where it is (never written).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import platformdirs

from sleap_rtc.core.config import APP_NAME
from sleap_rtc.core.file_hashes import sampled_digest
from sleap_rtc.core.json_store import read_json, write_json
from sleap_rtc.core.protocol import Prop

DATA_ROOTS_PROP = Prop.DATA_ROOTS.value
"""Worker metadata property: the names of its data roots (a flat list of strings)."""
MAX_ROOTS = 32
"""Most data roots one worker declares (and one client maps)."""
MAX_ROOT_PATH_CHARS = 4096
"""Longest path below a root a client may name."""
ROOT_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
"""A root name: letters, digits, ``_.-``, 1 to 64 characters."""
MAP_FILE = "data-roots.json"
"""The client's remembered prefix -> root mapping, in its config dir."""


class DataRootError(ValueError):
    """A data root (or a path in one) is refused; the message says why."""


@dataclass(frozen=True)
class RootRef:
    """A video on a worker's data root: root name, path below it, and what the client saw."""

    root: str
    path: str
    size: int
    sample: str

    def as_plan(self) -> dict:
        """The ``video`` mapping of a plan entry."""
        return {"root": self.root, "path": self.path, "size": self.size, "sample": self.sample}


def parse_root_spec(spec: str, what: str = "--data-root") -> tuple[str, str]:
    """``NAME=PATH`` -> ``(NAME, PATH)``; ``DataRootError`` when malformed."""
    name, sep, path = str(spec).partition("=")
    if not sep or not path:
        raise DataRootError(f"{what} {spec!r} must be NAME=PATH.")
    if not ROOT_NAME.match(name):
        raise DataRootError(f"{what} name {name!r} may only have letters, digits and _.- (1-64 characters).")
    return name, path


def worker_roots(specs: list[str] | tuple[str, ...]) -> dict[str, Path]:
    """The worker's ``--data-root`` specs as ``{name: resolved folder}``; each must be a folder."""
    if len(specs) > MAX_ROOTS:
        raise DataRootError(f"At most {MAX_ROOTS} data roots.")
    roots: dict[str, Path] = {}
    for spec in specs:
        name, path = parse_root_spec(spec)
        folder = Path(path).expanduser().resolve()
        if not folder.is_dir():
            raise DataRootError(f"--data-root {name}: {path} is not a folder.")
        if name in roots:
            raise DataRootError(f"--data-root {name} is given twice.")
        roots[name] = folder
    return roots


def check_root_path(path: object) -> str:
    """A relative path below a root, normalised; refuses absolute paths, ``..`` and NULs."""
    if not isinstance(path, str) or not path.strip():
        raise DataRootError("The path below a data root must be a non-empty relative path.")
    if len(path) > MAX_ROOT_PATH_CHARS or "\x00" in path:
        raise DataRootError("The path below a data root is too long or has a NUL character.")
    text = path.replace("\\", "/")
    if text.startswith("/") or re.match(r"^[A-Za-z]:", text):
        raise DataRootError(f"{path!r} is an absolute path; a data root takes paths relative to it.")
    parts = [p for p in PurePosixPath(text).parts if p not in ("", ".")]
    if not parts or ".." in parts:
        raise DataRootError(f"{path!r} climbs out of the data root with '..'.")
    return "/".join(parts)


def resolve_in_root(roots: dict[str, Path], ref: dict) -> Path:
    """The worker's check of a client's root reference (module docstring); returns the file."""
    name = ref.get("root")
    if not isinstance(name, str) or name not in roots:
        known = ", ".join(sorted(roots)) or "none"
        raise DataRootError(f"This worker has no data root {str(name)[:64]!r} (its roots: {known}).")
    rel = check_root_path(ref.get("path"))
    root = roots[name]
    target = (root / rel).resolve()
    if not target.is_relative_to(root):
        raise DataRootError(f"{name}:{rel} resolves outside the data root {name} (a link?); refused.")
    if not target.is_file():
        raise DataRootError(f"{name}:{rel} is not a file on this worker.")
    size, sample = ref.get("size"), ref.get("sample")
    actual = target.stat().st_size
    if not isinstance(size, int) or isinstance(size, bool) or size != actual:
        raise DataRootError(f"{name}:{rel} has {actual} bytes on this worker, not the {size} bytes the client has.")
    if not isinstance(sample, str) or sampled_digest(target) != sample:
        raise DataRootError(f"{name}:{rel} on this worker is not the file the client has (sampled blocks differ).")
    return target


def map_file() -> Path:
    """Where the client remembers its data-root mapping."""
    return Path(platformdirs.user_config_dir(APP_NAME)) / MAP_FILE


@dataclass
class DataRootMap:
    """The client's mapping of local folder prefixes to worker root names."""

    prefixes: dict[str, str]
    """Root name -> local folder (absolute, resolved)."""

    @classmethod
    def from_specs(cls, specs: list[str] | tuple[str, ...], base: DataRootMap | None = None) -> DataRootMap:
        """``NAME=PREFIX`` specs over ``base`` (the remembered map): specs win."""
        prefixes = dict(base.prefixes) if base else {}
        for spec in specs:
            name, prefix = parse_root_spec(spec)
            prefixes[name] = str(Path(prefix).expanduser().resolve())
        if len(prefixes) > MAX_ROOTS:
            raise DataRootError(f"At most {MAX_ROOTS} data roots.")
        return cls(prefixes)

    @classmethod
    def load(cls, path: Path | None = None) -> DataRootMap:
        """The remembered map (empty when there is none or it is unreadable)."""
        data = read_json(path or map_file())
        if not isinstance(data, dict):
            return cls({})
        return cls({k: v for k, v in data.items() if isinstance(k, str) and ROOT_NAME.match(k) and isinstance(v, str)})

    def save(self, path: Path | None = None) -> Path:
        """Remember this map (the GUI calls it when the user picked a root)."""
        path = path or map_file()
        write_json(path, self.prefixes, indent=2)
        return path

    def match(self, video: Path, offered: list[str] | None = None) -> RootRef | None:
        """The root reference of ``video`` when it lies under a mapped prefix (and, with
        ``offered``, that root is one the worker advertises); else ``None``."""
        local = Path(video).expanduser().absolute()
        for name, prefix in sorted(self.prefixes.items(), key=lambda kv: -len(kv[1])):
            if offered is not None and name not in offered:
                continue
            try:
                rel = local.relative_to(prefix)
            except ValueError:
                continue
            if not local.is_file():
                return None
            return RootRef(name, rel.as_posix(), local.stat().st_size, sampled_digest(local))
        return None


__all__ = [
    "DATA_ROOTS_PROP", "DataRootError", "DataRootMap", "MAP_FILE", "MAX_ROOTS", "MAX_ROOT_PATH_CHARS", "ROOT_NAME",
    "RootRef", "check_root_path", "map_file", "parse_root_spec", "resolve_in_root", "worker_roots",
]
