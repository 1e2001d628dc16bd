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


def test_a_jobs_help_imports_neither_tensorflow_nor_beam():
    for job in ("render", "extract", "train"):
        code = (f"import sys\nfrom jobs import cli\ntry:\n    cli.main(['{job}', '--help'])\nexcept SystemExit:\n"
                "    pass\nprint(sorted(m for m in ('tensorflow', 'apache_beam', 'keras') if m in sys.modules))")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert f"usage: cadl {job}" in proc.stdout and proc.stdout.strip().endswith("[]"), proc.stdout[-300:]


def test_tensorflow_starts_without_pyplot_and_reports_still_draw(tmp_path):
    code = ("import sys; from jobs import cli; cli.quiet_imports(tensorflow=True, beam=False); "
            "print('pyplot' if 'matplotlib.pyplot' in sys.modules else 'no pyplot'); "
            "from pipelines import report; report.write_plot(sys.argv[1], {'loss': ([0, 10], [2.0, 1.0])}, 'loss'); "
            "import matplotlib.pyplot; print('imported later')")
    png = tmp_path / "loss.png"
    proc = subprocess.run([sys.executable, "-c", code, str(png)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["no", "pyplot", "imported", "later"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
