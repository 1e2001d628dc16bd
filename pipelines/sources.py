"""Find what to extract: ``--input`` values (files, folders searched recursively, globs) -> a sorted list of inputs.

Three kinds of input:
    film    any file with a film extension (``media.FILM_EXTENSIONS``) found in a folder, or any file named
            directly that is not an image (ffmpeg decides later whether it can read it)
    image   a still (.jpg .jpeg .png .webp .bmp) found in a folder or named directly
    celeba  a CelebA root (``celeba.is_celeba_root``): a folder holding ``img_align_celeba/`` or
            ``img_align_celeba.zip``, or that folder / zip itself; it is not searched further

Hidden files and folders (names starting with ".") are ignored, and so are files of other types found while
searching a folder (a folder of films may hold subtitles). Paths that match nothing are reported as problems,
not errors, so one mistyped path does not stop a batch.
"""
import dataclasses
import glob
import os

from pipelines import celeba
from pipelines.media import FILM_EXTENSIONS

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
KINDS = ("film", "image", "celeba")


@dataclasses.dataclass(frozen=True, order=True)
class Input:
    path: str          # absolute path: the manifest's key for the input
    kind: str          # "film" | "image" | "celeba"
    size: int          # bytes (CelebA: of the zip, or of all images in the folder)
    mtime: float       # modification time, seconds since the epoch (CelebA folder: the newest image)
    rel: str           # stable name used for hashing splits: the path relative to the folder it was found in

    def fingerprint(self):
        """What ``--incremental`` compares to decide that an input was already extracted."""
        return {"size": self.size, "mtime": self.mtime}


def discover(specs, exclude=()):
    """``specs`` (paths, folders, globs) -> (sorted unique inputs, [(spec, reason)] for specs matching nothing).

    Folders in ``exclude`` (the output folder: its mean.png and std.png are not inputs) are not searched.
    """
    found, problems = {}, []
    skip = {os.path.abspath(e) for e in exclude}
    for spec in specs:
        spec = os.path.expanduser(os.fspath(spec))
        if any(c in spec for c in "*?[") and not os.path.exists(spec):
            matches = sorted(glob.glob(spec, recursive=True))
            if not matches:
                problems.append((spec, "no file matches this pattern"))
            for match in matches:
                if not _inside(match, skip):
                    _add_path(match, os.path.dirname(os.path.abspath(match)), found, problems, skip)
        elif os.path.exists(spec):
            _add_path(spec, None, found, problems, skip)
        else:
            problems.append((os.path.abspath(spec), "no such file or folder"))
    return sorted(found.values()), problems


def _inside(path, folders):
    path = os.path.abspath(path)
    return any(path == f or path.startswith(f + os.sep) for f in folders)


def _add_path(path, base, found, problems, skip=frozenset()):
    path = os.path.abspath(path)
    if celeba.is_celeba_root(path):
        _add(found, _celeba_input(path))
    elif os.path.isdir(path):
        before = len(found)
        _walk(path, found, skip)
        if len(found) == before:
            problems.append((path, "no films, images or CelebA found in this folder"))
    elif os.path.isfile(path):
        kind = "image" if path.lower().endswith(IMAGE_EXTENSIONS) else "film"
        _add(found, _file_input(path, kind, os.path.basename(path) if base is None else os.path.relpath(path, base)))
    else:
        problems.append((path, "not a regular file or folder"))


def _walk(top, found, skip=frozenset()):
    for folder, dirs, files in os.walk(top, followlinks=True):
        dirs[:] = sorted(d for d in dirs if os.path.join(folder, d) not in skip)
        celeba_dirs = [d for d in dirs if not d.startswith(".") and celeba.is_celeba_root(os.path.join(folder, d))]
        for d in celeba_dirs:
            _add(found, _celeba_input(os.path.join(folder, d)))
        if celeba.is_celeba_root(folder):
            # A CelebA root found while walking (img_align_celeba/ inside it): take it whole.
            dirs[:] = []
            continue
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in celeba_dirs]
        for name in sorted(files):
            if name.startswith("."):
                continue
            lower = name.lower()
            path = os.path.join(folder, name)
            if lower.endswith(IMAGE_EXTENSIONS):
                _add(found, _file_input(path, "image", os.path.relpath(path, top)))
            elif lower.endswith(FILM_EXTENSIONS):
                _add(found, _file_input(path, "film", os.path.relpath(path, top)))


def _add(found, item):
    found.setdefault(item.path, item)


def _file_input(path, kind, rel):
    st = os.stat(path)
    return Input(path=path, kind=kind, size=st.st_size, mtime=st.st_mtime, rel=rel)


def _celeba_input(path):
    folder, archive = celeba.find_images(path)
    if archive:
        st = os.stat(archive)
        size, mtime = st.st_size, st.st_mtime
    else:
        size, mtime = 0, 0.0
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.is_file():
                    st = entry.stat()
                    size += st.st_size
                    mtime = max(mtime, st.st_mtime)
    root = os.path.abspath(path)
    return Input(path=root, kind="celeba", size=size, mtime=mtime, rel=os.path.basename(root))
