"""Decoder adaptation end to end (neuralcodec.finetune → ADAPT record → decoders): the encoder's
update is written, decoded and carried in tokens files; damaged, foreign or unknown records fall
back to the base decoder; an update that does not pay leaves the stream as it was."""
from __future__ import annotations

import io
import math
import json
import struct
import zlib

import numpy as np
import pytest
import torch

from neuralcodec import adapt, codec, finetune, sampling, streaminfo
from neuralcodec import container as ct
from neuralcodec import tokens as tk
from neuralcodec.configs import TINY
from neuralcodec.errors import CRCMismatch, InputError, RecordError
from neuralcodec.model import Tokenizer
from neuralcodec.options import EncodeOptions


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Tokenizer(TINY, name="tiny", sha256="00" * 32).eval()


@pytest.fixture(scope="module")
def video():
    rng = np.random.default_rng(0)
    x = (rng.random((20, 12, 16, 3)) * 255).astype(np.uint8)
    return np.repeat(np.repeat(x, 4, 1), 4, 2)


@pytest.fixture(scope="module")
def streams(model, video):
    """(plain stream, adapted stream, the encode's summary) — the update always kept."""
    plain = codec.compress(model, video, segment_frames=9)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(finetune.Fitting, "own_slope", lambda self, segs: float("-inf"))
        buf = io.BytesIO()
        res = codec.compress_to_file(model, video, buf, segment_frames=9, adapt=30)
    return plain, buf.getvalue(), res


def mse(a, b):
    return float(np.mean((a.astype(np.float64) - b) ** 2))


def records(data):
    return list(ct.Reader(io.BytesIO(data)).records())


def with_record(data: bytes, rec: ct.Record, payload: bytes, rtype: int = ct.REC_ADAPT) -> bytes:
    """``data`` with record ``rec`` replaced by one of ``rtype`` and ``payload`` of the same size
    (CRC recomputed)."""
    assert len(payload) == len(rec.payload)
    head = ct.RECORD_HEAD.pack(ct.RECORD_SYNC, rtype, 0, 0, len(payload))
    new = head + payload + struct.pack("<I", zlib.crc32(payload, zlib.crc32(head)))
    return data[:rec.offset] + new + data[rec.offset + rec.size:]


def test_update_is_written_first_and_decoded(model, video, streams):
    plain, data, res = streams
    assert res.adaptation["kept"] and res.bytes_written == len(data)
    assert struct.unpack_from("<HH", data, 8) == (1, ct.MINOR_ADAPT)
    recs = records(data)
    assert recs[0].type == ct.REC_ADAPT and recs[1].type == ct.REC_SEGMENT
    # the tokens are those of the plain encode: the segments are the same records
    assert [r.payload for r in recs if r.type == ct.REC_SEGMENT] == \
        [r.payload for r in records(plain) if r.type == ct.REC_SEGMENT]
    _, base = codec.decompress(plain, model=model)
    _, got = codec.decompress(data, model=model)
    assert mse(got, video) < mse(base, video)  # the fit helps on the video it was made for
    ad = adapt.Adaptation.parse(recs[0].payload, ct.Reader(io.BytesIO(data)).header)
    ref = adapt.adapted_model(model, ad)
    hdr = ct.Reader(io.BytesIO(plain)).header
    # decoding the plain stream's tokens with the adapted weights gives the same frames
    ref.name, ref.sha256 = model.name, model.sha256
    _, expect = codec.decompress(plain, model=ref)
    assert hdr.segment_count == ad.segments and np.array_equal(got, expect)
    _, part = codec.decompress(data, model=model, frames=(10, 20))  # through the index
    assert np.array_equal(part, got[10:20])


def test_adapted_weights_are_w_plus_v_times_step(model, streams):
    _, data, _ = streams
    rec = records(data)[0]
    ad = adapt.Adaptation.parse(rec.payload, ct.Reader(io.BytesIO(data)).header)
    out = adapt.adapted_model(model, ad)
    names, before, after = adapt.tensor_names(model), model.state_dict(), out.state_dict()
    changed = {names[t.index] for t in ad.tensors}
    for t in ad.tensors:
        n = names[t.index]
        want = before[n].float().reshape(-1) + torch.from_numpy(t.values.astype(np.float32)) * 2.0 ** t.exp
        assert torch.equal(after[n].reshape(-1), want)
    assert all(torch.equal(before[n], after[n]) for n in names if n not in changed)
    assert all(n.startswith("decoder.") for n in changed)


