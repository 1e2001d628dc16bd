"""``--config FILE.toml``: keys are flag names, typed per flag, required flags may come from the file, the
command line wins, and a bad key or a wrong type is one line naming the key and the file."""
import importlib
import os
import subprocess
import sys

import pytest

from jobs import JOBS, config_file
from pipelines.errors import CadlError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _toml(tmp_path, text, name="job.toml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _parse(job, argv, known=False):
    return config_file.parse(importlib.import_module(f"jobs.{job}").build_parser(), argv, known=known)


@pytest.mark.parametrize("job", JOBS)
def test_every_job_takes_config(job):
    parser = importlib.import_module(f"jobs.{job}").build_parser()
    assert "--config" in parser.format_help()


def test_train_file_and_flags_combine(tmp_path):
    path = _toml(tmp_path, """
        data = "data/films"          # required flags may come from the file
        out = "runs/films"
        max-steps = 40
        max_seconds = 600            # underscores too
        no-progress = true
        lr = 1                       # an integer for a float flag
        widths = [8, 16]             # a list for a comma-separated flag
        preset = "tiny"
    """.replace("\n        ", "\n"))
    args = _parse("train", ["--config", path, "--max-steps", "7", "--out", "runs/other"])
    assert (args.data, args.out, args.max_steps, args.max_seconds) == ("data/films", "runs/other", 7, 600.0)
    assert args.no_progress is True and args.lr == 1.0 and args.widths == [8, 16] and args.preset == "tiny"
    assert args.batch_size == 32  # untouched defaults stay
    s = args.settings
    assert s["job"] == "train" and s["config_file"] == os.path.abspath(path)
    assert s["argv"] == ["--config", path, "--max-steps", "7", "--out", "runs/other"]
    assert s["flags"]["max_steps"] == 7 and s["flags"]["widths"] == [8, 16]
    from jobs import train
    config = train.config_from_args(args)
    assert config.settings == s and config.max_steps == 7 and config.widths == (8, 16)


def test_lists_and_either_or_groups(tmp_path):
    path = _toml(tmp_path, 'input = ["a.mp4", "b/"]\noutput = "data"\nevery = 3\nsize = "72x128"\n')
    args, beam = _parse("extract", ["--config", path, "--runner", "DirectRunner"], known=True)
    assert args.input == ["a.mp4", "b/"] and args.every == 3 and beam == ["--runner", "DirectRunner"]
    # on the command line: --input replaces the file's list; --fps wins over the file's --every
    args, _ = _parse("extract", ["--config", path, "--input", "c.mkv", "--fps", "2"], known=True)
    assert args.input == ["c.mkv"] and args.fps == 2.0 and args.every == 1
    both = _toml(tmp_path, 'input = "a.mp4"\noutput = "d"\nevery = 2\nfps = 4\n', "both.toml")
    with pytest.raises(CadlError, match=f"{both}: keys \\['every', 'fps'\\] cannot be used together"):
        _parse("extract", ["--config", both], known=True)
    # a positional argument from the file; retrain's typed --size; repeated --inputs as a list
    films = _toml(tmp_path, 'films = ["x.mp4", "y.mp4"]\njson = true\n', "info.toml")
    args = _parse("info", ["--config", films])
    assert args.films == ["x.mp4", "y.mp4"] and args.json is True
    assert _parse("info", ["--config", films, "z.mp4"]).films == ["z.mp4"]
    retrain = _toml(tmp_path, 'inputs = ["/srv/films"]\nwork = "/srv/cadl"\nsize = "32x32"\nmax-steps = 5\n',
                    "retrain.toml")
    args, unknown = _parse("retrain", ["--config", retrain], known=True)
    assert args.inputs == ["/srv/films"] and args.size == (32, 32) and args.max_steps == 5 and unknown == []


@pytest.mark.parametrize("text, message", [
    ("max-steps = 'forty'", "key 'max-steps': expected an integer, not 'forty'"),
    ("no-progress = 1", "key 'no-progress': expected true or false, not 1"),
    ("lr = 'fast'", "key 'lr': expected a number, not 'fast'"),
    ("preset = 'huge'", "key 'preset': 'huge' is not one of default, tiny, course"),
    ("data = 3", "key 'data': expected a string, not 3"),
    ("max-step = 40", "unknown key 'max-step': cadl train has no --max-step"),
    ("[model]\nlatent = 8", "unknown key 'model'"),
    ("max-steps = 4\nmax_steps = 5", "key 'max_steps': the same flag is given twice"),
    ("max-steps = ", "not a valid TOML file"),
])
def test_a_bad_key_or_type_names_the_key_and_the_file(tmp_path, text, message):
    path = _toml(tmp_path, text)
    with pytest.raises(CadlError) as e:
        _parse("train", ["--config", path, "--data", "d", "--out", "o"])
    assert str(e.value).startswith(f"{path}: ") and message in str(e.value) and "\n" not in str(e.value)


def test_on_the_command_line_it_is_one_line_and_exit_2(tmp_path):
    path = _toml(tmp_path, "data = 'd'\nout = 'o'\nmax-steps = 'forty'\n")
    for argv in (["--config", path], ["--config", str(tmp_path / "missing.toml"), "--data", "d", "--out", "o"]):
        done = subprocess.run([sys.executable, "-m", "jobs.cli", "train"] + argv, cwd=REPO, capture_output=True,
                              text=True, timeout=120, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
        assert done.returncode == 2
        lines = [line for line in done.stderr.splitlines() if line.startswith("cadl: error")]
        assert len(lines) == 1 and argv[1] in lines[0], done.stderr
    assert "key 'max-steps'" in lines[0] or "no such config file" in lines[0]


def test_the_readme_config_files_parse_with_their_jobs(tmp_path):
    """Each ```toml block of the README opens with ``# cadl JOB --config FILE`` and parses with that job."""
    from test_readme import readme_blocks

    blocks = [text for language, text in readme_blocks() if language == "toml"]
    seen = set()
    for text in blocks:
        words = text.splitlines()[0].lstrip("# ").split()
        assert words[0] == "cadl" and words[2] == "--config", text
        path = _toml(tmp_path, text, words[3])
        args = _parse(words[1], ["--config", path], known=True)[0]
        assert args.settings["config_file"] == path
        seen.add(words[1])
    assert seen == set(JOBS)
