"""Report pages a person opens in a browser: one static HTML file each, no server, no JavaScript.

Three pages, each rewritten atomically (``pipelines.atomic``) so a browser never shows half of one:

- ``RUN/report.html`` (``write_run_report``, from ``pipelines.trainer`` at validations, at most every 30 s,
  and at the end):
  step, epochs, images/s, the train and validation loss terms, validation PSNR and any sharpness figures,
  plots of loss and PSNR over steps (``RUN/report/loss.png``, ``psnr.png``, ``sharpness.png`` when logged),
  the latest reconstruction and latent montages, the GIF, the model config and the command line. The plots
  are drawn from ``RUN/report/history.jsonl`` (one JSON object per logged step, ``record``), which a resumed
  run cuts back to its checkpoint's step (``truncate_history``) and then continues.
- ``OUT.report.html`` next to a rendered film (``render_report``; for a PNG-sequence folder
  ``OUT/report.html``): the render's score (PSNR, SSIM, MS-SSIM, sharpness and flicker ratios, whichever
  are there) and a strip of source frames over the rendered ones (``OUT.report-strip.png``).
- ``WORKDIR/report.html`` (``write_retrain_report``, from ``pipelines.retrain`` after every run): the
  versions, every run's candidate and promoted-model metrics and why the candidate was promoted or not,
  oldest first, with a plot of validation PSNR over runs.

Every value shown is HTML-escaped; images are referenced by relative paths in the same folder tree, so the
folder can be copied or served as it is.
"""
import html
import io
import json
import os
import shlex
import sys

import numpy as np

from pipelines import atomic

HISTORY = os.path.join("report", "history.jsonl")
LOSS_TERMS = ("loss", "reconstruction", "kl")
SHARPNESS = ("sharp", "laplacian", "gradient")  # a logged metric whose name holds one of these is plotted
STRIP_FRAMES = 8  # frames in a render report's strip
PLOT_POINTS = 2000  # at most this many points per curve (a long run's history is thinned evenly, ends kept)

_STYLE = """body{font-family:sans-serif;margin:2em;max-width:72em;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{border:1px solid #ccc;padding:0.2em 0.6em;text-align:left}
th{background:#f3f3f3}img{max-width:100%;image-rendering:pixelated;border:1px solid #ddd}
pre{background:#f7f7f7;padding:0.8em;overflow-x:auto}.figures td:nth-child(2){font-family:monospace}"""


# ------------------------------------------------------------------------------------------ history

def record(run, kind, step, metrics, **extra):
    """Append one line to ``RUN/report/history.jsonl``: ``kind`` "train" or "validation", the metrics at
    ``step``. One O_APPEND write, so a reader never sees half a line."""
    path = os.path.join(run, HISTORY)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    line = {"kind": kind, "step": int(step), **{k: _number(v) for k, v in dict(metrics).items()}, **extra}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, (json.dumps(line, sort_keys=True) + "\n").encode())
    finally:
        os.close(fd)


def read_history(run):
    """The history's lines, in step order; the last line logged for a (kind, step) wins; broken lines are
    skipped (a crash can cut the last one)."""
    entries = {}
    try:
        with open(os.path.join(run, HISTORY)) as f:
            for text in f:
                try:
                    line = json.loads(text)
                    entries[(line["kind"], int(line["step"]))] = line
                except (ValueError, KeyError, TypeError):
                    continue
    except OSError:
        return []
    return [entries[k] for k in sorted(entries, key=lambda k: (k[1], k[0]))]


def truncate_history(run, step):
    """Keep the lines up to ``step`` (a resumed run redoes the steps after its checkpoint)."""
    path = os.path.join(run, HISTORY)
    if not os.path.exists(path):
        return
    kept = [line for line in read_history(run) if line["step"] <= step]
    atomic.write_bytes(path, "".join(json.dumps(line, sort_keys=True) + "\n" for line in kept).encode())


# ------------------------------------------------------------------------------------------ the run page

