"""``cadl extract`` with URL inputs and outputs, through Apache Beam's FileSystems, offline: two real in-memory
Beam filesystems (``tests/memfs.py``: ``memfs://`` lists prefixes like gs://, ``memdirfs://`` has folders like
hdfs://) hold the inputs and receive the dataset. The records must equal those of the same run on local paths,
apart from their ``source``."""
import os
import threading
import zipfile

import cv2
import numpy as np
import pytest

from jobs import extract
from memfs import MemFileSystem
from pipelines import manifest as mf
from pipelines import sources, storage
from pipelines.errors import CadlError
from pipelines.synthetic import make_film

# In-process workers (threads): they share the in-memory filesystems and the local copies of films.
WORKERS = ["--direct_num_workers=2", "--direct_running_mode=multi_threading"]
ATTRIBUTES = ["Smiling", "Young"]


def run(*argv):
    return extract.run([str(a) for a in argv])


@pytest.fixture(autouse=True)
def empty_memfs():
    MemFileSystem.reset()
    yield
    MemFileSystem.reset()


def _celeba_texts(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "list_eval_partition.txt").write_text("".join(f"{n} {i % 3}\n" for i, n in enumerate(names)))
    rows = [f"{n}  " + "  ".join(f"{1 if (i >> b) & 1 else -1:2d}" for b in range(len(ATTRIBUTES)))
            for i, n in enumerate(names)]
    (folder / "list_attr_celeba.txt").write_text("\n".join([str(len(names)), " ".join(ATTRIBUTES)] + rows) + "\n")


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """in/: films (one cut into several segments, one in a sub-folder whose name has a glob character: Beam's
    match patterns must not take it for one), stills, files the search ignores, and
    CelebA as a zip (the official Img/ Eval/ Anno/ layout) and as a folder."""
    root = tmp_path_factory.mktemp("remote") / "in"
    make_film(root / "films" / "gop.mp4", "testsrc2", seconds=3, size=(96, 54), rate="25", audio=False,
              extra_video_args=("-g", "10"))
    make_film(root / "films" / "sub [HD]" / "ntsc.mkv", "mandelbrot", seconds=2, size=(128, 72), rate="24000/1001")
    rng = np.random.default_rng(5)
    for rel, shape in [("stills/a.png", (40, 60)), ("stills/b.jpg", (50, 50)), ("stills/deep/c.webp", (30, 80)),
                       ("stills/deep/d.bmp", (64, 48))]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(root / rel), rng.integers(0, 256, shape + (3,), dtype=np.uint8))
    (root / "stills" / "notes.txt").write_text("ignored")
    (root / "stills" / ".hidden.png").write_bytes(b"ignored: hidden")
    (root / "films" / "ntsc.srt").write_text("1\n00:00:00,000 --> 00:00:01,000\nignored\n")
    names = [f"{i:06d}.jpg" for i in range(1, 10)]
    pictures = {n: cv2.imencode(".jpg", rng.integers(0, 256, (44, 36, 3), dtype=np.uint8))[1].tobytes()
                for n in names}
    (root / "celeba_zip" / "Img").mkdir(parents=True)
    with zipfile.ZipFile(root / "celeba_zip" / "Img" / "img_align_celeba.zip", "w") as z:
        for n, data in pictures.items():
            z.writestr(f"img_align_celeba/{n}", data)
    _celeba_texts(root / "celeba_zip" / "Eval", names)
    os.replace(root / "celeba_zip" / "Eval" / "list_attr_celeba.txt", root / "celeba_zip" / "list_attr_celeba.txt")
    (root / "faces" / "img_align_celeba").mkdir(parents=True)
    for n, data in pictures.items():
        (root / "faces" / "img_align_celeba" / n).write_bytes(data[::-1][::-1])
    _celeba_texts(root / "faces", names)
    return root


def upload(local, url):
    """Copy a local folder's files to ``url`` (same relative paths) and return ``url``."""
    for folder, _, files in os.walk(local):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                MemFileSystem.put(url + "/" + os.path.relpath(path, local).replace(os.sep, "/"), f.read())
    return url


def records(folder, inputs):
    """Records of a dataset with each film's or still's source written relative to ``inputs`` (CelebA sources
    are image names already), sorted."""
    out = []
    for r in mf.read_records(folder):
        source = r["source"]
        if source.startswith(str(inputs)):
            source = source[len(str(inputs)):].lstrip("/")
        out.append({**r, "source": source})
    return sorted(out, key=lambda r: (r["source"], r["frame_index"], r["split"], r["image"]))


