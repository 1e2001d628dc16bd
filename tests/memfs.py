"""Two real Apache Beam filesystems held in this process's memory, for testing URL inputs and outputs offline.

    memfs://...     no folders, a listing is every file under a prefix (like gs:// and s3://)
    memdirfs://...  folders, listed one level at a time, sub-folders included (like hdfs://)

Beam finds ``FileSystem`` subclasses by scheme once their module is imported, so ``import memfs`` is all a
test needs. Files live in a class-level dict (Beam makes a new filesystem object for every call), shared by
every thread of the process: use them with in-process workers (``--direct_running_mode multi_threading``).
``MemFileSystem.opens`` counts reads per path, so tests can tell how often a file was fetched, and paths under
a prefix in ``MemFileSystem.locked`` refuse every operation, like a bucket this account may not use.
"""
import collections
import io
import posixpath
import threading
import time

from apache_beam.io.filesystem import BeamIOError, CompressedFile, CompressionTypes, FileMetadata, FileSystem


class _Writer(io.BytesIO):
    """A file being written: it appears (whole) when closed, like an object in a bucket."""

    mode = "wb"

    def __init__(self, files, lock, path):
        super().__init__()
        self._files, self._lock, self._path = files, lock, path

    def close(self):
        if not self.closed:
            with self._lock:
                self._files[self._path] = (self.getvalue(), time.time())
        super().close()


class _Reader(io.BytesIO):
    mode = "rb"


class MemFileSystem(FileSystem):
    files = {}                              # path -> (bytes, modification time)
    opens = collections.Counter()           # path -> times opened for reading
    locked = set()                          # path prefixes that refuse every operation
    lock = threading.RLock()

    @classmethod
    def scheme(cls):
        return "memfs"

    @classmethod
    def reset(cls):
        with cls.lock:
            cls.files.clear()
            cls.opens.clear()
            cls.locked.clear()

    @classmethod
    def put(cls, path, data, mtime=None):
        with cls.lock:
            cls.files[path] = (bytes(data), time.time() if mtime is None else mtime)

    # -- paths ----------------------------------------------------------------------------------------------
    def join(self, basepath, *paths):
        out = basepath
        for p in paths:
            out = out.rstrip("/") + "/" + p.lstrip("/")
        return out

    def split(self, path):
        scheme, rest = path.split("://", 1)
        head, tail = posixpath.split(rest.rstrip("/"))
        return f"{scheme}://{head}", tail

    def mkdirs(self, path):
        pass

    def has_dirs(self):
        return False

    def _check(self, path):
        if any(path.startswith(prefix) for prefix in self.locked):
            raise PermissionError(f"403 Forbidden: {path}")

    def _list(self, dir_or_prefix):
        self._check(dir_or_prefix)
        with self.lock:
            listed = sorted((p, len(d), m) for p, (d, m) in self.files.items() if p.startswith(dir_or_prefix))
        for path, size, mtime in listed:
            yield FileMetadata(path, size, mtime)

    # -- files ----------------------------------------------------------------------------------------------
    def _wrap(self, raw, path, compression_type):
        compression_type = self._get_compression_type(path, compression_type)
        return raw if compression_type == CompressionTypes.UNCOMPRESSED else CompressedFile(raw, compression_type)

    def create(self, path, mime_type="application/octet-stream", compression_type=CompressionTypes.AUTO):
        self._check(path)
        return self._wrap(_Writer(self.files, self.lock, path), path, compression_type)

    def open(self, path, mime_type="application/octet-stream", compression_type=CompressionTypes.AUTO):
        self._check(path)
        with self.lock:
            if path not in self.files:
                raise BeamIOError("Open operation failed", {path: FileNotFoundError(path)})
            self.opens[path] += 1
            data = self.files[path][0]
        return self._wrap(_Reader(data), path, compression_type)

    def _each(self, operation, pairs, action):
        errors = {}
        for pair in pairs:
            try:
                with self.lock:
                    action(*pair) if isinstance(pair, tuple) else action(pair)
            except Exception as e:
                errors[pair] = e
        if errors:
            raise BeamIOError(f"{operation} operation failed", errors)

    def copy(self, source_file_names, destination_file_names):
        def copy(source, destination):
            self.files[destination] = (self.files[source][0], time.time())
        self._each("Copy", list(zip(source_file_names, destination_file_names)), copy)

    def rename(self, source_file_names, destination_file_names):
        def move(source, destination):
            self.files[destination] = self.files.pop(source)  # replaces an existing file, like gs://
        self._each("Rename", list(zip(source_file_names, destination_file_names)), move)

    def delete(self, paths):
        def delete(path):
            if path in self.files:
                del self.files[path]
                return
            under = [p for p in self.files if p.startswith(path.rstrip("/") + "/")]
            if not under:
                raise FileNotFoundError(path)
            for p in under:
                del self.files[p]
        self._each("Delete", list(paths), delete)

    def exists(self, path):
        self._check(path)
        with self.lock:
            return path in self.files

    def size(self, path):
        return self.metadata(path).size_in_bytes

    def last_updated(self, path):
        return self.metadata(path).last_updated_in_seconds

    def checksum(self, path):
        return str(self.size(path))

    def metadata(self, path):
        with self.lock:
            if path not in self.files:
                raise BeamIOError("Metadata operation failed", {path: FileNotFoundError(path)})
            data, mtime = self.files[path]
        return FileMetadata(path, len(data), mtime)


class MemDirFileSystem(MemFileSystem):
    """Folders, like HDFS: a listing is one level deep and names sub-folders (size 0); listing a file fails;
    a folder exists while it holds files."""

    @classmethod
    def scheme(cls):
        return "memdirfs"

    def has_dirs(self):
        return True

    def _folders(self, path):
        prefix = path.rstrip("/") + "/"
        with self.lock:
            return any(p.startswith(prefix) for p in self.files)

    def _list(self, dir_or_prefix):
        folder = dir_or_prefix.rstrip("/")
        if not self._folders(folder):
            raise BeamIOError("List operation failed", {dir_or_prefix: NotADirectoryError(dir_or_prefix)})
        children = {}
        with self.lock:
            for path, (data, mtime) in self.files.items():
                if path.startswith(folder + "/"):
                    name = path[len(folder) + 1:].split("/", 1)[0]
                    child = folder + "/" + name
                    children[child] = (len(data), mtime) if child == path else (0, 0.0)
        for path, (size, mtime) in sorted(children.items()):
            yield FileMetadata(path, size, mtime)

    def rename(self, source_file_names, destination_file_names):
        def move(source, destination):
            if destination in self.files:
                raise FileExistsError(destination)  # HDFS does not replace a file by renaming onto it
            self.files[destination] = self.files.pop(source)
        self._each("Rename", list(zip(source_file_names, destination_file_names)), move)

    def exists(self, path):
        return super().exists(path) or self._folders(path)

    def metadata(self, path):
        if not super().exists(path) and self._folders(path):
            return FileMetadata(path.rstrip("/"), 0, 0.0)
        return super().metadata(path)
