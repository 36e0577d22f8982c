"""``mgv encode --joint N`` (neuralcodec.jointfit): the update and the codes fitted together in
passes over the video; the update sent only when the group's point lies above the plain curve,
else the codes refined through the plain decoder."""
from __future__ import annotations

import io

import numpy as np
import pytest

from neuralcodec import adapt, codec, finetune, jointfit, refine, sampling
from neuralcodec import container as ct
from neuralcodec.configs import TINY
from neuralcodec.errors import InputError
from neuralcodec.options import EncodeOptions
from neuralcodec.video_io import FrameSpool, VideoMeta

from test_adapt import model, video  # noqa: F401,F811  (test_adapt's tiny model and clip fixtures)


def records(data):
    return list(ct.Reader(io.BytesIO(data)).records())


def mse(a, b):
    return float(np.mean((a.astype(np.float64) - b) ** 2))


def test_joint_fit_sends_an_update_that_decodes_better(model, video, monkeypatch):
    """The group's update is written first, names every segment of its group, decodes (with the
    stored codes) closer to the video than the plain stream, and the progress counts one step
    per decoder chunk per pass (as ``adapt_steps`` says)."""
    monkeypatch.setattr(jointfit, "_slope", lambda *a: 0.0)  # a flat plain curve: any gain pays
    ticks = []
    buf = io.BytesIO()
    res = codec.compress_to_file(model, video, buf, segment_frames=9, joint=6, refine=1,
                                 adapt_progress=ticks.append)
    data = buf.getvalue()
    a = res.adaptation
    assert a["kept"] and a["passes"] == 6 and a["gain_db"] > 0 and res.bytes_written == len(data)
    meta = VideoMeta(video.shape[2], video.shape[1], 25, None, "rgb24")
    opts = EncodeOptions.of(None, segment_frames=9, joint=6, refine=1).checked(model)
    assert len(ticks) == a["steps"] == codec.adapt_steps(model, meta, opts, len(video))
    recs = records(data)
    header = ct.Reader(io.BytesIO(data)).header
    ad = adapt.Adaptation.parse(recs[0].payload, header)
    assert (ad.first_segment, ad.segments) == (0, header.segment_count)
    assert a["update_bytes"] == recs[0].size
    names = adapt.record_names(model, ad)
    assert {names[t.index] for t in ad.tensors} <= set(finetune.adapt_names(model))
    _, plain = codec.decompress(codec.compress(model, video, segment_frames=9), model=model)
    _, got = codec.decompress(data, model=model)
    assert mse(got, video) < mse(plain, video)
    # the stored codes are the ones the fit measured: decoding them gives the gain it reported
    gain = 10 * np.log10(mse(plain, video) / mse(got, video))
    assert abs(gain - a["gain_db"]) < 0.5


def test_each_pass_moves_the_codes_and_the_update_together(model, video, monkeypatch):
    """One optimiser step per chunk for the chunk's codes and for the update: with the
    adaptation's learning rate 0 only the codes move (the update is empty: no record), with the
    codes' 0 only the update does (the stored codes are the encoder's)."""
    monkeypatch.setattr(jointfit, "_slope", lambda *a: 0.0)
    plain = codec.compress(model, video, segment_frames=9)
    lr = jointfit.JOINT_LR
    monkeypatch.setattr(jointfit, "JOINT_LR", 0.0)
    frozen = codec.compress_to_file(model, video, io.BytesIO(), segment_frames=9, joint=4, refine=0)
    assert frozen.adaptation["why"] == "no change" and not frozen.adaptation["kept"]
    monkeypatch.setattr(jointfit, "JOINT_LR", lr)
    monkeypatch.setattr(jointfit, "REFINE_LR", 0.0)
    buf = io.BytesIO()
    res = codec.compress_to_file(model, video, buf, segment_frames=9, joint=4, refine=0)
    assert res.adaptation["kept"]
    segs = [r.payload for r in records(buf.getvalue()) if r.type == ct.REC_SEGMENT]
    assert segs == [r.payload for r in records(plain) if r.type == ct.REC_SEGMENT]


def test_an_update_that_does_not_pay_gives_the_refined_plain_stream(model, video, monkeypatch):
    """Below the plain curve the update is left out and the codes are refined through the plain
    decoder, as ``--refine`` alone codes them."""
    monkeypatch.setattr(jointfit, "_slope", lambda *a: 1e9)
    buf = io.BytesIO()
    res = codec.compress_to_file(model, video, buf, segment_frames=9, joint=3, refine=2)
    assert not res.adaptation["kept"] and res.adaptation["needed_db"] > res.adaptation["gain_db"]
    assert buf.getvalue() == codec.compress(model, video, segment_frames=9, refine=2)
    assert all(r.type != ct.REC_ADAPT for r in records(buf.getvalue()))


def test_one_update_per_group_and_a_one_shot_iterator(model, video, monkeypatch):
    """Groups of segments each get their own update (a record each, its own segments); frames
    from a one-shot iterator (the spool reads them back) code as the array does."""
    monkeypatch.setattr(jointfit, "_slope", lambda *a: 0.0)
    monkeypatch.setattr(sampling, "ADAPT_SEGMENTS", 2)
    buf = io.BytesIO()
    res = codec.compress_to_file(model, video, buf, segment_frames=9, joint=3, refine=1)
    groups = res.adaptation["groups"]
    assert [g["segments"] for g in groups] == [[0, 2], [2, 1]] and res.adaptation["kept"]
    header = ct.Reader(io.BytesIO(buf.getvalue())).header
    ads = [adapt.Adaptation.parse(r.payload, header) for r in records(buf.getvalue())[:2]]
    assert [(a.first_segment, a.segments) for a in ads] == [(0, 2), (2, 1)]
    meta = VideoMeta(video.shape[2], video.shape[1], 25, None, "rgb24")
    once = io.BytesIO()
    codec.compress_to_file(model, (meta, iter(list(video))), once, segment_frames=9, joint=3, refine=1)
    assert once.getvalue() == buf.getvalue()


