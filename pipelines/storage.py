"""Paths for the extraction stage: local files, or URLs of any filesystem Apache Beam knows (gs://, s3://,
hdfs://, ...), through ``apache_beam.io.filesystems.FileSystems``.

Local paths keep the plain ``os`` calls they always had (same files, same speed); only URLs go through
Beam. What ffmpeg must read (films) is first copied to a worker-local file by ``LocalCopies``: streamed in
chunks, shared by the threads of a worker process, kept while disk space allows so that the next segment
of the same film on that worker does not download it again.

    is_url(path)                   "scheme://..." (any scheme; see ``check`` for whether Beam has it here)
    join, basename, dirname        path arithmetic that keeps "gs://bucket/" intact
    exists, isdir, isfile, size    isdir: a folder, or a prefix with objects under it (buckets have no folders)
    read_bytes, open_read          whole file / a seekable binary stream (zip files are read in place)
    write_bytes, write_json        atomic: a sibling temp file, then a rename (os.replace locally)
    rename, delete, remove_tree    rename overwrites (HDFS refuses to: the old file is removed first)
    walk, children, listdir        files under a folder URL: all of them / those directly in it ([FileMetadata])
    match(pattern), escape(path)   glob URLs ("*" within a folder, "**" across); a name with "[" taken literally
    films                          the worker's ``LocalCopies`` of remote films
"""
import atexit
import collections
import contextlib
import itertools
import json
import os
import posixpath
import re
import shutil
import tempfile
import threading
import uuid

from pipelines import atomic
from pipelines.errors import CadlError

COPY_CHUNK = 8 * 2 ** 20     # bytes per read when copying a remote file: memory stays at one chunk
_EXTRAS = {"gs": "gcp", "s3": "aws", "hdfs": "hadoop", "az": "azure"}  # pip extra of apache-beam per scheme


def is_url(path):
    return "://" in os.fspath(path)


def _fs():
    from apache_beam.io.filesystems import FileSystems
    return FileSystems


def _uncompressed():
    from apache_beam.io.filesystem import CompressionTypes
    return CompressionTypes.UNCOMPRESSED


def check(url):
    """Raise ``CadlError`` unless Beam has a filesystem for ``url``'s scheme in this process."""
    scheme = url.split("://", 1)[0]
    try:
        _fs().get_filesystem(url)
    except Exception:  # ValueError (unknown scheme) or BeamIOError (its client library is missing)
        extra = _EXTRAS.get(scheme)
        hint = (f"pip install 'apache-beam[{extra}]'" if extra else
                "a module defining a Beam FileSystem for it must be imported first")
        raise CadlError(f"{url}: Apache Beam has no filesystem for {scheme}:// in this environment ({hint})") \
            from None


def normalize(path):
    """Local: an absolute path. URL: as given, without a trailing "/"."""
    path = os.fspath(path)
    if is_url(path):
        scheme, rest = path.split("://", 1)
        return f"{scheme}://{rest.rstrip('/')}" if rest.rstrip("/") else path
    return os.path.abspath(path)


def join(folder, *names):
    if not is_url(folder):
        return os.path.join(folder, *names)
    return _fs().join(folder, *[n for n in names if n])


def basename(path):
    return posixpath.basename(path.rstrip("/")) if is_url(path) else os.path.basename(path)


def dirname(path):
    if not is_url(path):
        return os.path.dirname(path)
    scheme, rest = path.rstrip("/").split("://", 1)
    return f"{scheme}://{posixpath.dirname(rest)}"


def relative(path, folder):
    """``path`` relative to ``folder`` ("/"-separated for URLs)."""
    if not is_url(path):
        return os.path.relpath(path, folder)
    prefix = folder.rstrip("/") + "/"
    return path[len(prefix):] if path.startswith(prefix) else basename(path)


def inside(path, folder):
    """True when ``path`` is ``folder`` or below it."""
    if is_url(path) or is_url(folder):
        path, folder = path.rstrip("/"), folder.rstrip("/")
        return path == folder or path.startswith(folder + "/")
    path, folder = os.path.abspath(path), os.path.abspath(folder)
    return path == folder or path.startswith(folder + os.sep)