def memfs_paths(prefix):
    return sorted(p for p in MemFileSystem.files if p.startswith(prefix))


OPTIONS = ["--size", "18x32", "--segment-seconds", "0.5", "--validation-fraction", "0.3", "--validation-block",
           "0.5"]


def test_films_stills_and_celeba_zip_from_a_bucket_give_the_local_records(tree, tmp_path):
    inputs = [tree / "films", tree / "stills", tree / "celeba_zip"]
    local = run(*[a for i in inputs for a in ("--input", i)], "--output", tmp_path / "local", *OPTIONS, *WORKERS)
    url = upload(tree, "memfs://bucket/in")
    remote = run("--input", f"{url}/films/", "--input", f"{url}/stills", "--input", f"{url}/celeba_zip",
                 "--output", "memfs://bucket/data", *OPTIONS, *WORKERS)

    assert records("memfs://bucket/data", url) == records(tmp_path / "local", tree)
    assert remote["records_new"] == local["records_new"] == 75 + 48 + 4 + 9
    assert remote["splits"] == local["splits"] and remote["inputs_extracted"] == 7 and remote["skipped"] == []
    ours, theirs = mf.read("memfs://bucket/data"), mf.read(tmp_path / "local")
    assert ours["splits"] == theirs["splits"]  # the same shard names and counts
    assert ours["bytes"] == sum(storage.size(f"memfs://bucket/data/{n}") for n in mf.listed_files(ours))
    assert ours["sources"][f"{url}/films/gop.mp4"]["segments"] == theirs["sources"][str(tree / "films/gop.mp4")][
        "segments"] > 1
    assert ours["attribute_names"] == ATTRIBUTES
    assert set(ours["sources"]) == {f"{url}/{rel}" for rel in (
        "films/gop.mp4", "films/sub [HD]/ntsc.mkv", "stills/a.png", "stills/b.jpg", "stills/deep/c.webp",
        "stills/deep/d.bmp", "celeba_zip")}
    # The per-pixel statistics are the same bytes, and the summary is in the bucket too.
    for name in ("mean.png", "std.png", "moments.npz"):
        assert storage.read_bytes(f"memfs://bucket/data/{name}") == (tmp_path / "local" / name).read_bytes()
    assert storage.read_json("memfs://bucket/data/summary.json")["records_new"] == remote["records_new"]
    assert memfs_paths("memfs://bucket/data/") == sorted(
        f"memfs://bucket/data/{n}" for n in [".cadl", "manifest.json", "mean.png", "std.png", "moments.npz",
                                             "summary.json"]
        + mf.listed_files(ours))  # no temp folder or write test left behind
    # Each film was copied to the worker once (its segments reused the copy) and the copies are gone.
    assert MemFileSystem.opens[f"{url}/films/gop.mp4"] == 1
    assert MemFileSystem.opens[f"{url}/films/sub [HD]/ntsc.mkv"] == 1
    assert storage.films.files() == []


def test_incremental_gzip_and_rerun_on_a_filesystem_with_folders(tree, tmp_path):
    # memdirfs:// lists one level at a time and refuses to rename onto an existing file, like hdfs://.
    options = OPTIONS + ["--num-shards", "2", "--compression", "gzip"] + WORKERS
    local = run("--input", tree / "films", "--input", tree / "faces", "--output", tmp_path / "local", *options)
    url = upload(tree, "memdirfs://cluster/in")
    out = "memdirfs://cluster/data"
    first = run("--input", f"{url}/films/gop.mp4", "--output", out, *options)
    assert first["records_new"] == 75 and first["shards_new"] == [
        f"{split}-0000{i}-of-00002.tfrecord.gz" for split in ("train", "validation") for i in range(2)]
    second = run("--input", f"{url}/films", "--input", f"{url}/faces", "--output", out, "--incremental", *options)
    assert second["inputs_already_extracted"] == 1 and second["inputs_new"] == 2
    assert all(name.split("-")[1] == "r0002" for name in second["shards_new"])
    assert records(out, url) == records(tmp_path / "local", tree)
    assert second["records_total"] == local["records_new"] and second["splits"] == local["splits"]
    merged = mf.read_moments(out, 18, 32)
    whole = mf.read_moments(tmp_path / "local", 18, 32)
    assert merged["count"] == whole["count"] and np.array_equal(merged["sum"], whole["sum"])
    # A full rerun replaces the dataset: new shards under new names beside the old ones, then the manifest
    # switches, then every file only the old manifest named goes.
    third = run("--input", f"{url}/films", "--input", f"{url}/faces", "--output", out, *options)
    assert records(out, url) == records(tmp_path / "local", tree)
    manifest = mf.read(out)
    assert all(name.split("-")[1] == "r0003" for name in third["shards_new"])
    assert memfs_paths(out + "/") == sorted(
        f"{out}/{n}" for n in [".cadl", "manifest.json", "summary.json"] + mf.moment_files(manifest)
        + third["shards_new"])
    assert storage.read_bytes(f"{out}/{manifest['mean_image']}") == (tmp_path / "local" / "mean.png").read_bytes()


