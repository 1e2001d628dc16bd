"""Input discovery follows each directory once (links back up the tree neither hang it nor find a film again)
and names a dangling link as a skipped input."""
import os
import subprocess
import sys

from jobs import extract
from pipelines import sources
from pipelines.synthetic import make_film


def _tree_with_loops(tmp_path, loops):
    top = tmp_path / "films"
    (top / "a" / "b").mkdir(parents=True)
    make_film(top / "a" / "clip.mp4", "testsrc2", seconds=0.6, size=(64, 36), rate="25", audio=False)
    (top / "a" / "up").symlink_to("..")
    if loops > 1:
        (top / "a" / "b" / "top").symlink_to("../..")
    return top


def test_one_loop_finds_the_film_once_and_extracts_it_once(tmp_path):
    top = _tree_with_loops(tmp_path, loops=1)
    found, problems = sources.discover([str(top)])
    assert [i.rel for i in found] == [os.path.join("a", "clip.mp4")] and problems == []
    summary = extract.run(["--input", str(top), "--output", str(tmp_path / "data"), "--size", "16x16"])
    assert summary["records_total"] == 15


def test_two_loops_do_not_hang(tmp_path):
    top = _tree_with_loops(tmp_path, loops=2)
    code = ("import sys; from pipelines import sources; found, _ = sources.discover([sys.argv[1]]); "
            "print(len(found))")
    proc = subprocess.run([sys.executable, "-c", code, str(top)], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(__file__))))
    assert proc.returncode == 0 and proc.stdout.strip() == "1", proc.stderr


def test_a_dangling_link_is_skipped_with_a_line(tmp_path):
    top = _tree_with_loops(tmp_path, loops=1)
    (top / "gone.mp4").symlink_to(tmp_path / "deleted.mp4")
    found, problems = sources.discover([str(top)])
    assert len(found) == 1
    assert problems == [(str(top / "gone.mp4"), f"a dangling link (to {tmp_path / 'deleted.mp4'}, which is not there)")]