def write_run_report(run, figures, model_config=None, command=None, settings=None):
    """Write ``RUN/report.html`` and its plots from ``figures`` (the keys of the run's summary.json: step,
    epochs, images_per_s, train, validation, stopped, ...; any may be missing), the history file, and the
    montages in ``RUN/montages``. ``command``: the command line that made the run (default: this process's);
    ``settings``: the resolved flags (``jobs.config_file``: config_file, flags). Returns the page's path."""
    history = read_history(run)
    plots = []
    for name, title, keys in (("loss", "loss per image", LOSS_TERMS), ("psnr", "PSNR (dB)", ("psnr",)),
                              ("sharpness", "sharpness", None)):
        series = _series(history, keys)
        if series:
            path = os.path.join(run, "report", f"{name}.png")
            write_plot(path, series, title, log_y=name == "loss")
            plots.append((title, os.path.relpath(path, run)))
    train, val = figures.get("train") or {}, figures.get("validation") or {}
    rows = [("step", figures.get("step")), ("epochs", _fmt(figures.get("epochs"))),
            ("images/s (training)", _fmt(figures.get("images_per_s"))),
            ("status", figures.get("stopped") or "training"),
            ("validation PSNR (dB)", _fmt(val.get("psnr"))),
            ("validation split", figures.get("validation_split")),
            ("wall time (s)", _fmt(figures.get("wall_time_s")))]
    body = [f"<h1>Training run {_e(os.path.basename(os.path.abspath(run)))}</h1>",
            f"<p>{_e(os.path.abspath(run))}</p>", _table(rows, cls="figures")]
    if train or val:
        names = [k for k in dict.fromkeys(list(train) + list(val))]
        body += ["<h2>Loss terms and metrics (latest)</h2>",
                 _table([(k, _fmt(train.get(k)), _fmt(val.get(k))) for k in names],
                        header=("metric", "train (last window)", "validation"))]
    for title, rel in plots:
        body.append(f"<h2>{_e(title)} over steps</h2>{_img(rel, title)}")
    montages = os.path.join(run, "montages")
    for prefix, title in (("recon-", "reconstructions (originals over reconstructions)"),
                          ("latent-", "decoded samples of z ~ N(0, I)")):
        latest = _latest(montages, prefix)
        if latest:
            body.append(f"<h2>Latest {_e(title)}: {_e(latest)}</h2>{_img('montages/' + latest, title)}")
    if os.path.exists(os.path.join(montages, "reconstructions.gif")):
        body.append(f"<h2>Reconstructions over training</h2>{_img('montages/reconstructions.gif', 'GIF')}")
    if model_config:
        body.append(f"<h2>Model config</h2><pre>{_e(json.dumps(model_config, indent=2, sort_keys=True))}</pre>")
    body.append(f"<h2>Command line</h2><pre>{_e(command or shlex.join(sys.argv))}</pre>")
    if settings and settings.get("flags"):
        source = f" (command line over {settings['config_file']})" if settings.get("config_file") else ""
        body.append(f"<h2>Resolved flags{_e(source)}</h2>"
                    f"<pre>{_e(json.dumps(settings['flags'], indent=2, sort_keys=True))}</pre>")
    path = os.path.join(run, "report.html")
    _write_page(path, f"cadl run {os.path.basename(os.path.abspath(run))}", body)
    return path


def _series(history, keys):
    """{label: ([steps], [values])} of ``keys`` (None: the sharpness metrics) for train and validation."""
    series = {}
    for line in history:
        for key, value in line.items():
            wanted = key in keys if keys else any(word in key for word in SHARPNESS)
            if wanted and isinstance(value, (int, float)) and np.isfinite(value) and key != "step":
                steps, values = series.setdefault(f"{line['kind']} {key}", ([], []))
                steps.append(line["step"])
                values.append(value)
    for label, (steps, values) in series.items():
        if len(steps) > PLOT_POINTS:
            keep = sorted({round(i * (len(steps) - 1) / (PLOT_POINTS - 1)) for i in range(PLOT_POINTS)})
            series[label] = ([steps[i] for i in keep], [values[i] for i in keep])
    return series