# -- reading --------------------------------------------------------------------------------------------
def escape(path):
    """``path`` as a Beam match pattern that matches only itself ("Film [1080p].mkv": "[" is a wildcard)."""
    return re.sub(r"([*?\[])", r"[\1]", path)


def exists(path):
    return _fs().exists(path) if is_url(path) else os.path.exists(path)


def isdir(path):
    """Local: a folder. URL: a folder or prefix with at least one file under it."""
    if not is_url(path):
        return os.path.isdir(path)
    try:
        return bool(_listing(path, recursive=True, limit=1))
    except Exception:  # listing a file (HDFS) or a missing folder: not a folder
        return False


def isfile(path):
    if not is_url(path):
        return os.path.isfile(path)
    return exists(path) and not path.endswith("/") and not isdir(path)


def size(path):
    if not is_url(path):
        return os.path.getsize(path)
    return file_metadata(path).size_in_bytes


def file_metadata(path):
    """Beam's ``FileMetadata`` (path, size_in_bytes, last_updated_in_seconds) of a file URL; ``OSError`` when
    there is no such file."""
    return _remote(path, lambda: _fs().get_filesystem(path).metadata(path))


def metadata(path):
    """(size in bytes, modification time in seconds since the epoch) of a file URL."""
    meta = file_metadata(path)
    return meta.size_in_bytes, float(meta.last_updated_in_seconds or 0.0)


def open_read(path):
    """A seekable binary stream (no decompression: a .gz still is its bytes)."""
    if not is_url(path):
        return open(path, "rb")
    return _remote(path, lambda: _fs().open(path, compression_type=_uncompressed()))


def read_bytes(path):
    if not is_url(path):
        with open(path, "rb") as f:
            return f.read()
    with open_read(path) as f:
        return _remote(path, f.read)


def _remote(path, call):
    """Run ``call``; errors of a remote filesystem's client become ``OSError`` (a skipped input, not a crash)."""
    try:
        return call()
    except OSError:
        raise
    except Exception as e:
        raise OSError(f"{path}: {type(e).__name__}: {e}") from e


def _listing(folder, recursive, limit=None):
    """``FileMetadata`` under a folder URL: on object stores (gs, s3) the files under the prefix, all of them
    or (not ``recursive``) those directly in it; on filesystems with folders (hdfs) one level, sub-folders
    included (``recursive`` cannot apply). Raises ``BeamIOError`` when a folder cannot be listed."""
    folder = folder.rstrip("/")
    filesystem = _fs().get_filesystem(folder)
    if filesystem.has_dirs():
        # FileSystem._list is what Beam's match runs; match itself would list the parent of the first
        # wildcard, and a literal "[" in a folder's name ("Film [1080p]") counts as one.
        listed = filesystem._list(folder)
        return list(listed if limit is None else itertools.islice(listed, limit))
    [result] = _fs().match([escape(folder) + ("/**" if recursive else "/*")],
                           limits=None if limit is None else [limit])
    return [m for m in result.metadata_list if not m.path.endswith("/")]  # gs:// "folder" placeholders


def children(folder):
    """``FileMetadata`` of the files (and, on hdfs, sub-folders) directly in a folder URL, sorted by path."""
    return sorted(_listing(folder, recursive=False), key=lambda m: m.path)


def listdir(folder):
    """Names of the files (and, on hdfs, sub-folders) directly in a folder URL, sorted."""
    return [basename(m.path) for m in children(folder)]


def walk(folder):
    """Every file under a folder URL, recursively, as ``FileMetadata`` sorted by path.

    Filesystems without folders (gs, s3) list a prefix in one call; those with folders (hdfs) list one level
    at a time, so sub-folders are listed in turn (an entry that cannot be listed is a file).
    """
    top = folder.rstrip("/")
    if not _fs().get_filesystem(top).has_dirs():
        return sorted(_listing(top, recursive=True), key=lambda m: m.path)
    out, pending, seen = [], [top], set()
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        seen.add(current)
        try:
            entries = _listing(current, recursive=False)
        except Exception:
            continue
        for meta in entries:
            try:
                below = _listing(meta.path, recursive=False, limit=1)
            except Exception:  # a file: it cannot be listed
                below = []
            if below:
                pending.append(meta.path.rstrip("/"))
            else:
                out.append(meta)
    return sorted(out, key=lambda m: m.path)


