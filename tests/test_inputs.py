"""Inputs that are not what they seem: each gets a correct result or a one-line error.
Non-video, empty, zero-frame and corrupted files; 1×1, 7×5 and odd sizes; a single image;
10-bit, grayscale and alpha pixel formats; variable frame rate; rotation metadata (applied)."""
from fractions import Fraction

import av
import numpy as np
import pytest

from neuralcodec import cli, codec, streaminfo
from neuralcodec import video_io as vio
from neuralcodec import video_out as vout
from neuralcodec.errors import InputError


def write(path, w, h, t=5, pix="yuv420p", codec_name="ffv1", pts=None, rotation=None, rate=25):
    c = av.open(str(path), "w")
    s = c.add_stream(codec_name, rate=rate)
    s.width, s.height, s.pix_fmt = w, h, pix
    if rotation is not None:
        s.set_display_rotation(rotation)
    y, x = np.mgrid[0:h, 0:w]
    for i in range(t):
        a = np.stack([(x * 30 + i * 20) % 256, (y * 40) % 256, np.full_like(x, 90)], -1).astype(np.uint8)
        f = av.VideoFrame.from_ndarray(a, format="rgb24").reformat(format=pix)
        f.pts = i if pts is None else pts[i]
        for p in s.encode(f):
            c.mux(p)
    for p in s.encode():
        c.mux(p)
    if t == 0:
        c.start_encoding()  # write the header: a video stream without frames
    c.close()
    return path


def round_trip(tiny, src, tmp_path, ext=".mkv"):
    data = codec.compress(tiny, src, segment_frames=5)
    meta, it = codec.decompress_from_file(__import__("io").BytesIO(data), model=tiny)
    out = tmp_path / f"out{ext}"
    n = vout.write_video(out, meta, it)
    return meta, n, out


@pytest.mark.parametrize("w, h", [(1, 1), (7, 5), (33, 17)])
def test_tiny_and_odd_sizes(tiny, tmp_path, w, h):
    src = write(tmp_path / "in.mkv", w, h, pix="yuv444p")
    for ext in (".mkv", ".mp4"):
        meta, n, out = round_trip(tiny, src, tmp_path, ext)
        assert (meta.width, meta.height, n) == (w, h, 5)
        frames = list(vio.read_frames(out))
        assert len(frames) == 5 and frames[0].shape == (h, w, 3)


@pytest.mark.parametrize("pix", ["yuv420p10le", "gray", "gray16le", "rgba", "yuva420p", "bgr0"])
def test_pixel_formats(tiny, tmp_path, pix):
    src = (write(tmp_path / "in.nut", 16, 12, pix=pix, codec_name="rawvideo") if pix == "rgba"
           else write(tmp_path / "in.mkv", 16, 12, pix=pix))
    assert vio.probe(src).pix_fmt == pix
    meta, n, out = round_trip(tiny, src, tmp_path)
    assert n == 5 and meta.pix_fmt == pix
    m2 = vio.probe(out)
    assert (m2.width, m2.height) == (16, 12)
    # the output keeps the source format where FFV1 has it, else the nearest (alpha is dropped
    # on input and comes back opaque where the output format has an alpha plane)
    assert m2.pix_fmt == vout.choose_pix_fmt(pix, vout._supported("mkv", "ffv1"))
    assert len(list(vio.read_frames(out))) == 5


def test_variable_frame_rate_keeps_every_frame(tiny, tmp_path):
    src = write(tmp_path / "vfr.mkv", 16, 16, t=7, pts=[0, 1, 2, 5, 6, 10, 11])
    meta = vio.probe(src)
    data = codec.compress(tiny, src, segment_frames=5)
    m, frames = codec.decompress(data, model=tiny)
    assert frames.shape[0] == 7  # every frame, played at the average rate (constant)
    assert m.fps == meta.fps


@pytest.mark.parametrize("rot", [90, -90, 180])
def test_rotation_is_applied(tiny, tmp_path, rot):
    src = write(tmp_path / "r.mp4", 32, 16, t=3, codec_name="mpeg4", rotation=rot)
    meta = vio.probe(src)
    assert meta.rotation == rot % 360
    assert (meta.width, meta.height) == ((16, 32) if rot % 180 else (32, 16))
    raw = next(iter(av.open(str(src)).decode(video=0))).to_ndarray(format="rgb24")
    got = next(vio.read_frames(src))
    np.testing.assert_array_equal(got, np.rot90(raw, (rot // 90) % 4))
    data = codec.compress(tiny, src)
    m, frames = codec.decompress(data, model=tiny)
    assert frames.shape == (3, meta.height, meta.width, 3)


def test_single_image(tiny, tmp_path):
    p = tmp_path / "img.png"
    av_img = np.random.default_rng(0).integers(0, 256, (9, 11, 3), np.uint8)
    vout.write_video(str(tmp_path / "img%d.png"), vio.VideoMeta(11, 9, Fraction(25), 1, "rgb24"), [av_img])
    (tmp_path / "img1.png").rename(p)
    m, frames = codec.decompress(codec.compress(tiny, p), model=tiny)
    assert frames.shape == (1, 9, 11, 3)


def test_zero_frame_video(tiny, tmp_path):
    src = write(tmp_path / "zero.mkv", 16, 16, t=0)
    with pytest.raises(InputError):  # FFmpeg cannot even probe it, or it has no frames
        codec.compress(tiny, src)


def one_line(r, code):
    assert r.exit_code == code, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mgv: error: ") and "Traceback" not in r.output
    return lines[0]


@pytest.mark.parametrize("kind", ["text", "empty", "zero", "cut_mp4", "garbled_mp4", "dir"])
def test_bad_files_give_one_line(runner, tmp_path, kind):
    src = tmp_path / "in.mp4"
    if kind == "text":
        src.write_text("just some text, not a video\n" * 30)
    elif kind == "empty":
        src.write_bytes(b"")
    elif kind == "zero":
        src = write(tmp_path / "zero.mkv", 16, 16, t=0)
    elif kind == "dir":
        src = tmp_path / "d.mp4"
        src.mkdir()
    else:
        write(src, 32, 32, t=12, codec_name="mpeg4")
        data = bytearray(src.read_bytes())
        if kind == "cut_mp4":
            data = data[: len(data) // 2]
        else:  # garble the middle (sample data and/or tables)
            rng = np.random.default_rng(1)
            mid = len(data) // 3
            data[mid:mid + 400] = rng.integers(0, 256, 400, np.uint8).tobytes()
        src.write_bytes(bytes(data))
    out = tmp_path / "o.mgv"
    r = runner.invoke(cli.main, ["encode", str(src), "-o", str(out), "-q"])
    if r.exit_code == 0:  # FFmpeg could still decode it: a correct, complete stream
        assert kind == "garbled_mp4" and out.exists()
        assert streaminfo.stream_info(open(out, "rb")).damaged == ()
    else:
        assert one_line(r, 3)
        assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
