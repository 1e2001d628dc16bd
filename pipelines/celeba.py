"""CelebA as distributed: the aligned images (a folder or the zip, read in place) and its two text files.

Recognised layouts of ``root`` (the folder you give):

    root/img_align_celeba/000001.jpg ...          or  root/img_align_celeba.zip  (img_align_celeba/000001.jpg ...)
    root/list_eval_partition.txt                  0 = train, 1 = validation, 2 = test      (optional)
    root/list_attr_celeba.txt                     40 attributes as -1/+1 per image        (optional)

The official download's sub-folders (``Img/``, ``Eval/``, ``Anno/``) are searched too, and ``root`` may also be
the ``img_align_celeba`` folder or zip itself (the text files are then looked for beside it). Members of the
zip are read into memory one at a time; nothing is ever extracted to disk. ``root`` may be a URL of any
filesystem Apache Beam knows (``gs://bucket/celeba``): the folder is listed, and files and the zip are read in
place through ``FileSystems.open``.

Everything but the image store is parsed lazily, so a Beam worker that only calls ``read`` pays nothing for
the 200,000-line attribute file.
"""
import functools
import io
import logging
import os
import threading
import zipfile

from pipelines import storage
from pipelines.errors import CadlError
from pipelines.media import IMAGE_EXTENSIONS

log = logging.getLogger("cadl.celeba")

IMAGES = "img_align_celeba"
PARTITION_FILE = "list_eval_partition.txt"
ATTRIBUTE_FILE = "list_attr_celeba.txt"
_PARTITIONS = {"0": "train", "1": "validation", "2": "test"}
_SUBFOLDERS = ("", "Img", "Eval", "Anno")
SUBFOLDERS = _SUBFOLDERS[1:]  # the official download's sub-folders


def find_images(root):
    """(folder, zip) holding CelebA's aligned images under ``root`` (one of them None), or (None, None)."""
    if storage.is_url(os.fspath(root)):
        return _find_remote_images(storage.normalize(root))
    root = os.path.abspath(os.fspath(root))
    base = os.path.basename(root.rstrip(os.sep))
    if os.path.isdir(root) and base == IMAGES:
        return root, None
    if os.path.isfile(root) and base == IMAGES + ".zip":
        return None, root
    for sub in _SUBFOLDERS:
        folder = os.path.join(root, sub, IMAGES)
        if os.path.isdir(folder):
            return folder, None
        archive = folder + ".zip"
        if os.path.isfile(archive):
            return None, archive
    return None, None


def _find_remote_images(root):
    base = storage.basename(root)
    if base == IMAGES and storage.isdir(root):
        return root, None
    if base == IMAGES + ".zip" and storage.isfile(root):
        return None, root
    for sub in _SUBFOLDERS:
        folder = storage.join(root, sub, IMAGES)
        if storage.isdir(folder):
            return folder, None
        if storage.isfile(folder + ".zip"):
            return None, folder + ".zip"
    return None, None


def is_celeba_root(path):
    """True when ``path`` looks like a CelebA root (or its image folder / zip)."""
    folder, archive = find_images(path)
    return folder is not None or archive is not None


