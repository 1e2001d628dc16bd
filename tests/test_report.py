"""What a user looks at: TensorBoard reading a run's logs with its own loader, and the static report pages
(RUN/report.html, the render's and the retrain's): every referenced file exists, plots are real PNGs that
change as training goes on, the pages parse."""
import html.parser
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from jobs import train
from pipelines import atomic, media, report
from train_data import write_dataset

TINY = ["--preset", "tiny", "--batch-size", "8", "--no-progress", "--log-every", "2", "--validate-every", "4",
        "--montage-every", "4", "--validation-batches", "1"]


class Page(html.parser.HTMLParser):
    """The page's image sources and text, with the parser's own well-formedness bookkeeping."""

    def __init__(self, path):
        super().__init__()
        self.sources, self.text, self.scripts, self.open = [], [], 0, []
        self.feed(open(path, encoding="utf-8").read())
        self.close()

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.sources.append(dict(attrs)["src"])
        elif tag == "script":
            self.scripts += 1
        elif tag not in ("meta", "br"):
            self.open.append(tag)

    def handle_endtag(self, tag):
        assert self.open and self.open[-1] == tag, f"</{tag}> closes <{self.open[-1:]}>"
        self.open.pop()

    def handle_data(self, data):
        self.text.append(data)


def check_page(path):
    """Parse ``path``; every image it references exists and opens; no JavaScript. Returns the Page."""
    page = Page(path)
    assert page.open == [] and page.scripts == 0
    for src in page.sources:
        target = os.path.join(os.path.dirname(path), src)
        assert os.path.isfile(target), src
        with Image.open(target) as image:
            image.verify()
    return page


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny run trained to step 8, its report kept, then resumed to step 16 (the history continues) with
    its flags in a config file (the step target given on the command line)."""
    root = tmp_path_factory.mktemp("report")
    data = write_dataset(str(root / "data"), {"train": 32, "validation": 8})
    out = str(root / "run")
    train.run(["--data", data, "--out", out, "--max-steps", "8"] + TINY)
    first = str(root / "first")
    shutil.copytree(os.path.join(out, "report"), first)
    shutil.copy(os.path.join(out, "report.html"), os.path.join(first, "report.html"))
    toml = root / "train.toml"
    toml.write_text(f"data = {data!r}\nout = {out!r}\nmax-steps = 8\npreset = 'tiny'\nbatch_size = 8\n"
                    "no-progress = true\nlog-every = 2\nvalidate-every = 4\nmontage-every = 4\n"
                    "validation-batches = 1\n")
    summary = train.run(["--config", str(toml), "--max-steps", "16"])
    return {"out": out, "first": first, "summary": summary, "data": data, "toml": str(toml)}


def test_tensorboard_reads_the_scalars_and_images_cadl_writes(runs):
    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer

    logdir = os.path.join(runs["out"], "logs")
    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(logdir)
    multiplexer.Reload()
    provider = data_provider.MultiplexerDataProvider(multiplexer, logdir)
    ctx = context.RequestContext()  # what TensorBoard's own web server asks its data with
    scalars = provider.list_scalars(ctx, experiment_id="", plugin_name="scalars")
    assert {"loss", "reconstruction", "kl", "psnr", "learning_rate", "images_per_s"} <= set(scalars["train"])
    assert {"loss", "psnr"} <= set(scalars["validation"])
    read = provider.read_scalars(ctx, experiment_id="", plugin_name="scalars", downsample=1000)
    assert [p.step for p in read["train"]["loss"]] == list(range(2, 17, 2))
    assert [p.step for p in read["validation"]["psnr"]] == [4, 8, 8, 12, 16, 16]  # each validation + the end
    assert all(np.isfinite(p.value) for p in read["validation"]["psnr"])
    images = provider.list_blob_sequences(ctx, experiment_id="", plugin_name="images")
    assert {"reconstructions", "latent_samples"} <= set(images["validation"])
    blobs = provider.read_blob_sequences(ctx, experiment_id="", plugin_name="images", downsample=100)
    last = blobs["validation"]["reconstructions"][-1]
    assert last.step == 16
    png = provider.read_blob(ctx, blob_key=last.values[2].blob_key)  # [width, height, png]
    assert png.startswith(b"\x89PNG")


def test_run_report_refers_to_real_files_and_parses(runs):
    out = runs["out"]
    assert runs["summary"]["report"] == os.path.join(out, "report.html")
    page = check_page(os.path.join(out, "report.html"))
    assert {"report/loss.png", "report/psnr.png", "montages/recon-0000016.png", "montages/latent-0000016.png",
            "montages/reconstructions.gif"} <= set(page.sources)
    text = " ".join(page.text)
    assert f"cadl train --config {runs['toml']} --max-steps 16" in text  # the command line that made it
    assert runs["toml"] in text and '"validate_every": 4' in text  # the flags it resolved to
    assert '"latent": 8' in text  # the model config
    val = runs["summary"]["validation"]
    assert report._fmt(val["psnr"]) in text and report._fmt(runs["summary"]["epochs"]) in text


def test_the_resolved_settings_are_in_config_json_and_summary_json(runs):
    config = atomic.read_json(os.path.join(runs["out"], "config.json"))
    for settings in (config["settings"], runs["summary"]["settings"]):
        assert settings["job"] == "train" and settings["config_file"] == runs["toml"]
        assert settings["argv"] == ["--config", runs["toml"], "--max-steps", "16"]
        flags = settings["flags"]
        assert flags["max_steps"] == 16 and flags["data"] == runs["data"] and flags["no_progress"] is True
        assert flags["batch_size"] == 8 and flags["lr"] == 1e-3  # a default, written down too
    assert "settings" not in config["training"]
    # repeating the run from its record: the same flags parse to the same training config
    from jobs import config_file
    again = train.config_from_args(config_file.parse(train.build_parser(), runs["summary"]["settings"]["argv"]))
    assert again == train.config_from_args(train.build_parser().parse_args(
        ["--data", runs["data"], "--out", runs["out"], "--max-steps", "16"] + TINY))


def test_plots_are_pngs_that_change_as_training_goes_on(runs):
    for name in ("loss.png", "psnr.png"):
        before = open(os.path.join(runs["first"], name), "rb").read()
        after = open(os.path.join(runs["out"], "report", name), "rb").read()
        assert before.startswith(b"\x89PNG") and after.startswith(b"\x89PNG") and before != after
        with Image.open(os.path.join(runs["out"], "report", name)) as image:
            assert image.size == (700, 320)
    # the resumed run kept the first invocation's history and added its own
    history = report.read_history(runs["out"])
    assert [h["step"] for h in history if h["kind"] == "validation"] == [4, 8, 12, 16]
    assert [h["step"] for h in history if h["kind"] == "train"] == list(range(2, 17, 2))


def test_a_resumed_run_cuts_the_history_back_to_its_checkpoint(tmp_path):
    run = str(tmp_path)
    for step in (2, 4, 6, 8):
        report.record(run, "train", step, {"loss": 10.0 / step})
    with open(os.path.join(run, report.HISTORY), "a") as f:
        f.write('{"kind": "train", "st')  # a line cut by a crash
    report.truncate_history(run, 4)
    assert [(h["step"], h["loss"]) for h in report.read_history(run)] == [(2, 5.0), (4, 2.5)]


def test_everything_shown_is_escaped(tmp_path):
    run = str(tmp_path / "<run>")
    report.record(run, "validation", 1, {"psnr": 20.0, "<b>": 1.0})
    path = report.write_run_report(run, {"step": 1, "validation": {"psnr": 20.0, "<b>": 1.0},
                                         "stopped": "<script>alert(1)</script>"},
                                   {"name": "</pre><script>"}, command="cadl train --out '<run>'")
    raw = open(path).read()
    assert "<script>" not in raw and "&lt;script&gt;" in raw and "&lt;b&gt;" in raw
    page = check_page(path)
    assert "cadl train --out '<run>'" in " ".join(page.text)


def _score(source, rendered):
    """A simple score of the kind ``cadl render --score`` gives: PSNR, Laplacian-variance and flicker ratios
    (no SSIM: the page must do without it)."""
    import cv2

    src, out = np.stack(source).astype(np.float64), np.stack(rendered).astype(np.float64)
    mse = float(np.mean((src - out) ** 2))

    def laplacian(frames):
        return float(np.mean([cv2.Laplacian(cv2.cvtColor(f.astype(np.uint8), cv2.COLOR_RGB2GRAY), cv2.CV_64F).var()
                              for f in frames]))

    def flicker(frames):
        return float(np.mean(np.abs(np.diff(frames, axis=0))))

    return {"psnr": 10 * np.log10(255.0 ** 2 / max(mse, 1e-12)), "laplacian_ratio": laplacian(out) / laplacian(src),
            "flicker_ratio": flicker(out) / flicker(src)}


def test_render_report_on_a_rendered_film(runs, short_film, tmp_path):
    from jobs import render

    output = str(tmp_path / "film.mp4")
    summary = render.run(["--model", runs["out"], "--input", str(short_film), "--output", output,
                          "--preset", "ultrafast"])
    source = [f for _, _, f in media.read_frames(str(short_film))]
    rendered = [f for _, _, f in media.read_frames(output)]
    assert len(source) == len(rendered) == 75
    summary = dict(summary, score=_score(source, rendered))
    path = report.render_report(output, summary, source, rendered)
    assert path == output + ".report.html"
    page = check_page(path)
    assert page.sources == ["film.mp4.report-strip.png"]
    with Image.open(output + ".report-strip.png") as strip:  # two rows of 8 frames of 160x90, 2 px apart
        assert strip.size == (8 * 162 + 2, 2 * 92 + 2)
    text = " ".join(page.text)
    assert report._fmt(summary["score"]["psnr"]) in text and "Laplacian" in text and "SSIM" not in text
    # a summary without a score, frames missing: still a page, saying so
    bare = report.render_report(str(tmp_path / "other.mp4"), {"frames": 3}, [], [])
    assert "no score" in " ".join(check_page(bare).text)
    folder = tmp_path / "frames"
    folder.mkdir()
    assert report.render_report(str(folder), summary, source[:2], rendered[:2]) == str(folder / "report.html")
    assert check_page(str(folder / "report.html")).sources == ["report-strip.png"]


def test_retrain_report_tolerates_missing_figures_and_escapes(tmp_path):
    history = [{"run_id": "r1", "status": "failed", "error": "<boom>"},
               {"run_id": "r2", "status": "promoted", "version": "v0001", "latest": "v0001",
                "candidate": {"loss": 3.0, "psnr": 20.5}, "reason": "first model"},
               {"run_id": "r3", "status": "rejected", "candidate": {"loss": 4.0, "psnr": float("nan")},
                "current": {"loss": 3.0, "psnr": 20.5}, "reason": "PSNR is worse"}]
    path = report.write_retrain_report(str(tmp_path), history, {"v0001": {"reason": "first model"}})
    page = check_page(path)
    text = " ".join(page.text)
    assert page.sources == ["report/psnr.png"] and "<boom>" in text and "&lt;boom&gt;" in open(path).read()
    assert "20.5" in text and "PSNR is worse" in text
