"""What cadl sees in a film, as a dict: ``describe(path)`` (``cadl info`` prints it).

Container, codecs, stored and shown size, pixel and display aspect, rotation, field order, bit depth, the
exact frame rate, variable rate or not, frames, duration, start time, keyframes and extraction segments,
audio tracks, how the timestamps were learned, and whether the first, middle and last frames decode the way
extraction decodes them.
"""
from pipelines import media


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