def match(pattern):
    """Files matching a URL or glob URL (``*`` stays within a folder, ``**`` crosses them), sorted by path.

    Beam lists one level on filesystems with folders (hdfs), so ``hdfs://x/*/y.mp4`` or ``hdfs://x/**.mp4``
    would miss sub-folders there: such a glob is matched against a walk of the folder before its first
    wildcard instead.
    """
    fs = _fs()
    wild = re.search(r"[*?\[]", pattern)
    if wild and fs.get_filesystem(pattern).has_dirs() and ("/" in pattern[wild.start():] or "**" in pattern):
        from apache_beam.io.filesystem import FileSystem

        regex = re.compile(FileSystem.translate_pattern(pattern))
        top = pattern[:wild.start()].rsplit("/", 1)[0]  # (a literal "[" in a name is a wildcard here too)
        return [m for m in walk(top) if regex.match(m.path)]
    [result] = fs.match([pattern])
    return sorted((m for m in result.metadata_list if not m.path.endswith("/")), key=lambda m: m.path)


# -- writing --------------------------------------------------------------------------------------------
def makedirs(folder):
    if not is_url(folder):
        os.makedirs(folder, exist_ok=True)
        return
    if not isdir(folder):
        try:
            _fs().mkdirs(folder)  # a no-op on object stores; HDFS refuses an existing folder
        except Exception:
            pass


def write_bytes(path, data):
    """Write ``data`` so that readers only ever see a complete file: a sibling temp file, then a rename."""
    if not is_url(path):
        atomic.write_bytes(path, data)
        return
    tmp = join(dirname(path), f".{basename(path)}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with _remote(tmp, lambda: _fs().create(tmp, compression_type=_uncompressed())) as f:
            f.write(data)
        rename(tmp, path)
    except BaseException:
        with contextlib.suppress(Exception):
            _fs().delete([tmp])
        raise


def write_json(path, obj):
    """The same bytes as ``atomic.write_json`` (indented, key-sorted JSON), at a path or a URL."""
    if not is_url(path):
        atomic.write_json(path, obj)
        return
    write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=atomic._jsonable) + "\n").encode())


def read_json(path):
    if not is_url(path):
        return atomic.read_json(path)
    return json.loads(read_bytes(path).decode())


def rename(source, destination):
    """Move a file, replacing ``destination`` (Beam's HDFS rename refuses an existing one: remove it first)."""
    fs = _fs()
    try:
        fs.rename([source], [destination])
    except Exception:
        if not (is_url(destination) and fs.exists(destination)):
            raise
        fs.delete([destination])
        fs.rename([source], [destination])


def delete(path):
    if not is_url(path):
        os.remove(path)
    else:
        _fs().delete([path])


def remove_tree(folder):
    """Delete a folder and everything in it; quietly does nothing when it is not there."""
    if not is_url(folder):
        shutil.rmtree(folder, ignore_errors=True)
        return
    with contextlib.suppress(Exception):
        files = [m.path for m in walk(folder)]
        if files:
            _fs().delete(files)
    with contextlib.suppress(Exception):
        if _fs().exists(folder):  # an (now empty) folder on filesystems that have them
            _fs().delete([folder])


# -- worker-local copies of remote films -------------------------------------------------------------------
class _Copy:
    def __init__(self, nbytes):
        self.nbytes, self.refs, self.path, self.error = nbytes or 0, 0, None, None
        self.ready = threading.Event()