def test_the_slope_is_that_of_the_plain_curve(model, video):
    """``_slope``: dB per doubling of bytes between the stream's bits and one plane more
    (a plane fewer at K bits), from the plain codes decoded by the plain decoder."""
    hdr_opts = EncodeOptions.of(None, segment_frames=9, bits=TINY.bits // 2).checked(model)
    meta, _ = codec.open_video(video)
    header = codec.stream_header(model, meta, hdr_opts)
    from neuralcodec.chunks import encode_segment
    segs, lats = [], []
    for f in range(0, len(video), 9):
        n, lat = encode_segment(model, iter(list(video[f:f + 9])), meta, 9)
        segs.append((f, n))
        lats.append(lat.float())

    def frames(first, count):
        return list(video[first:first + count])
    net = refine.refine_model(model)
    s = jointfit._slope(net, frames, segs, lats, header, 0.0)
    lo, hi = header.bits, min(TINY.bits, header.bits + TINY.bits // TINY.planes)
    size = [jointfit._bytes(model.quantizer, lats, b, 0.0, header.entropy) for b in (lo, hi)]
    err = [jointfit._mse(net, frames, segs, lats, b, 0.0, (header.width, header.height)) for b in (lo, hi)]
    want = 10 * np.log10(err[0] / err[1]) / np.log2(size[1] / size[0])
    assert s == pytest.approx(max(0.0, want))
    # the measurement at the stream's bits, when given, is taken instead of measured again
    assert jointfit._slope(net, frames, segs, lats, header, 0.0, (size[0], err[0])) == pytest.approx(s)
    assert jointfit._slope(net, frames, segs, lats, header, 0.0, (size[0], err[0] * 2)) != pytest.approx(s)


def test_joint_option_rules(model):
    with pytest.raises(InputError, match="joint passes"):
        EncodeOptions(joint=-1).checked(model)
    with pytest.raises(InputError, match="give one"):
        EncodeOptions(joint=2, adapt=3).checked(model)
    with pytest.raises(InputError, match="target rate"):
        EncodeOptions(joint=2, bpp=0.1).checked(model)
    vs = EncodeOptions.from_preset("veryslow")
    assert EncodeOptions.from_preset("veryslow", bpp=0.1).joint == 0
    assert EncodeOptions.from_preset("veryslow", adapt=7).joint == 0  # an explicit --adapt replaces it
    assert EncodeOptions.from_preset("veryslow", joint=7).adapt == 0
    assert vs.joint or vs.adapt


def test_frame_spool_reads_frames_back_in_any_order():
    rng = np.random.default_rng(0)
    fr = [(rng.random((6, 8, 3)) * 255).astype(np.uint8) for _ in range(5)]
    sp = FrameSpool(8, 6, 5)
    try:
        assert len(list(sp.wrap(iter(fr)))) == 5
        got = sp.read(3, 4)  # past the end: the frames there are
        assert len(got) == 2 and all((a == b).all() for a, b in zip(got, fr[3:]))
        assert (sp.read(0, 1)[0] == fr[0]).all() and sp.read(5, 2) == []
    finally:
        sp.close()


def test_cli_encode_joint(runner, tmp_path, monkeypatch):
    """``mgv encode --joint N`` prints its decision per update; --joint with --adapt, or with a
    target rate, is one error line and no output; the veryslow preset fits jointly."""
    from neuralcodec import cli
    from test_cli import make_video, one_error_line
    src = make_video(tmp_path / "in.mkv")
    monkeypatch.setattr(jointfit, "_slope", lambda *a: 0.0)
    r = runner.invoke(cli.main, ["encode", str(src), "-o", str(tmp_path / "a.mgv"), "--joint", "2",
                                 "--refine", "1", "--segment-frames", "5", "-q"])
    assert r.exit_code == 0, r.output
    assert "adaptation of the full decoder: 2 passes" in r.stdout and "over the plain codes" in r.stdout
    for extra in (["--adapt", "3"], ["--bpp", "0.1"]):
        line = one_error_line(runner.invoke(cli.main, ["encode", str(src), "-o", str(tmp_path / "b.mgv"),
                                                       "--joint", "2", *extra]), 3)
        assert ("give one" in line or "target rate" in line) and not (tmp_path / "b.mgv").exists()
    calls = []
    monkeypatch.setattr(jointfit, "fit_group", lambda *a, **k: calls.append(a[6]) or (None, list(a[3]), {
        "passes": a[6], "steps": 0, "decoder": "full", "segments": [a[5], len(a[2])], "kept": False,
        "why": "no change"}))
    r = runner.invoke(cli.main, ["encode", str(src), "-o", str(tmp_path / "v.mgv"), "--preset",
                                 "veryslow", "--segment-frames", "5", "-q"])
    assert r.exit_code == 0, r.output
    from neuralcodec.configs import PRESETS
    assert calls and set(calls) == {PRESETS["veryslow"]["joint"]}