def test_update_that_does_not_pay_leaves_the_stream_unchanged(model, video, streams):
    plain = streams[0]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(finetune.Fitting, "own_slope", lambda self, segs: float("inf"))
        buf = io.BytesIO()
        res = codec.compress_to_file(model, video, buf, segment_frames=9, adapt=5)
    assert not res.adaptation["kept"] and buf.getvalue() == plain


def test_unknown_damaged_or_foreign_update_decodes_with_the_base(model, streams):
    plain, data, _ = streams
    _, base = codec.decompress(plain, model=model)
    rec = records(data)[0]
    # a reader that does not know type 4 skips it (here: the same record as unknown type 9)
    _, got = codec.decompress(with_record(data, rec, rec.payload, rtype=9), model=model)
    assert np.array_equal(got, base)
    # damaged: the strict reader refuses; a decode that reports damage uses the base decoder
    bad = bytearray(data)
    bad[rec.offset + 40] ^= 0xFF
    with pytest.raises(CRCMismatch):
        codec.decompress(bytes(bad), model=model)
    reports = []
    _, got = codec.decompress(bytes(bad), model=model, on_damage=reports.append)
    assert np.array_equal(got, base) and len(reports) == 1 and reports[0].frames == 0
    # another model's update: refused strictly, reported and ignored otherwise
    p = bytearray(rec.payload)
    p[4] ^= 1  # first byte of its model_sha256
    foreign = with_record(data, rec, bytes(p))
    with pytest.raises(RecordError, match="adapts model"):
        codec.decompress(foreign, model=model)
    reports = []
    _, got = codec.decompress(foreign, model=model, on_damage=reports.append)
    assert np.array_equal(got, base) and "ADAPT record not used" in reports[0].reason


def test_update_naming_an_encoder_tensor_is_refused(model, streams):
    _, data, _ = streams
    header = ct.Reader(io.BytesIO(data)).header
    names = adapt.tensor_names(model)
    enc = names.index(next(n for n in names if n.startswith("encoder.")))
    n = model.state_dict()[names[enc]].numel()
    ad = adapt.Adaptation(header.model_sha256, 0, 1, (adapt.TensorUpdate(enc, -4, 1, np.ones(n, np.int32)),))
    with pytest.raises(RecordError, match="not a decoder tensor"):
        adapt.adapted_model(model, adapt.Adaptation.parse(ad.to_payload(), header))


def test_tokens_file_carries_the_update(model, streams, tmp_path):
    _, data, _ = streams
    _, frames = codec.decompress(data, model=model)
    t = tk.tokens_from_stream(io.BytesIO(data))
    assert len(t.adapt) == 1
    t.save(tmp_path / "a.safetensors")
    assert np.array_equal(tk.detokenize(model, tk.Tokens.load(tmp_path / "a.safetensors")), frames)
    with open(tmp_path / "b.safetensors", "wb") as fo:
        tk.write_stream_tokens(io.BytesIO(data), fo)
    assert np.array_equal(tk.detokenize(model, tk.Tokens.load(tmp_path / "b.safetensors")), frames)


def test_tokens_file_with_a_bad_update_is_refused(model, streams, tmp_path):
    _, data, _ = streams
    t = tk.tokens_from_stream(io.BytesIO(data))
    p = bytearray(t.adapt[0])
    p[4] ^= 1
    bad = tk.Tokens(t.header, t.segments, t.bits, (bytes(p),))
    bad.save(tmp_path / "bad.safetensors")
    with pytest.raises(InputError, match="adapt"):
        tk.Tokens.load(tmp_path / "bad.safetensors")


def test_info_shows_the_update(streams):
    _, data, res = streams
    info = streaminfo.stream_info(io.BytesIO(data))
    d = json.loads(json.dumps(info.to_dict()))
    assert d["version"] == "1.3" and len(d["adapt"]) == 1
    a = d["adapt"][0]
    assert a["first_segment"] == 0 and a["segments"] == 3 and a["bytes"] == res.adaptation["update_bytes"]
    assert any("decoder adaptation: segments 0-2" in line for line in info.lines("x"))
    assert streaminfo.verify_stream(io.BytesIO(data)).adapt_sha256 is not None