def test_urls_through_the_portable_runner(tree, tmp_path):
    # The Runner API path that Dataflow, Flink and Spark take; LOOPBACK workers run in this process.
    args = ["--size", "18x32", "--segment-seconds", "0.5", "--validation-fraction", "0.3", "--validation-block", "0.5"]
    run("--input", tree / "films", "--output", tmp_path / "local", *args)
    url = upload(tree / "films", "memfs://bucket/films")
    portable = run("--input", url, "--output", "memfs://bucket/data", *args, "--runner=PortableRunner",
                   "--job_endpoint=embed", "--environment_type=LOOPBACK")
    assert portable["runner"] == "PortableRunner" and portable["records_new"] == 75 + 48
    assert records("memfs://bucket/data", url) == records(tmp_path / "local", tree / "films")
    assert storage.read_bytes("memfs://bucket/data/mean.png") == (tmp_path / "local" / "mean.png").read_bytes()


@pytest.mark.parametrize("scheme", ["memfs", "memdirfs"])
def test_discovery_at_a_url_finds_what_it_finds_locally(tree, scheme):
    url = upload(tree, f"{scheme}://host/in")
    ours, problems = sources.discover([url, f"{url}/missing.mp4"], exclude=[f"{url}/stills/deep"])
    theirs, _ = sources.discover([tree], exclude=[tree / "stills" / "deep"])
    assert problems == [(f"{url}/missing.mp4", "no such file or folder")]
    assert [(i.path[len(url):], i.kind, i.rel, i.size) for i in ours] == \
        [(i.path[len(str(tree)):], i.kind, i.rel, i.size) for i in theirs]
    assert [i.kind for i in ours].count("celeba") == 2 and len(ours) == 6
    # Globs: * stays in a folder, ** crosses folders; hidden files never match.
    found, _ = sources.discover([f"{url}/films/*.m*"])
    assert [(i.path, i.rel) for i in found] == [(f"{url}/films/gop.mp4", "gop.mp4")]
    found, _ = sources.discover([f"{url}/**.png", f"{url}/*/sub*/*.mkv"])
    assert [i.path for i in found] == [f"{url}/films/sub [HD]/ntsc.mkv", f"{url}/stills/a.png"]
    assert sources.discover([f"{url}/*.gif"]) == ([], [(f"{url}/*.gif", "no file matches this pattern")])
    # Names with "[" given directly: a folder and a file.
    for spec in (f"{url}/films/sub [HD]", f"{url}/films/sub [HD]/ntsc.mkv"):
        found, problems = sources.discover([spec])
        assert [i.path for i in found] == [f"{url}/films/sub [HD]/ntsc.mkv"] and problems == []
    # A CelebA root named directly, the folder or the zip itself.
    for root in (f"{url}/faces", f"{url}/faces/img_align_celeba", f"{url}/celeba_zip/Img/img_align_celeba.zip"):
        [item], _ = sources.discover([root])
        assert (item.path, item.kind) == (root, "celeba")


def test_bad_inputs_at_a_url_are_skipped_with_their_reasons(tree, tmp_path):
    url = "memfs://bucket/in"
    MemFileSystem.put(f"{url}/empty.mp4", b"")
    MemFileSystem.put(f"{url}/junk.mkv", np.random.default_rng(1).bytes(20000))
    MemFileSystem.put(f"{url}/notes.txt", b"a text file given as an input\n" * 50)
    MemFileSystem.put(f"{url}/junk.png", np.random.default_rng(2).bytes(3000))
    upload(tree / "films", f"{url}/films")
    argv = ["--output", "memfs://bucket/data", "--size", "18x32", "--validation-fraction", "0"] + WORKERS
    for name in ("empty.mp4", "junk.mkv", "notes.txt", "junk.png", "missing.mp4", "films/gop.mp4"):
        argv += ["--input", f"{url}/{name}"]
    summary = extract.run(argv)
    assert summary["records_new"] == 75 and summary["inputs_extracted"] == 1 and summary["inputs_bad"] == 4
    reasons = {s["input"][len(url) + 1:]: s["reason"] for s in summary["skipped"]}
    assert reasons == {"empty.mp4": "empty file", "junk.mkv": reasons["junk.mkv"], "junk.png": "not a readable image",
                       "notes.txt": "not media (a text file)", "missing.mp4": "no such file or folder"}
    assert reasons["junk.mkv"].startswith("not a readable film") and "/tmp" not in reasons["junk.mkv"]
    assert storage.films.files() == []