class CelebA:
    """Read-only view of a CelebA root. Raises ``CadlError`` naming the expected files if it is not one."""

    def __init__(self, root):
        self.root = storage.normalize(root)
        self.image_folder, self.zip_path = find_images(self.root)
        if self.image_folder is None and self.zip_path is None:
            raise CadlError(f"{self.root}: not a CelebA root: expected {IMAGES}/ (a folder of .jpg files) or "
                            f"{IMAGES}.zip there (or in Img/), with optional {PARTITION_FILE} and "
                            f"{ATTRIBUTE_FILE}")
        store = self.image_folder or self.zip_path
        # The text files live beside the image store, or in the official Eval/ and Anno/ sub-folders.
        parent = storage.dirname(store)
        if storage.basename(parent) == "Img":
            parent = storage.dirname(parent)
        self._text_dirs = [parent] + [storage.join(parent, sub) for sub in SUBFOLDERS]
        self._zip = self._zip_stream = None
        self._members = None
        self._lock = threading.Lock()

    # -- what the dataset holds -------------------------------------------------------------------------
    @property
    def store(self):
        """The image folder or zip file that the pictures are read from."""
        return self.image_folder or self.zip_path

    @functools.cached_property
    def names(self):
        """Sorted image file names, e.g. ``["000001.jpg", "000002.jpg", ...]``."""
        if self.image_folder and storage.is_url(self.image_folder):
            return [n for n in storage.listdir(self.image_folder)
                    if n.lower().endswith(IMAGE_EXTENSIONS) and not n.startswith(".")]
        if self.image_folder:
            with os.scandir(self.image_folder) as entries:
                return sorted(e.name for e in entries
                              if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS)
                              and not e.name.startswith("."))
        return sorted(self._zip_members())

    @functools.cached_property
    def partition(self):
        """name -> "train" | "validation" | "test", or None when ``list_eval_partition.txt`` is absent."""
        path = self._text_file(PARTITION_FILE)
        if path is None:
            return None
        out = {}
        with _open_text(path) as f:
            for number, line in enumerate(f, 1):
                fields = line.split()
                if not fields:
                    continue
                if len(fields) != 2 or fields[1] not in _PARTITIONS:
                    raise CadlError(f"{path}: line {number} should be '<image name> 0|1|2', not {line.strip()!r}")
                out[fields[0]] = _PARTITIONS[fields[1]]
        return out

    @functools.cached_property
    def _attribute_table(self):
        path = self._text_file(ATTRIBUTE_FILE)
        if path is None:
            return [], {}
        with _open_text(path) as f:
            lines = f.read().splitlines()
        # Line 1: the image count; line 2: the attribute names; then "<name> -1 1 ..." per image.
        if len(lines) < 2:
            raise CadlError(f"{path}: expected a count line and a line of attribute names")
        names = lines[1].split()
        table = {}
        for number, line in enumerate(lines[2:], 3):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != len(names) + 1:
                raise CadlError(f"{path}: line {number} has {len(fields) - 1} values for {len(names)} attributes")
            try:
                values = [int(v) for v in fields[1:]]
            except ValueError:
                raise CadlError(f"{path}: line {number} has a value that is not -1 or 1") from None
            if any(v not in (-1, 1) for v in values):
                raise CadlError(f"{path}: line {number} has a value that is not -1 or 1")
            table[fields[0]] = values
        return names, table

    @property
    def attribute_names(self):
        """The attribute names of ``list_attr_celeba.txt`` in file order (empty when it is absent)."""
        return list(self._attribute_table[0])

    @property
    def attributes(self):
        """name -> list of -1/+1 ints, in ``attribute_names`` order (empty when the file is absent)."""
        return self._attribute_table[1]

    # -- reading pictures -------------------------------------------------------------------------------
    def read(self, name):
        """The encoded bytes of image ``name`` (as stored: JPEG for the aligned set)."""
        if os.sep in name or "/" in name or name.startswith("."):
            raise CadlError(f"{self.store}: {name!r} is not a CelebA image name")
        if self.image_folder and storage.is_url(self.image_folder):
            return storage.read_bytes(storage.join(self.image_folder, name))
        if self.image_folder:
            path = os.path.join(self.image_folder, name)
            try:
                with open(path, "rb") as f:
                    return f.read()
            except FileNotFoundError:
                raise CadlError(f"{path}: no such CelebA image") from None
        member = self._zip_members().get(name)
        if member is None:
            raise CadlError(f"{self.zip_path}: no member named {name!r}")
        with self._lock:  # one ZipFile shared by the threads of a worker
            return self._open_zip().read(member)

    def close(self):
        if self._zip is not None:
            self._zip.close()
            self._zip = None
        if self._zip_stream is not None:
            self._zip_stream.close()
            self._zip_stream = None

    def __getstate__(self):
        # Picklable for Beam: the open zip handle stays behind; lazily parsed tables are re-read if needed.
        state = {k: v for k, v in self.__dict__.items() if k in ("root", "image_folder", "zip_path", "_text_dirs")}
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._zip, self._zip_stream, self._members, self._lock = None, None, None, threading.Lock()

    # -- internals ----------------------------------------------------------------------------------------
    def _text_file(self, name):
        for folder in self._text_dirs:
            path = storage.join(folder, name)
            if storage.isfile(path):
                return path
        return None

    def _open_zip(self):
        if self._zip is None:
            try:
                if storage.is_url(self.zip_path):
                    # Read in place: ZipFile seeks in Beam's stream, fetching the members it is asked for.
                    self._zip_stream = storage.open_read(self.zip_path)
                    self._zip = zipfile.ZipFile(self._zip_stream)
                else:
                    self._zip = zipfile.ZipFile(self.zip_path)
            except (zipfile.BadZipFile, OSError) as e:
                raise CadlError(f"{self.zip_path}: not a readable zip file ({e})") from None
        return self._zip

    def _zip_members(self):
        """image name -> member name inside the zip (``img_align_celeba/000001.jpg``)."""
        if self._members is None:
            with self._lock:
                members, outside = {}, 0
                for info in self._open_zip().infolist():
                    base = info.filename.rsplit("/", 1)[-1]
                    if (info.is_dir() or not base.lower().endswith(IMAGE_EXTENSIONS) or base.startswith(".")
                            or "__MACOSX" in info.filename):
                        continue
                    if info.filename == f"{IMAGES}/{base}":
                        members[base] = info.filename
                    else:  # "../../evil.jpg", "other/x.jpg": not CelebA's, whatever the name says
                        outside += 1
                if outside:
                    log.warning("%s: ignored %d pictures that are not directly in %s/", self.zip_path, outside,
                                IMAGES)
                self._members = members
        return self._members


def _open_text(path):
    """A text file (local or URL) to read lines from; bytes that are not UTF-8 become U+FFFD, so a damaged
    file fails the line checks with a message naming the file instead of a UnicodeDecodeError."""
    return io.StringIO(storage.read_bytes(path).decode("utf-8", errors="replace"))