class LocalCopies:
    """Worker-local copies of remote files, for programs that need a real file (ffmpeg seeks in films).

    ``acquire(url, size)`` (or ``with copies.local(url, size) as path:``) gives a local file holding ``url``'s
    bytes until the matching ``release``. The first user downloads it (``COPY_CHUNK`` bytes at a time);
    threads asking for the same file meanwhile wait for that download instead of starting their own. A copy
    that no one uses any more stays, so the next segment of the same film on this worker reuses it, until the
    copies together would exceed ``budget`` bytes (default: half the free space of the temp folder's disk when
    first needed); then the least recently used unused ones go (``budget=0``: each goes as soon as it is
    released). Copies in use are never removed. What is left is deleted by ``clear()`` and at exit.
    """

    def __init__(self, folder=None, budget=None):
        self._parent, self._budget, self._folder = folder, budget, None
        self._lock = threading.Lock()
        self._entries = collections.OrderedDict()  # (url, size) -> _Copy, least recently used first
        self.downloads = 0                          # files copied so far (tests, progress lines)

    def acquire(self, url, size=None):
        """A local file holding ``url``'s bytes (``size``: the size listed for it, checked and part of the key);
        give it back with ``release(url, size)``. Raises ``OSError`` when it cannot be copied."""
        key = (url, size)
        with self._lock:
            entry = self._entries.get(key)
            owner = entry is None
            if owner:
                entry = self._entries[key] = _Copy(size)
            entry.refs += 1
            self._entries.move_to_end(key)
        try:
            if owner:
                try:
                    self._evict()  # room for this copy (counted already: it is in use)
                    entry.path = self._download(url, size)
                except BaseException as e:
                    entry.error = e
                    raise
                finally:
                    entry.ready.set()
            else:
                entry.ready.wait()
                if entry.error is not None:
                    raise OSError(str(entry.error))
        except BaseException:
            self._unref(key, entry)
            raise
        return entry.path

    def release(self, url, size=None):
        key = (url, size)
        with self._lock:
            entry = self._entries[key]
        self._unref(key, entry)

    @contextlib.contextmanager
    def local(self, url, size=None):
        path = self.acquire(url, size)
        try:
            yield path
        finally:
            self.release(url, size)

    def _unref(self, key, entry):
        with self._lock:
            entry.refs -= 1
            if entry.error is not None and self._entries.get(key) is entry:
                del self._entries[key]  # a failed copy is tried again by the next user
        self._evict()

    def clear(self):
        """Delete every copy not in use (and the folder, when empty)."""
        with self._lock:
            for key, entry in list(self._entries.items()):
                if entry.refs == 0:
                    self._drop(key)
            if not self._entries and self._folder:
                shutil.rmtree(self._folder, ignore_errors=True)
                self._folder = None

    def files(self):
        """Local paths of the copies held now."""
        with self._lock:
            return [e.path for e in self._entries.values() if e.path]

    def _evict(self):
        with self._lock:
            budget = self._budget if self._budget is not None else self._default_budget()
            held = sum(e.nbytes for e in self._entries.values() if e.path or e.refs)
            for key, entry in list(self._entries.items()):
                if held <= budget:
                    break
                if entry.refs == 0 and entry.path:
                    held -= entry.nbytes
                    self._drop(key)

    def _default_budget(self):
        self._budget = shutil.disk_usage(self._parent or tempfile.gettempdir()).free // 2
        return self._budget

    def _drop(self, key):
        entry = self._entries.pop(key)
        if entry.path:
            with contextlib.suppress(OSError):
                os.remove(entry.path)

    def _download(self, url, size):
        with self._lock:
            if self._folder is None:
                parent = self._parent or tempfile.gettempdir()
                _sweep(parent)
                self._folder = tempfile.mkdtemp(prefix=f"{_COPIES}{os.getpid()}-", dir=parent)
                atexit.register(shutil.rmtree, self._folder, True)
            folder = self._folder
        # Keep the extension: ffmpeg guesses some formats (.ts, raw streams) from it.
        fd, path = tempfile.mkstemp(suffix=os.path.splitext(basename(url))[1][:16], dir=folder)
        try:
            with os.fdopen(fd, "wb") as out, open_read(url) as source:
                _remote(url, lambda: shutil.copyfileobj(source, out, COPY_CHUNK))
            got = os.path.getsize(path)
            if size is not None and got != size:
                raise OSError(f"{url}: read {got} bytes where {size} were listed (did it change while being "
                              "extracted?)")
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(path)
            raise
        with self._lock:
            self.downloads += 1
        return path


def _sweep(parent):
    """Delete the copies of worker processes that are gone: one that was killed never ran its atexit."""
    with contextlib.suppress(OSError), os.scandir(parent) as entries:
        for entry in entries:
            owner = re.fullmatch(rf"{_COPIES}(\d+)-\w+", entry.name)
            if owner and entry.is_dir(follow_symlinks=False) and not _alive(int(owner.group(1))):
                shutil.rmtree(entry.path, ignore_errors=True)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


_COPIES = "cadl-copies-"  # + pid + "-" + random: a worker process's folder of copies
films = LocalCopies()
