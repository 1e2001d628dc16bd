"""The GPU check script takes its whole path on a CPU with tiny sizes (``--cpu-dry-run``): every training mode
(float32, mixed_bfloat16, mixed_float16, --jit), the mirrored strategy and the 1080p-style render, into one
JSON file. No test needs a GPU."""
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_the_gpu_check_dry_run_measures_every_mode_and_renders(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run(["bash", os.path.join(REPO, "benchmarks", "gpu_check.sh"), "--cpu-dry-run",
                           "--out", str(out), "--workdir", str(tmp_path / "work")],
                          capture_output=True, text=True, env=dict(os.environ, PYTHON=sys.executable),
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    results = json.loads(out.read_text())
    assert results["dry_run"] and results["problems"] == []
    modes = {(e["size"], e["mode"]) for e in results["training"]}
    assert modes == {(s, m) for s in ("16x16", "16x32")
                     for m in ("float32", "mixed_bfloat16", "mixed_float16", "float32 --jit")}
    assert all(e["finite"] and e["images_per_s"] > 0 and e["step"] == 24 for e in results["training"])
    assert results["mirrored"]["images_per_s"] > 0
    render = results["render"]
    assert render["frames_out"] == render["frames"] == 50 and render["ratio"] > 0
    assert proc.stdout.strip().splitlines()[-1].startswith("render wall / ffmpeg alone")