def test_an_output_url_that_is_a_file_or_forbidden_is_refused(short_film):
    MemFileSystem.put("memfs://bucket/data", b"a file")
    with pytest.raises(CadlError, match="memfs://bucket/data: the output exists and is not a folder"):
        run("--input", short_film, "--output", "memfs://bucket/data/")
    MemFileSystem.locked.add("memfs://theirs/")
    with pytest.raises(CadlError, match="memfs://theirs/data: cannot reach the output .*403 Forbidden"):
        run("--input", short_film, "--output", "memfs://theirs/data")
    # An input there is one skipped input, with the reason.
    summary = run("--input", short_film, "--input", "memfs://theirs/films", "--output", "memfs://bucket/out",
                  "--size", "18x32")
    assert summary["records_new"] == 75
    assert [(s["input"], s["reason"][:18]) for s in summary["skipped"]] == [("memfs://theirs/films",
                                                                             "cannot list it (40")]


# -- worker-local copies of remote films ---------------------------------------------------------------------
def test_local_copies_download_once_and_stay_within_the_budget(tmp_path):
    for name in "abc":
        MemFileSystem.put(f"memfs://f/{name}.mp4", name.encode() * 1000)
    copies = storage.LocalCopies(folder=str(tmp_path), budget=2500)
    paths = []

    def use():
        with copies.local("memfs://f/a.mp4", 1000) as path:
            paths.append(path)
            with open(path, "rb") as f:
                assert f.read() == b"a" * 1000

    threads = [threading.Thread(target=use) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(paths)) == 1 and MemFileSystem.opens["memfs://f/a.mp4"] == 1 and copies.downloads == 1
    # Unused copies stay while they fit (2 x 1000 <= 2500); a third evicts the least recently used.
    b = copies.acquire("memfs://f/b.mp4", 1000)
    copies.release("memfs://f/b.mp4", 1000)
    assert sorted(copies.files()) == sorted([paths[0], b])
    with copies.local("memfs://f/a.mp4", 1000):  # a is used again: b is now the least recent
        pass
    with copies.local("memfs://f/c.mp4", 1000) as c:
        assert sorted(copies.files()) == sorted([paths[0], c]) and not os.path.exists(b)
    assert MemFileSystem.opens["memfs://f/a.mp4"] == 1 and copies.downloads == 3
    copies.clear()
    assert copies.files() == [] and not [p for p in tmp_path.iterdir()]


def test_local_copies_fail_cleanly(tmp_path):
    MemFileSystem.put("memfs://f/a.mp4", b"x" * 100)
    copies = storage.LocalCopies(folder=str(tmp_path), budget=0)
    with pytest.raises(OSError, match="read 100 bytes where 99 were listed"):
        copies.acquire("memfs://f/a.mp4", 99)
    with pytest.raises(OSError):
        copies.acquire("memfs://f/gone.mp4", 10)
    assert copies.files() == []
    # budget 0: a copy goes as soon as its last user releases it.
    with copies.local("memfs://f/a.mp4", 100) as path:
        with copies.local("memfs://f/a.mp4", 100) as again:
            assert again == path
        assert os.path.exists(path)
    assert not os.path.exists(path) and copies.downloads == 1
    copies.clear()
    assert not [p for p in tmp_path.iterdir()]


def test_copies_of_killed_workers_are_swept(tmp_path):
    import subprocess
    import sys

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = tmp_path / f"cadl-copies-{int(gone.stdout)}-abc_123"
    alive = tmp_path / f"cadl-copies-{os.getpid()}-def456"
    for folder in (dead, alive):
        folder.mkdir()
        (folder / "film.mp4").write_bytes(b"left behind")
    MemFileSystem.put("memfs://f/a.mp4", b"x" * 10)
    copies = storage.LocalCopies(folder=str(tmp_path))
    with copies.local("memfs://f/a.mp4", 10):
        pass
    assert not dead.exists() and (alive / "film.mp4").exists()
    copies.clear()