def test_adapt_option_rules():
    with pytest.raises(InputError, match="adapt steps"):
        EncodeOptions(adapt=-1).checked(Tokenizer(TINY, name="t", sha256="00" * 32))
    with pytest.raises(InputError, match="target rate"):
        EncodeOptions(adapt=5, bpp=0.1).checked(Tokenizer(TINY, name="t", sha256="00" * 32))
    assert EncodeOptions.from_preset("slow").adapt > 0
    assert EncodeOptions.from_preset("slow", bpp=0.1).adapt == 0  # the preset's stands aside
    assert EncodeOptions.from_preset("fast").adapt == 0


def test_integer_code_round_trip_and_caps():
    rng = np.random.default_rng(1)
    ts = [(np.clip(np.round(rng.laplace(0, s, n)), -v, v).astype(np.int32), v)
          for n, s, v in ((1, 1, 3), (17, 0.3, 1), (3000, 4, 255), (10, 0, 0))]
    ts = [(a, int(np.abs(a).max())) for a, _ in ts]
    out = adapt.decode_ints(adapt.encode_ints(ts), [(a.size, v) for a, v in ts])
    assert all(np.array_equal(a, b) for (a, _), b in zip(ts, out))
    header = ct.Reader(io.BytesIO(codec.compress(Tokenizer(TINY, name="t", sha256="00" * 32),
                                                 np.zeros((1, 8, 8, 3), np.uint8)))).header
    big = adapt.Adaptation(header.model_sha256, 0, 1, (adapt.TensorUpdate(0, -3, 0, np.zeros(
        adapt.MAX_NUMBERS + 1, np.int32)),))
    with pytest.raises(RecordError, match="over the cap"):
        big.to_payload()


def test_cli_encode_adapt_info_decode(runner, tmp_path, monkeypatch):
    from neuralcodec import cli
    from test_cli import make_video, one_error_line
    src = make_video(tmp_path / "in.mkv")
    mgv = tmp_path / "a.mgv"
    monkeypatch.setattr(finetune.Fitting, "own_slope", lambda self, segs: float("-inf"))
    r = runner.invoke(cli.main, ["encode", str(src), "-o", str(mgv), "--adapt", "3",
                                 "--segment-frames", "5", "-q"])
    assert r.exit_code == 0, r.output
    # the tiny test model has no decoder variant: its own decoder is adapted (method 0, 1.3)
    assert "adaptation of the full decoder: 3 steps" in r.stdout and "sent" in r.stdout
    r = runner.invoke(cli.main, ["info", str(mgv)])
    assert r.exit_code == 0 and "version 1.3" in r.stdout and "decoder adaptation: segments 0-1" in r.stdout
    r = runner.invoke(cli.main, ["info", "--json", str(mgv)])
    assert json.loads(r.stdout)["adapt"][0]["decoder"] == "own"
    r = runner.invoke(cli.main, ["decode", str(mgv), "-o", str(tmp_path / "d.mkv"), "-q"])
    assert r.exit_code == 0, r.output
    line = one_error_line(runner.invoke(cli.main, ["encode", str(src), "-o", str(tmp_path / "b.mgv"),
                                                   "--adapt", "3", "--bpp", "0.1"]), 3)
    assert "target rate" in line and not (tmp_path / "b.mgv").exists()
    # a preset's adaptation stands aside for a target rate
    r = runner.invoke(cli.main, ["encode", str(src), "-o", str(tmp_path / "c.mgv"), "--preset",
                                 "veryslow", "--refine", "0", "--bpp", "0.5", "-q"])
    assert r.exit_code == 0 and "adaptation" not in r.stdout, r.output
    # an update that does not pay: the line says what it needed, at the video's slope
    monkeypatch.setattr(finetune.Fitting, "own_slope", lambda self, segs: 1e9)
    r = runner.invoke(cli.main, ["encode", str(src), "-o", str(tmp_path / "n.mgv"), "--adapt", "3",
                                 "--segment-frames", "5", "-q"])
    assert r.exit_code == 0, r.output
    assert "not sent (needed +" in r.stdout and "at this video's 1000000000.00 dB per doubling)" in r.stdout


