"""``cadl info FILM...``: what cadl sees in a film, in one screen, before an hour of training.

    cadl info FILM [FILM ...] [--json] [--segment-seconds S] [--no-decode-check]

Container, codecs, stored and shown size, pixel and display aspect, rotation, field order, bit depth, the
exact frame rate, variable rate or not, frames, duration, start time, keyframes and extraction segments,
audio tracks, how the timestamps were learned (demuxed, or decoded because the demuxed ones disagreed),
and whether cadl can extract and render the film: the first, middle and last frames are decoded the way
extraction decodes them. ``--json`` prints one JSON object per film (a list) for scripts. Exits 1 when any
film cannot be used, with its reason.
"""
import argparse
import json
import sys

from jobs import config_file
from pipelines import media
from pipelines.describe import describe
from pipelines.errors import CadlError


def build_parser():
    p = argparse.ArgumentParser(prog="cadl info", description="Show what cadl sees in films: streams, size and "
                                "aspect, rotation, fields, exact rate, frames, keyframes, audio tracks, and "
                                "whether it can extract and render them.")
    p.add_argument("films", nargs="+", metavar="FILM")
    config_file.add_option(p)
    p.add_argument("--json", action="store_true", help="print a JSON list, one object per film")
    p.add_argument("--segment-seconds", type=float, default=10.0, metavar="S",
                   help="extraction's segment length, for the segment count (default: %(default)s)")
    p.add_argument("--no-decode-check", action="store_true",
                   help="only probe: do not decode the first, middle and last frames")
    p.add_argument("--stall-seconds", type=float, default=media.STALL_SECONDS, metavar="SECONDS",
                   help="give up on an ffmpeg process silent this long (default: %(default)s)")
    return p


def format_text(d):
    if not d["usable"] and "frames" not in d:
        return f"{d['path']}\n  cannot be used: {d['problem']}"
    audio = ", ".join(f"#{a['index']} {a['codec']}" + (f" {a['sample_rate']} Hz" if a["sample_rate"] else "") +
                      (f" {a['channels']}" if a["channels"] else "") + (f" [{a['language']}]" if a["language"]
                                                                        and a["language"] != "und" else "")
                      for a in d["audio_tracks"]) or "none"
    shown = f"{d['size'][0]}x{d['size'][1]}"
    stored = f"{d['coded_size'][0]}x{d['coded_size'][1]}"
    lines = [
        d["path"],
        f"  container    {d['container']}, {d['size_bytes'] / 2 ** 20:.1f} MiB",
        f"  video        {d['video_codec']}, {d['pix_fmt']} ({d['bit_depth']}-bit)",
        f"  picture      stored {stored}, pixel aspect {d['sar']}, rotation {d['rotation']} deg "
        f"-> shown {shown} (display aspect {d['display_aspect']})",
        f"  fields       {d['field_order']}" + (" (deinterlaced by default; --keep-fields keeps them)"
                                                if d["interlaced"] else ""),
        f"  rate         {d['fps']} fps ({d['fps_float']:g})" + (", variable: each frame keeps its own time"
                                                                  if d["vfr"] else ", constant"),
        f"  frames       {d['frames']} in {d['duration']:.3f} s, first at {d['start_time']:.3f} s "
        f"(timestamps {'demuxed' if d['timestamps'] == 'demux' else 'learned by decoding'})",
        f"  keyframes    {d['keyframes']}; {d['segments']} extraction segment{'s' if d['segments'] != 1 else ''}",
    ]
    if d["gaps"]["count"]:
        lines.append(f"  gaps         {d['gaps']['frames_missing']} frames missing in {d['gaps']['count']} "
                     f"jump{'s' if d['gaps']['count'] != 1 else ''} of the timestamps, the first from "
                     f"{d['gaps']['first'][0]:.3f} s to {d['gaps']['first'][1]:.3f} s (damage or dropped frames)")
    lines += [
        f"  audio        {audio}",
    ]
    check = d.get("decode_check")
    if check is not None:
        lines.append(f"  decode check {check['frames_tried'] - len(check['failed'])}/{check['frames_tried']} "
                     f"frames decoded" + (f" (failed at frames {check['failed']})" if check["failed"] else ""))
    lines.append("  cadl         " + ("can extract and render it" if d["usable"] else f"cannot use it: {d['problem']}"))
    return "\n".join(lines)


def run(argv=None):
    args = config_file.parse(build_parser(), argv)
    if args.segment_seconds <= 0 or args.stall_seconds <= 0:
        raise CadlError("--segment-seconds and --stall-seconds must be > 0")
    results = [describe(f, args.segment_seconds, not args.no_decode_check, args.stall_seconds) for f in args.films]
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print("\n\n".join(format_text(d) for d in results))
    bad = [d for d in results if not d["usable"]]
    if bad:
        raise CadlError(f"{len(bad)} of {len(results)} film{'s' if len(results) != 1 else ''} cannot be used: " +
                        "; ".join(f"{d['path']}: {d['problem']}" for d in bad), exit_code=1)
    return {"films": results}


if __name__ == "__main__":
    from jobs import main
    sys.exit(main(run))