def write_plot(path, series, title, log_y=False, xlabel="step"):
    """A PNG line plot of ``series`` {label: (xs, ys)} against the step, drawn with matplotlib's Agg
    canvas (no display, no global pyplot state), written atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3.2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for label, (xs, ys) in sorted(series.items()):
        ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=label)
    if log_y and all(v > 0 for _, ys in series.values() for v in ys):
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    atomic.write_bytes(path, buffer.getvalue())


# ------------------------------------------------------------------------------------------ the render page

SCORE_LABELS = (("psnr", "PSNR (dB), render against source"), ("ssim", "SSIM"), ("ms_ssim", "MS-SSIM"),
                ("laplacian_ratio", "sharpness: Laplacian variance, render / source"),
                ("flicker_ratio", "flicker: frame-to-frame change, render / source"))


def render_report_paths(output):
    """(page, strip image) of a render's report: ``OUT.report.html`` and ``OUT.report-strip.png`` next to a
    film; ``OUT/report.html`` and ``OUT/report-strip.png`` inside a PNG-sequence folder."""
    output = os.path.abspath(output)
    if os.path.isdir(output):
        return os.path.join(output, "report.html"), os.path.join(output, "report-strip.png")
    return output + ".report.html", output + ".report-strip.png"


def render_report(output, summary, source_frames, render_frames):
    """Write the report page of a render: ``summary`` is the render's summary (its ``score`` dict, from
    ``cadl render --score``, holds psnr, ssim, ms_ssim, laplacian_ratio, flicker_ratio; any may be missing),
    ``source_frames`` and ``render_frames`` are matching lists of uint8 (H, W, 3) frames (a few: the strip
    shows up to STRIP_FRAMES, evenly spaced). Returns the page's path."""
    page, strip_path = render_report_paths(output)
    summary = summary or {}
    score = summary.get("score") or {}
    rows = [(label, _fmt(score.get(key))) for key, label in SCORE_LABELS if key in score]
    rows += [(k, _fmt(v)) for k, v in sorted(score.items()) if k not in dict(SCORE_LABELS)]
    facts = [("input", summary.get("input")), ("output", summary.get("output") or os.path.abspath(output)),
             ("model", summary.get("model")), ("frames", summary.get("frames")), ("fps", summary.get("fps")),
             ("size (W x H)", f"{summary['width']} x {summary['height']}" if "width" in summary else None),
             ("format", summary.get("format")), ("render frames/s", _fmt(summary.get("render_fps")))]
    body = [f"<h1>Render {_e(os.path.basename(os.path.abspath(output)))}</h1>",
            _table([(k, v) for k, v in facts if v is not None], cls="figures"), "<h2>Score</h2>",
            _table(rows, cls="figures") if rows else "<p>no score in this render's summary</p>"]
    strip = frame_strip(source_frames, render_frames)
    if strip is not None:
        from pipelines import visual

        visual.write_png(strip_path, strip)
        body.append("<h2>Source frames (top) and rendered frames (bottom)</h2>"
                    + _img(os.path.basename(strip_path), "source over render"))
    if summary.get("options"):
        body.append(f"<h2>Options</h2><pre>{_e(json.dumps(summary['options'], indent=2, sort_keys=True))}</pre>")
    _write_page(page, f"cadl render {os.path.basename(os.path.abspath(output))}", body)
    return page


def frame_strip(source_frames, render_frames, count=STRIP_FRAMES):
    """Up to ``count`` evenly spaced pairs as one picture: source frames in a row over the rendered ones
    (each rendered frame resized to its source frame's size). None without frames."""
    from PIL import Image

    from pipelines import visual

    n = min(len(source_frames), len(render_frames))
    if n == 0:
        return None
    picks = sorted({round(i * (n - 1) / max(count - 1, 1)) for i in range(min(count, n))})
    tiles = []
    for row in (source_frames, render_frames):
        for i in picks:
            frame = visual.to_uint8(row[i])[..., :3]
            h, w = visual.to_uint8(source_frames[i]).shape[:2]
            if frame.shape[:2] != (h, w):
                frame = np.asarray(Image.fromarray(frame).resize((w, h), Image.BILINEAR))
            tiles.append(frame)
    return visual.montage(np.stack(tiles), cols=len(picks), pad=2)