def test_tokens_file_refuses_to_write_an_update_it_cannot_carry(streams, tmp_path):
    from neuralcodec.tokenfile import MAX_ADAPT_RECORDS
    _, data, _ = streams
    t = tk.tokens_from_stream(io.BytesIO(data))
    many = tk.Tokens(t.header, t.segments, t.bits, t.adapt * (MAX_ADAPT_RECORDS + 1))
    with pytest.raises(InputError, match="do not fit a tokens file"):
        many.save(tmp_path / "m.safetensors")


def test_sampler_keeps_windows_over_whole_segments():
    """Training windows tile every segment's latent frames (not only each segment's first
    frames), spread over the stream within the byte budget."""
    s = sampling.FrameSampler(seg_frames=45, frames=100, width=8, height=8, temporal_factor=4)
    frames = [np.full((8, 8, 3), k, np.uint8) for k in range(100)]
    assert list(s.wrap(iter(frames))) == frames
    got = {key: [int(f[0, 0, 0]) for f in fr] for key, fr in s.samples()}
    # segments of 45 frames (12 latents): windows at latents 0, 5, 10; the last segment 10 frames
    assert sorted(got) == [(0, 0), (0, 5), (0, 10), (1, 0), (1, 5), (1, 10), (2, 0)]
    assert got[(0, 0)] == list(range(17)) and got[(0, 5)] == list(range(17, 37))
    assert got[(1, 10)] == list(range(45 + 37, 90)) and got[(2, 0)] == list(range(90, 100))
    # a segment of 19 frames has 6 latent frames (the last one holds 2 frames): 2 windows
    s = sampling.FrameSampler(seg_frames=45, frames=19, width=8, height=8, temporal_factor=4)
    assert sorted(k for k, _ in s.kept.items()) == [(0, 0), (0, 5)]
    assert [len(f) for _, f in (list(s.wrap(iter(frames[:19]))), s.samples())[1]] == [17, 2]
    per = 4 * finetune.WINDOW_LATENTS * 8 * 8 * 3
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sampling, "SAMPLE_BYTES", 3 * per)
        s = sampling.FrameSampler(45, 100, 8, 8, 4)
    assert sorted(s.kept) == [(0, 0), (1, 0), (2, 0)]  # 3 of 7, first and last included


def test_window_inside_a_segment_decodes_as_the_stream(model, monkeypatch):
    """A window that starts inside a segment, given every latent frame before it as context,
    decodes exactly the stream's frames: the causal state carried, the first latent of the
    window not mistaken for a segment start."""
    rng = np.random.default_rng(3)
    x = (rng.random((41, 8, 12, 3)) * 255).astype(np.uint8)
    x = np.repeat(np.repeat(x, 4, 1), 4, 2)
    data = codec.compress(model, x, segment_frames=41)
    _, rec = codec.decompress(data, model=model)
    s = sampling.FrameSampler(41, 41, 48, 32, model.cfg.temporal_factor)
    list(s.wrap(iter(x)))
    monkeypatch.setattr(finetune, "CONTEXT_LATENTS", 100)
    monkeypatch.setattr(finetune, "STEP_PIXELS", 10 ** 9)  # whole frames
    monkeypatch.setattr(finetune, "decoder_step", lambda w, h, tf: 1)  # measured latent by latent
    fit = finetune.Fitting(model, data, s.samples(), decoder="full")
    for i, ((seg, j), fr) in enumerate(fit.data):
        codes, context, target = fit.window(i)
        assert context == j
        with torch.no_grad():
            dec = fit.fm.decoder
            with finetune.streaming(dec):
                dec(codes[:, :, :context]) if context else None
                out = dec(codes[:, :, context:])
        a, _ = sampling.window_frames(j, model.cfg.temporal_factor)
        got = ((out[0, :, :len(fr)].clamp(-1, 1) + 1) * 127.5).round().permute(1, 2, 3, 0).numpy()
        assert np.abs(got - rec[a:a + len(fr)].astype(np.float64)).max() <= 1, (seg, j)
        # the encoder's measurement: whole frames, in the decoder's chunks, as the stream decodes
        want = np.mean((rec[a:a + len(fr)] / 127.5 - np.stack(fr) / 127.5) ** 2)
        assert fit.measure(i) == pytest.approx(want, rel=1e-3), (seg, j)


