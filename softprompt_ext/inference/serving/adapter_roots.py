"""Where `POST /admin/adapters` may read: the configured adapter roots (`--adapter-root`; default: the folders
of the `--adapter` values given at start).

A source is a local path when it is absolute, starts with `.` or `~`, holds a `..` part or a backslash, or
names something that exists (relative to the server's working directory); it is then resolved (symlinks
followed, `subfolder` joined) and must lie inside a root. Anything else is a Hub repo id
(`owner/name` or `name`). A refused path gets one message, whatever is or is not at that path, so the
answer never tells a file from a directory from a missing path.
"""

from __future__ import annotations

import os
import re

from .errors import ApiError
from .limits import clip
from .registry import discover

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


def default_roots(specs) -> list[str]:
    """The folders of `--adapter` values that are local: a folder of adapters itself, an adapter directory
    itself (so a name can be unloaded and loaded again from where it came)."""
    roots = []
    for spec in specs:
        source = spec.partition("=")[2] if "=" in spec and not os.path.exists(spec) else spec
        if os.path.isdir(source):
            roots.append(os.path.realpath(source))
        else:
            roots.extend(os.path.realpath(src) for _, src in discover(spec) if os.path.isdir(src))
    return list(dict.fromkeys(roots))


def parse_roots(text: str | None) -> list[str]:
    """The real paths of a `--adapter-root` value (folders separated by `os.pathsep`)."""
    return [os.path.realpath(os.path.expanduser(part)) for part in (text or "").split(os.pathsep) if part.strip()]


def _is_path(source: str) -> bool:
    parts = source.replace("\\", "/").split("/")
    return (os.path.isabs(source) or source.startswith((".", "~")) or ".." in parts or "\\" in source
            or os.path.lexists(source) or not _HUB_ID.match(source))


def confine(source: str, subfolder: str | None, roots: list[str]) -> str:
    """The source to load: a local path resolved to its real path inside one of `roots`, or a Hub id as given.
    Raises a 403 `ApiError` (one message for every refused path) otherwise."""
    if subfolder is not None and (os.path.isabs(subfolder) or ".." in subfolder.replace("\\", "/").split("/")):
        raise ApiError(403, f"subfolder {clip(subfolder)} leaves the adapter's folder; pass a relative subfolder "
                       "without '..'.", "permission_error", param="subfolder")
    if not _is_path(source):
        return source
    real = os.path.realpath(os.path.expanduser(source))
    inner = os.path.realpath(os.path.join(real, subfolder)) if subfolder else real
    for root in roots:
        if all(os.path.commonpath([p, root]) == root for p in (real, inner)):
            return real
    raise ApiError(403, f"source {clip(source)} is not inside an adapter root of this server, so it is not "
                   "loaded; admin loads read only the folders of --adapter-root (default: the --adapter folders "
                   "given at start).", "permission_error", param="source")


__all__ = ["confine", "default_roots", "parse_roots"]
