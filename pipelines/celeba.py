"""CelebA as distributed: the aligned images (a folder or the zip, read in place) and its two text files.

Recognised layouts of ``root`` (the folder you give):

    root/img_align_celeba/000001.jpg ...          or  root/img_align_celeba.zip  (img_align_celeba/000001.jpg ...)
    root/list_eval_partition.txt                  0 = train, 1 = validation, 2 = test      (optional)
    root/list_attr_celeba.txt                     40 attributes as -1/+1 per image        (optional)

The official download's sub-folders (``Img/``, ``Eval/``, ``Anno/``) are searched too, and ``root`` may also be
the ``img_align_celeba`` folder or zip itself (the text files are then looked for beside it). Members of the
zip are read into memory one at a time; nothing is ever extracted to disk.

Everything but the image store is parsed lazily, so a Beam worker that only calls ``read`` pays nothing for
the 200,000-line attribute file.
"""
import functools
import os
import threading
import zipfile

from pipelines.errors import CadlError

IMAGES = "img_align_celeba"
PARTITION_FILE = "list_eval_partition.txt"
ATTRIBUTE_FILE = "list_attr_celeba.txt"
_PARTITIONS = {"0": "train", "1": "validation", "2": "test"}
_SUBFOLDERS = ("", "Img", "Eval", "Anno")
_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


def find_images(root):
    """(folder, zip) holding CelebA's aligned images under ``root`` (one of them None), or (None, None)."""
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


def is_celeba_root(path):
    """True when ``path`` looks like a CelebA root (or its image folder / zip)."""
    folder, archive = find_images(path)
    return folder is not None or archive is not None


class CelebA:
    """Read-only view of a CelebA root. Raises ``CadlError`` naming the expected files if it is not one."""

    def __init__(self, root):
        self.root = os.path.abspath(os.fspath(root))
        self.image_folder, self.zip_path = find_images(self.root)
        if self.image_folder is None and self.zip_path is None:
            raise CadlError(f"{self.root}: not a CelebA root: expected {IMAGES}/ (a folder of .jpg files) or "
                            f"{IMAGES}.zip there (or in Img/), with optional {PARTITION_FILE} and "
                            f"{ATTRIBUTE_FILE}")
        store = self.image_folder or self.zip_path
        # The text files live beside the image store, or in the official Eval/ and Anno/ sub-folders.
        parent = os.path.dirname(store)
        if os.path.basename(parent) == "Img":
            parent = os.path.dirname(parent)
        self._text_dirs = [parent] + [os.path.join(parent, sub) for sub in _SUBFOLDERS[1:]]
        self._zip = None
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
        if self.image_folder:
            with os.scandir(self.image_folder) as entries:
                return sorted(e.name for e in entries
                              if e.is_file() and e.name.lower().endswith(_IMAGE_EXTENSIONS)
                              and not e.name.startswith("."))
        return sorted(self._zip_members())

    @functools.cached_property
    def partition(self):
        """name -> "train" | "validation" | "test", or None when ``list_eval_partition.txt`` is absent."""
        path = self._text_file(PARTITION_FILE)
        if path is None:
            return None
        out = {}
        with open(path) as f:
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
        with open(path) as f:
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

    def __getstate__(self):
        # Picklable for Beam: the open zip handle stays behind; lazily parsed tables are re-read if needed.
        state = {k: v for k, v in self.__dict__.items() if k in ("root", "image_folder", "zip_path", "_text_dirs")}
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._zip, self._members, self._lock = None, None, threading.Lock()

    # -- internals ----------------------------------------------------------------------------------------
    def _text_file(self, name):
        for folder in self._text_dirs:
            path = os.path.join(folder, name)
            if os.path.isfile(path):
                return path
        return None

    def _open_zip(self):
        if self._zip is None:
            try:
                self._zip = zipfile.ZipFile(self.zip_path)
            except (zipfile.BadZipFile, OSError) as e:
                raise CadlError(f"{self.zip_path}: not a readable zip file ({e})") from None
        return self._zip

    def _zip_members(self):
        """image name -> member name inside the zip (``img_align_celeba/000001.jpg``)."""
        if self._members is None:
            with self._lock:
                members = {}
                for info in self._open_zip().infolist():
                    base = info.filename.rsplit("/", 1)[-1]
                    if (not info.is_dir() and base.lower().endswith(_IMAGE_EXTENSIONS)
                            and not base.startswith(".") and "__MACOSX" not in info.filename):
                        members[base] = info.filename
                self._members = members
        return self._members