def test_learning_rate_decays_over_the_total(model, streams, video):
    """With ``total`` the learning rate falls from its start (cosine) to LR_FLOOR of it and stays."""
    plain = streams[0]
    s = sampling.FrameSampler(9, len(video), video.shape[2], video.shape[1], model.cfg.temporal_factor)
    list(s.wrap(iter(video)))
    fit = finetune.Fitting(model, plain, s.samples(), decoder="full", total=4)
    lrs = []
    for _ in range(6):
        fit.train(1)
        lrs.append(fit.opt.param_groups[0]["lr"])
    assert lrs[0] == finetune.ADAPT_LR and all(a > b for a, b in zip(lrs[:4], lrs[1:4]))
    assert lrs[4] == lrs[5] == pytest.approx(finetune.LR_FLOOR * finetune.ADAPT_LR)
    const = finetune.Fitting(model, plain, s.samples(), decoder="full")
    const.train(3)
    assert const.opt.param_groups[0]["lr"] == finetune.ADAPT_LR and const.steps == 3


def test_windows_the_stream_does_not_hold_are_left_out(model, streams, video):
    """Samples keyed for longer segments than the stream's (a caller's mistake) are dropped, not
    decoded as empty windows."""
    s = sampling.FrameSampler(45, len(video), video.shape[2], video.shape[1], model.cfg.temporal_factor)
    list(s.wrap(iter(video)))
    assert any(j >= 5 for (_, j), _ in s.samples())
    fit = finetune.Fitting(model, streams[0], s.samples(), decoder="full")  # segments of 9 frames
    assert fit.data and all(j < 3 for (_, j), _ in fit.data)
    fit.train(1)


def test_short_last_window_is_cropped_and_drawn_as_its_frames_say(model, monkeypatch):
    """A segment's short last window (here 2 of 19 frames, after 2 latent frames of context) is
    cropped as a whole window is — a crop bounded by its own few frames would decode whole
    frames, many steps' time — and drawn in proportion to its frames, not as often as a whole
    window."""
    rng = np.random.default_rng(5)
    x = (rng.random((19, 8, 12, 3)) * 255).astype(np.uint8)
    x = np.repeat(np.repeat(x, 4, 1), 4, 2)
    data = codec.compress(model, x, segment_frames=45)
    s = sampling.FrameSampler(45, 19, 48, 32, model.cfg.temporal_factor)
    list(s.wrap(iter(x)))
    sf = model.cfg.spatial_factor
    monkeypatch.setattr(finetune, "STEP_PIXELS", 20 * (2 * sf) ** 2)  # whole windows: 2×2 tokens
    fit = finetune.Fitting(model, data, s.samples(), decoder="full")
    assert [(k, len(fr)) for k, fr in fit.data] == [((0, 0), 17), ((0, 5), 2)]
    for i in range(2):
        _, _, target = fit.window(i)
        assert target.shape[-2:] == (2 * sf, 2 * sf)
    picks = [fit.pick() for _ in range(3000)]
    assert 0.07 < picks.count(1) / len(picks) < 0.14  # 2 / 19 of the frames


def test_several_updates_each_decode_their_segments(model, video, streams):
    """insert_adaptation writes several ADAPT records (ranges not overlapping): each segment
    decodes with the update that covers it, the others with the base decoder."""
    import dataclasses
    plain, data, _ = streams
    ad = adapt.Adaptation.parse(records(data)[0].payload, ct.Reader(io.BytesIO(data)).header)
    first = dataclasses.replace(ad, first_segment=0, segments=1)
    last = dataclasses.replace(ad, first_segment=2, segments=1,
                               tensors=tuple(dataclasses.replace(t, values=-t.values) for t in ad.tensors))
    buf = io.BytesIO()
    size = codec.insert_adaptation(plain, [first.to_payload(), last.to_payload()], buf)
    both = buf.getvalue()
    assert size == len(both) and [r.type for r in records(both)][:3] == [ct.REC_ADAPT] * 2 + [ct.REC_SEGMENT]
    _, got = codec.decompress(both, model=model)
    _, base = codec.decompress(plain, model=model)
    frames = {}
    for a in (first, last):
        ref = adapt.adapted_model(model, a)
        ref.name, ref.sha256 = model.name, model.sha256
        frames[a.first_segment] = codec.decompress(plain, model=ref)[1]
    assert np.array_equal(got[:9], frames[0][:9]) and not np.array_equal(got[:9], base[:9])
    assert np.array_equal(got[9:18], base[9:18])
    assert np.array_equal(got[18:], frames[2][18:]) and not np.array_equal(got[18:], base[18:])
    out = io.BytesIO()
    with pytest.raises(RecordError, match="overlap"):
        codec.insert_adaptation(plain, [last.to_payload(), dataclasses.replace(first, segments=3).to_payload()],
                                out)
    assert out.getvalue() == b""  # refused before a byte is written


