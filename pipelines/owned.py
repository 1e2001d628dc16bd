"""What cadl may delete or replace: files inside a folder it created, never an input, a model or anything else.

Every folder a job creates and may later clean up carries a small marker file, ``.cadl`` (JSON
``{"kind": ...}``): ``dataset`` (``cadl extract``'s output), ``run`` (``cadl train``'s run folder), ``frames``
(``cadl render``'s PNG-sequence output) and ``parts`` (a render's ``OUT.parts`` work folder). A job replaces a
folder only when its marker says the job made it, and deletes a file only when its path, resolved (symlinks
followed, ``..`` collapsed), lies inside the folder it owns: a manifest received from someone else that
names ``../victim.txt`` or ``/etc/passwd`` deletes nothing.

    member(folder, name)            folder/name when ``name`` is a plain relative name that resolves inside it
    mark(folder, kind), kind_of(folder)
    make_folder(path, role)         create a job's folder, or one line saying why it cannot be
    within(path, folder)            ``path`` resolved lies inside ``folder`` resolved (or is it)
"""
import json
import os

from pipelines.errors import CadlError

from pipelines import storage

MARKER = ".cadl"
KINDS = ("dataset", "run", "frames", "parts")


def within(path, folder):
    """True when ``path``, with symlinks and ``..`` resolved, is ``folder`` (resolved) or below it."""
    if storage.is_url(path) or storage.is_url(folder):
        return ".." not in path.split("/") and storage.inside(path, folder)
    return storage.inside(os.path.realpath(path), os.path.realpath(folder))


def member(folder, name):
    """``folder``/``name`` when ``name`` is relative, has no ``..`` part, and (locally) resolves strictly inside
    ``folder``; otherwise None. The only way a name read from a file (a manifest) becomes a path to delete."""
    if not isinstance(name, str) or not name or "\0" in name or "://" in name:
        return None
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or os.path.isabs(name) or ".." in parts:
        return None
    path = storage.join(folder, name)
    if storage.is_url(path):
        return path
    real, top = os.path.realpath(path), os.path.realpath(folder)
    return path if real.startswith(top.rstrip(os.sep) + os.sep) else None


def mark(folder, kind):
    """Write ``folder/.cadl`` saying which job made the folder (idempotent)."""
    assert kind in KINDS, kind
    if kind_of(folder) != kind:
        storage.write_json(storage.join(folder, MARKER), {"kind": kind})


def kind_of(folder):
    """The kind in ``folder``'s marker, or None (no marker, unreadable, not a folder)."""
    try:
        data = json.loads(storage.read_bytes(storage.join(folder, MARKER)).decode())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    except Exception:  # noqa: BLE001 - a remote filesystem's own "not found"
        return None
    return data.get("kind") if isinstance(data, dict) else None


def make_folder(path, role):
    """Create the folder ``path`` a job writes (``role``: "run folder", "work folder", ...) if needed; a file in
    its place or a folder that cannot be made is one line."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise CadlError(f"{path}: the {role} must be a folder; a file is in its place")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise CadlError(f"{path}: cannot create the {role} ({e.strerror})") from None
