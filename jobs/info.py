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

from pipelines import media
from pipelines.errors import CadlError


def build_parser():
    p = argparse.ArgumentParser(prog="cadl info", description="Show what cadl sees in films: streams, size and "
                                "aspect, rotation, fields, exact rate, frames, keyframes, audio tracks, and "
                                "whether it can extract and render them.")
    p.add_argument("films", nargs="+", metavar="FILM")
    p.add_argument("--json", action="store_true", help="print a JSON list, one object per film")
    p.add_argument("--segment-seconds", type=float, default=10.0, metavar="S",
                   help="extraction's segment length, for the segment count (default: %(default)s)")
    p.add_argument("--no-decode-check", action="store_true",
                   help="only probe: do not decode the first, middle and last frames")
    p.add_argument("--stall-seconds", type=float, default=media.STALL_SECONDS, metavar="SECONDS",
                   help="give up on an ffmpeg process silent this long (default: %(default)s)")
    return p


def describe(path, segment_seconds=10.0, decode_check=True, stall_seconds=None):
    """A dict of what cadl sees in ``path``; ``usable`` False and ``problem`` when it cannot be used."""
    try:
        info = media.probe(path, stall_seconds)
    except media.MediaError as e:
        return {"path": str(path), "usable": False, "problem": str(e).replace(f"{path}: ", "", 1)}
    out = {
        "path": info.path, "container": info.container, "video_codec": info.video_codec, "pix_fmt": info.pix_fmt,
        "bit_depth": info.bit_depth, "coded_size": [info.coded_width, info.coded_height],
        "size": [info.width, info.height], "sar": _ratio(info.sar), "display_aspect": _ratio(info.display_aspect),
        "rotation": info.rotation, "field_order": info.field_order, "interlaced": info.interlaced,
        "fps": _ratio(info.fps), "fps_float": round(float(info.fps), 6), "vfr": info.vfr,
        "frames": info.num_frames, "duration": round(info.duration, 6), "start_time": round(info.start_time, 6),
        "keyframes": len(info.keyframes),
        "segments": len(media.keyframe_segments(info, info.keyframes, segment_seconds, 0, info.num_frames)),
        "timestamps": info.probe_method,
        "gaps": {"count": len(info.gaps), "frames_missing": sum(g[2] for g in info.gaps),
                 "first": [round(info.gaps[0][0], 3), round(info.gaps[0][1], 3)] if info.gaps else None},
        "audio_tracks": [{"index": a.index, "codec": a.codec, "sample_rate": a.sample_rate,
                          "channels": a.channels, "language": a.language} for a in info.audio_tracks],
        "size_bytes": info.size_bytes, "usable": True, "problem": None,
    }
    if decode_check:
        lost = []
        for index in sorted({0, info.num_frames // 2, info.num_frames - 1}):
            try:
                got = [i for i, _, _ in media.read_frames(info.path, (16, 16), start=index, stop=index + 1,
                                                          info=info, stall_seconds=stall_seconds)]
            except media.MediaError:
                got = []
            if not got:
                lost.append(index)
        out["decode_check"] = {"frames_tried": len({0, info.num_frames // 2, info.num_frames - 1}),
                               "failed": lost}
        if len(lost) == out["decode_check"]["frames_tried"]:
            out.update(usable=False, problem="no frame could be decoded")
    return out


def _ratio(value):
    return f"{value.numerator}/{value.denominator}" if value.denominator != 1 else str(value.numerator)


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
    args = build_parser().parse_args(argv)
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