def test_refinement_after_adaptation_goes_through_the_adapted_decoder(model, video, monkeypatch):
    """--adapt with --refine: the update is fitted to the encoder's codes (a first pass), then the
    codes are refined through the adapted decoder (a second pass over the kept frames); a
    one-shot frame iterator codes as the array does."""
    from neuralcodec import refine
    from neuralcodec.video_io import VideoMeta
    monkeypatch.setattr(finetune.Fitting, "own_slope", lambda self, segs: float("-inf"))
    buf = io.BytesIO()
    res = codec.compress_to_file(model, video, buf, segment_frames=9, adapt=20, refine=2)
    data = buf.getvalue()
    assert res.adaptation["kept"] and res.bytes_written == len(data)
    recs = records(data)
    ad = adapt.Adaptation.parse(recs[0].payload, ct.Reader(io.BytesIO(data)).header)
    # the update is the one fitted to the encoder's own codes (the encode without --refine)
    assert recs[0].payload == records(codec.compress(model, video, segment_frames=9, adapt=20))[0].payload
    through = codec.compress(refine.refine_model(model, ad), video, segment_frames=9, refine=2)
    assert [r.payload for r in recs[1:] if r.type == ct.REC_SEGMENT] == \
        [r.payload for r in records(through) if r.type == ct.REC_SEGMENT]
    own = codec.compress(model, video, segment_frames=9, refine=2)  # through the base decoder
    assert [r.payload for r in records(own) if r.type == ct.REC_SEGMENT] != \
        [r.payload for r in recs if r.type == ct.REC_SEGMENT]
    meta = VideoMeta(video.shape[2], video.shape[1], 25, None, "rgb24")
    once = io.BytesIO()
    codec.compress_to_file(model, (meta, iter(list(video))), once, segment_frames=9, adapt=20, refine=2)
    assert once.getvalue() == data


def test_frame_spool_refuses_when_the_disk_cannot_hold_the_frames(monkeypatch):
    import collections
    import shutil

    from neuralcodec.errors import ResourceError
    from neuralcodec.video_io import FrameSpool
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 ** 6, 0, 10 ** 6))
    with pytest.raises(ResourceError, match="second pass"):
        FrameSpool(640, 360, 100)
    spool = FrameSpool(16, 8, 2)  # 768 bytes fit
    frames = [np.full((8, 16, 3), i, np.uint8) for i in range(2)]
    assert [f.tobytes() for f in spool.wrap(iter(frames))] == [f.tobytes() for f in frames]
    assert [f.tobytes() for f in spool.replay()] == [f.tobytes() for f in frames]
    spool.close()

    class Full:
        def write(self, data):
            raise OSError(28, "No space left on device")

    spool = FrameSpool(16, 8, None)
    spool.file = Full()
    with pytest.raises(ResourceError, match="No space left"):
        list(spool.wrap(iter(frames)))


def test_adaptation_trains_on_mse_plus_msssim(model, monkeypatch):
    """The encoder's fit minimises losses.distortion with ADAPT_MSSSIM (> 0) on crops large
    enough for the MS-SSIM term, and the term changes what it learns."""
    from neuralcodec.losses import msssim_window
    rng = np.random.default_rng(5)
    x = np.repeat(np.repeat((rng.random((9, 28, 32, 3)) * 255).astype(np.uint8), 4, 1), 4, 2)
    seen = []
    real = finetune.distortion
    monkeypatch.setattr(finetune, "distortion",
                        lambda r, t, w: seen.append((w, tuple(r.shape))) or real(r, t, w))
    codec.compress_to_file(model, x, io.BytesIO(), segment_frames=9, adapt=2)
    assert len(seen) == 2 and finetune.ADAPT_MSSSIM > 0
    assert all(w == finetune.ADAPT_MSSSIM and msssim_window(*s[3:]) for w, s in seen), seen
    plain = codec.compress(model, x, segment_frames=9)
    s = sampling.FrameSampler(9, len(x), x.shape[2], x.shape[1], model.cfg.temporal_factor)
    list(s.wrap(iter(x)))
    learned = []
    for w in (0.0, finetune.ADAPT_MSSSIM):
        fit = finetune.Fitting(model, plain, s.samples(), decoder="full", msssim=w)
        fit.train(2)
        learned.append(torch.cat([p.detach().flatten() for p in fit.train_params]))
    assert not torch.equal(*learned)


