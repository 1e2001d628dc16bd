"""Find what to extract: ``--input`` values (files, folders searched recursively, globs) -> a sorted list of inputs.

Three kinds of input:
    film    any file with a film extension (``media.FILM_EXTENSIONS``) found in a folder, or any file named
            directly that is not an image (ffmpeg decides later whether it can read it)
    image   a still (.jpg .jpeg .png .webp .bmp) found in a folder or named directly
    celeba  a CelebA root (``celeba.is_celeba_root``): a folder holding ``img_align_celeba/`` or
            ``img_align_celeba.zip``, or that folder / zip itself; it is not searched further

Hidden files and folders (names starting with ".") are ignored, and so are files of other types found while
searching a folder (a folder of films may hold subtitles). Symbolic links are followed, each directory once
(by device and inode), so a link loop neither hangs the search nor finds a film twice; a dangling link is
reported as a problem. Paths that match nothing are reported as problems,
not errors, so one mistyped path does not stop a batch.

A ``--input`` may also be a URL of any filesystem Apache Beam knows (``gs://bucket/films/``,
``s3://bucket/stills/*.jpg``, ``hdfs://...``): it is listed with ``FileSystems.match``, a folder being every
file under that prefix, with the same rules as a local folder. Sizes and modification times then come from
the listing, and the input's path (the manifest's key) is its URL.
"""
import dataclasses
import glob
import os

from pipelines import celeba, storage
from pipelines.media import FILM_EXTENSIONS, IMAGE_EXTENSIONS

KINDS = ("film", "image", "celeba")


@dataclasses.dataclass(frozen=True, order=True)
class Input:
    path: str          # absolute path or URL: the manifest's key for the input
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
    skip = {os.path.abspath(e) for e in exclude if not storage.is_url(e)}
    remote_skip = [storage.normalize(e) for e in exclude if storage.is_url(e)]
    for spec in specs:
        spec = os.fspath(spec)
        if storage.is_url(spec):
            _add_url(spec, found, problems, remote_skip)
            continue
        spec = os.path.expanduser(spec)
        if any(c in spec for c in "*?[") and not os.path.exists(spec):
            matches = sorted(glob.glob(spec, recursive=True))
            if not matches:
                problems.append((spec, "no file matches this pattern"))
            for match in matches:
                if not _inside(match, skip):
                    _add_path(match, os.path.dirname(os.path.abspath(match)), found, problems, skip)
        elif os.path.exists(spec) and _inside(spec, skip):
            problems.append((os.path.abspath(spec), "inside the output folder: not searched for inputs"))
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
        _walk(path, found, skip, problems)
        if len(found) == before:
            problems.append((path, "no films, images or CelebA found in this folder"))
    elif os.path.isfile(path):
        kind = "image" if path.lower().endswith(IMAGE_EXTENSIONS) else "film"
        _add(found, _file_input(path, kind, os.path.basename(path) if base is None else os.path.relpath(path, base)))
    else:
        problems.append((path, "not a regular file or folder"))


def _walk(top, found, skip, problems):
    # Links are followed, but each directory only once (by device and inode): a link back up the tree
    # (a/up -> ..) neither hangs the walk nor finds the same films again under longer names.
    seen = set()
    for folder, dirs, files in os.walk(top, followlinks=True):
        try:
            st = os.stat(folder)
        except OSError:
            dirs[:] = []
            continue
        if (st.st_dev, st.st_ino) in seen:
            dirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
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
            kind = "image" if lower.endswith(IMAGE_EXTENSIONS) else "film" if lower.endswith(FILM_EXTENSIONS) else None
            if kind and not os.path.exists(path):
                problems.append((path, f"a dangling link (to {os.readlink(path)}, which is not there)"
                                 if os.path.islink(path) else "vanished while the folder was searched"))
            elif kind:
                _add(found, _file_input(path, kind, os.path.relpath(path, top)))


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


# -- URLs (any filesystem Beam knows) ----------------------------------------------------------------------
def _add_url(spec, found, problems, skip):
    def excluded(path):
        return any(storage.inside(path, s) for s in skip)

    try:
        url = storage.normalize(spec)
        if any(c in spec for c in "*?[") and not (storage.exists(url) or storage.isdir(url)):
            matches = [m for m in storage.match(spec) if not excluded(m.path)]
            if not matches:
                problems.append((spec, "no file matches this pattern"))
            for meta in matches:
                if not storage.basename(meta.path).startswith("."):
                    _add_url_file(meta, storage.basename(meta.path), found)
        elif excluded(url):
            problems.append((url, "inside the output folder: not searched for inputs"))
        elif storage.isdir(url):
            _add_url_folder(url, [m for m in storage.walk(url) if not excluded(m.path)], found, problems)
        elif storage.exists(url):
            _add_url_file(storage.file_metadata(url), storage.basename(url), found)
        else:
            problems.append((url, "no such file or folder"))
    except Exception as e:  # BeamIOError or the client library's own: permissions, no such bucket, no credentials
        problems.append((spec, f"cannot list it ({e})"))


def _add_url_file(meta, rel, found):
    name = storage.basename(meta.path)
    if name == celeba.IMAGES + ".zip":
        _add(found, _celeba_url_input(meta.path))
        return
    kind = "image" if name.lower().endswith(IMAGE_EXTENSIONS) else "film"
    _add(found, _url_input(meta, kind, rel))


def _add_url_folder(url, files, found, problems):
    """Like ``_walk`` for a listing: hidden names skipped, CelebA roots taken whole, films and stills kept."""
    entries = []
    for meta in files:
        parts = storage.relative(meta.path, url).split("/")
        if not any(p.startswith(".") for p in parts):
            entries.append((parts, meta))
    roots = {()} if storage.basename(url) == celeba.IMAGES else set()
    for parts, _ in entries:
        for j, part in enumerate(parts):
            if (part == celeba.IMAGES and j < len(parts) - 1) or (part == celeba.IMAGES + ".zip" and
                                                                    j == len(parts) - 1):
                # The root holds img_align_celeba(.zip) directly or in Img/ (Eval/, Anno/), as find_images says.
                k = j - 1 if j >= 1 and parts[j - 1] in celeba.SUBFOLDERS else j
                roots.add(tuple(parts[:k]))
                break
    roots = {r for r in roots if not any(r[:i] in roots for i in range(len(r)))}  # the outermost root wins
    before = len(found)
    for root in sorted(roots):
        _add(found, _celeba_url_input("/".join((url,) + root)))
    for parts, meta in entries:
        if any(tuple(parts[:len(r)]) == r for r in roots):
            continue
        lower = parts[-1].lower()
        if lower.endswith(IMAGE_EXTENSIONS):
            _add(found, _url_input(meta, "image", "/".join(parts)))
        elif lower.endswith(FILM_EXTENSIONS):
            _add(found, _url_input(meta, "film", "/".join(parts)))
    if len(found) == before:
        problems.append((url, "no films, images or CelebA found in this folder"))


def _url_input(meta, kind, rel):
    return Input(path=meta.path, kind=kind, size=meta.size_in_bytes,
                 mtime=float(meta.last_updated_in_seconds or 0.0), rel=rel)


def _celeba_url_input(root):
    folder, archive = celeba.find_images(root)
    if archive:
        size, mtime = storage.metadata(archive)
    else:
        listed = storage.children(folder)
        size = sum(m.size_in_bytes for m in listed)
        mtime = max((float(m.last_updated_in_seconds or 0.0) for m in listed), default=0.0)
    return Input(path=root, kind="celeba", size=size, mtime=mtime, rel=storage.basename(root))
