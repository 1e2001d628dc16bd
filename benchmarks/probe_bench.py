"""What a film's probe costs, against the one demux that the probe before the real-footage work was.

    python benchmarks/probe_bench.py [--seconds 120] [--size 640x360] [--repeat 5]

Films: H.264 in MP4 and MPEG-4 ASP with B-frames in AVI (no pts), generated here. For each, the median wall
time of ``media.probe`` (demux with +genpts, cross-checks, the decoder's first frames) and of the baseline,
a bare ``ffmpeg -c copy -f framecrc`` demux of the video stream (the old probe's work; extraction's planning
then ran it twice, once more for keyframes, which the probe now gives). Last line: the ratio of the
probe to the baseline summed over the films.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipelines import media  # noqa: E402
from pipelines.media import ffmpeg_exe  # noqa: E402
from pipelines.synthetic import make_film  # noqa: E402


def median_seconds(fn, repeat):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def demux(path):
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-copyts", "-i", path,
                    "-map", "0:V:0", "-c", "copy", "-f", "framecrc", "-"], stdout=subprocess.DEVNULL, check=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=120.0)
    p.add_argument("--size", default="640x360", help="WxH of the generated films")
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args(argv)
    w, h = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        films = [make_film(os.path.join(tmp, "film.mp4"), "testsrc2", args.seconds, (w, h), "25"),
                 make_film(os.path.join(tmp, "film.avi"), "testsrc2", args.seconds, (w, h), "25",
                           extra_video_args=("-bf", "2"))]
        total_probe = total_base = 0.0
        for film in films:
            info = media.probe(film)
            probe_s = median_seconds(lambda: media.probe(film), args.repeat)
            base_s = median_seconds(lambda: demux(film), args.repeat)
            total_probe, total_base = total_probe + probe_s, total_base + base_s
            print(f"{os.path.basename(film)}: {info.num_frames} frames, {info.fps} fps, timestamps by "
                  f"{info.probe_method}: probe {probe_s * 1e3:.0f} ms, bare demux {base_s * 1e3:.0f} ms "
                  f"({probe_s / base_s:.2f}x)")
    print(f"probe / bare demux = {total_probe / total_base:.2f}")


if __name__ == "__main__":
    main()