def test_one_update_per_group_of_segments(model, video, monkeypatch):
    """With groups of at most ADAPT_SEGMENTS segments the encoder fits one update per group
    (its own windows, weighed against its own segments' bytes; the steps asked for each), writes
    an ADAPT record for each, and refines each segment through the decoder its record adapts."""
    from neuralcodec import refine
    from neuralcodec.video_io import VideoMeta
    assert sampling.segment_groups(7, 4) == [(0, 4), (4, 3)]
    assert sampling.segment_groups(3, 4) == [(0, 3)] and sampling.segment_groups(9, 4) == [(0, 3), (3, 3), (6, 3)]
    from neuralcodec.tokenfile import MAX_ADAPT_RECORDS  # a long stream: larger groups, ≤ 16
    long = sampling.segment_groups(1000, 4)
    assert len(long) == MAX_ADAPT_RECORDS and sum(n for _, n in long) == 1000
    monkeypatch.setattr(finetune.Fitting, "own_slope", lambda self, segs: float("-inf"))
    monkeypatch.setattr(sampling, "ADAPT_SEGMENTS", 2)
    ticks = []
    buf = io.BytesIO()
    res = codec.compress_to_file(model, video, buf, segment_frames=9, adapt=12, refine=2,
                                 adapt_progress=ticks.append)
    data = buf.getvalue()
    meta = VideoMeta(video.shape[2], video.shape[1], 25, None, "rgb24")
    opts = EncodeOptions.of(None, segment_frames=9, adapt=12).checked(model)
    assert len(ticks) == 24 == codec.adapt_steps(model, meta, opts, len(video))
    assert codec.adapt_steps(model, meta, opts, None) is None
    groups = res.adaptation["groups"]
    assert [g["segments"] for g in groups] == [[0, 2], [2, 1]] and all(g["kept"] for g in groups)
    assert res.adaptation["update_bytes"] == sum(g["update_bytes"] for g in groups)
    recs = records(data)
    header = ct.Reader(io.BytesIO(data)).header
    ads = [adapt.Adaptation.parse(r.payload, header) for r in recs[:2]]
    assert [(a.first_segment, a.segments) for a in ads] == [(0, 2), (2, 1)]
    assert ads[0].tensors != ads[1].tensors
    segs = [r.payload for r in recs if r.type == ct.REC_SEGMENT]
    for a in ads:  # each segment refined through its own group's adapted decoder
        through = [r.payload for r in records(codec.compress(refine.refine_model(model, a), video,
                                                             segment_frames=9, refine=2))
                   if r.type == ct.REC_SEGMENT]
        for i in range(a.first_segment, a.first_segment + a.segments):
            assert segs[i] == through[i]
    # (each segment decodes with the record covering it: test_several_updates_each_decode_their_segments)


def test_a_group_without_kept_frames_gets_no_update(model, video, monkeypatch):
    """Large frames leave the sampler room for few windows: a group of segments none of whose
    frames were kept is left without an update (said so), the others are fitted as usual."""
    monkeypatch.setattr(finetune.Fitting, "own_slope", lambda self, segs: float("-inf"))
    monkeypatch.setattr(sampling, "ADAPT_SEGMENTS", 1)
    monkeypatch.setattr(sampling, "SAMPLE_WINDOWS", 1)  # one window: segment 0's first
    ticks = []
    buf = io.BytesIO()
    res = codec.compress_to_file(model, video, buf, segment_frames=9, adapt=5,
                                 adapt_progress=ticks.append)
    groups = res.adaptation["groups"]
    assert [g["kept"] for g in groups] == [True, False, False]
    assert all("no frames" in g["why"] for g in groups[1:]) and sum(ticks) == 15
    recs = records(buf.getvalue())
    header = ct.Reader(io.BytesIO(buf.getvalue())).header
    assert [r.type for r in recs[:2]] == [ct.REC_ADAPT, ct.REC_SEGMENT]
    ad = adapt.Adaptation.parse(recs[0].payload, header)
    assert (ad.first_segment, ad.segments) == (0, 1)