# ------------------------------------------------------------------------------------------ the retrain page

def write_retrain_report(work, history, versions):
    """Write ``WORKDIR/report.html``: ``history`` is the list of history.jsonl lines (one per run, oldest
    first: run_id, status, promoted, reason, version, latest, candidate/current {loss, psnr}, ...),
    ``versions`` the {version: retrain.json decision} of every promoted version. Returns the page's path."""
    latest = history[-1].get("latest") if history else None
    body = [f"<h1>Scheduled retraining: {_e(os.path.abspath(work))}</h1>",
            _table([("runs", len(history)), ("versions", len(versions)), ("models/LATEST", latest)],
                   cls="figures"), "<h2>Versions</h2>"]
    body.append(_table([(v, (d.get("decided") or ""), _fmt(((d.get("metrics") or {}).get("candidate") or {})
                                                           .get("psnr")), d.get("previous"), d.get("reason"))
                        for v, d in sorted(versions.items())],
                       header=("version", "decided", "validation PSNR (dB)", "replaced", "why promoted")))
    runs = []
    for line in history:
        cand, cur = line.get("candidate") or {}, line.get("current") or {}
        runs.append((line.get("run_id"), line.get("status"), line.get("version") or "",
                     _fmt(cand.get("loss")), _fmt(cand.get("psnr")), _fmt(cur.get("loss")), _fmt(cur.get("psnr")),
                     line.get("inputs_new"), line.get("records"), line.get("reason") or line.get("error")))
    series = {}
    for i, line in enumerate(history):
        for who in ("candidate", "current"):
            psnr = (line.get(who) or {}).get("psnr")
            if isinstance(psnr, (int, float)) and np.isfinite(psnr):
                label = "candidate" if who == "candidate" else "promoted model"
                xs, ys = series.setdefault(f"{label}, validation PSNR", ([], []))
                xs.append(i + 1)
                ys.append(psnr)
    if series:
        write_plot(os.path.join(work, "report", "psnr.png"), series, "validation PSNR (dB) by run",
                   xlabel="run (oldest first)")
        body.append("<h2>Validation PSNR by run</h2>" + _img("report/psnr.png", "PSNR by run"))
    body += ["<h2>Runs, oldest first</h2>",
             _table(runs, header=("run", "status", "version", "candidate loss", "candidate PSNR", "promoted loss",
                                  "promoted PSNR", "new inputs", "records", "why"))]
    path = os.path.join(work, "report.html")
    _write_page(path, "cadl retrain", body)
    return path


# ------------------------------------------------------------------------------------------ HTML pieces

def _e(value):
    return html.escape("" if value is None else str(value), quote=True)


def _fmt(value):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        return value
    value = float(value)
    if value.is_integer() and abs(value) < 1e12:
        return str(int(value))
    return f"{value:.4g}" if abs(value) >= 1e4 or abs(value) < 1e-2 else f"{value:.4f}".rstrip("0")


def _number(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


def _table(rows, header=None, cls=None):
    head = "<tr>" + "".join(f"<th>{_e(h)}</th>" for h in header) + "</tr>" if header else ""
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    attribute = f' class="{cls}"' if cls else ""
    return f"<table{attribute}>{head}{body}</table>"


def _img(rel, alt):
    return f'<p><img src="{_e(rel.replace(os.sep, "/"))}" alt="{_e(alt)}"></p>'


def _latest(folder, prefix):
    try:
        names = sorted(n for n in os.listdir(folder) if n.startswith(prefix) and n.endswith(".png"))
    except OSError:
        return None
    return names[-1] if names else None


def _write_page(path, title, body):
    page = (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{_e(title)}</title>"
            f"<style>{_STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
    atomic.write_bytes(path, page.encode())
