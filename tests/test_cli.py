"""The ``cadl`` command and ``python -m jobs.<name>``: every job is reachable and explains itself."""
import importlib
import subprocess
import sys

import pytest

from jobs import JOBS, cli


def test_cadl_without_a_job_lists_every_job(capsys):
    assert cli.main([]) == 0
    out = capsys.readouterr().out
    for name in JOBS:
        assert f"  {name}" in out


def test_unknown_job_is_an_error(capsys):
    assert cli.main(["frobnicate"]) == 2
    assert "unknown job 'frobnicate'" in capsys.readouterr().err


@pytest.mark.parametrize("name", JOBS)
def test_every_job_module_has_run_and_a_parser(name):
    module = importlib.import_module(f"jobs.{name}")
    assert callable(module.run)
    help_text = module.build_parser().format_help()
    assert f"cadl {name}" in help_text and len(help_text) > 300


@pytest.mark.parametrize("name", ["extract", "demo"])
def test_python_dash_m_help(name):
    proc = subprocess.run([sys.executable, "-m", f"jobs.{name}", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "usage: cadl" in proc.stdout