def test_the_update_is_weighed_against_the_videos_own_slope(model, video):
    """Fitting.own_slope: above the rate where more bits gain (each held-out window encoded
    alone at the stream's bits and one bit plane more), else below it — the held-out windows' PSNR
    and the segments' bytes with the last quarter of the bits dropped vs as stored, in dB per
    doubling — with plain quantization
    (RDO 0) exactly what a stream encoded with those fewer bits holds (the shipped model on a
    smooth clip at 18 bits, where more bits gain nothing here but fewer cost quality; where they
    do not — the random tiny model — DB_PER_DOUBLING); an update is kept when its gain beats that slope times the
    doublings of the bytes it adds."""
    from neuralcodec.weights import load_model
    from test_refine import moving_clip

    def seg_bytes(data):
        return sum(ct.RECORD_HEAD.size + len(sg.data) + ct.CRC.size
                   for sg in ct.Reader(io.BytesIO(data)).segments())

    def fittings(net, clip, seg, k):
        s = sampling.FrameSampler(seg, len(clip), clip.shape[2], clip.shape[1],
                                  net.cfg.temporal_factor)
        list(s.wrap(iter(clip)))
        streams = [codec.compress(net, clip, segment_frames=seg, rdo=0, bits=b)
                   for b in (k, k - max(1, k // 4))]
        return streams, [finetune.Fitting(net, d, s.samples(), decoder="full") for d in streams]

    (full, less), (fit, ref) = fittings(load_model(), moving_clip(t=34, h=64, w=64), 17, 18)
    assert ref.evals == fit.evals and seg_bytes(less) < seg_bytes(full)
    want = 10 * math.log10(ref.before / fit.before) / math.log2(seg_bytes(full) / seg_bytes(less))
    assert want > 0 and fit.slope == pytest.approx(want, rel=1e-6)
    # where the model has more bits and they gain: the slope above the rate, each held-out
    # window encoded alone at the stream's bits and a plane more (as mgv encode would)
    (full12, _), (f12, _) = fittings(load_model(), moving_clip(t=34, h=64, w=64), 17, 12)
    size, err = {12: 0, 18: 0}, {12: 0.0, 18: 0.0}
    for b in size:
        for i in f12.evals:
            fr = np.stack(f12.data[i][1])
            d = codec.compress(load_model(), fr, bits=b, segment_frames=len(fr))
            size[b] += sum(len(sg.data) for sg in ct.Reader(io.BytesIO(d)).segments())
            err[b] += mse(codec.decompress(d, decoder="full")[1], fr) / 127.5 ** 2
    want = 10 * math.log10(err[12] / err[18]) / math.log2(size[18] / size[12])
    assert want > 0 and f12.slope == pytest.approx(want, rel=0.02), (f12.slope, want)
    _, (tiny, tiny_less) = fittings(model, video, 9, model.cfg.bits)
    assert tiny_less.before <= tiny.before and tiny.slope == finetune.DB_PER_DOUBLING
    tiny.train(3)
    ad, row = tiny.decide()
    assert row["slope_db"] == tiny.slope
    assert row["needed_db"] == pytest.approx(tiny.slope * math.log2(1 + row["update_bytes"] / tiny.share))
    assert row["kept"] == (row["gain_db"] >= row["needed_db"]) == (ad is not None)


def test_the_slope_is_measured_with_the_streams_rdo(model, video, monkeypatch):
    """`mgv encode --rdo λ --adapt N`: the windows slope_above encodes afresh get their codes by
    the λ the stream was encoded with, not the default."""
    seen = []
    real = finetune.select_codes
    monkeypatch.setattr(finetune, "select_codes", lambda *a, **k: seen.append(a[3]) or real(*a, **k))
    calls = []
    real_fit = codec.fit_adaptations
    monkeypatch.setattr(codec, "fit_adaptations",
                        lambda *a, **k: calls.append(k.get("rdo")) or real_fit(*a, **k))
    codec.compress(model, video, bits=model.cfg.bits - 1, rdo=0.5, adapt=1,
                   segment_frames=9)
    assert calls == [0.5] and seen and set(seen) == {0.5}
