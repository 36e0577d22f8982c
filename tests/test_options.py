"""EncodeOptions: every encode option's rule in one place, checked once per model."""
import pytest

from neuralcodec import codec
from neuralcodec.errors import InputError
from neuralcodec.options import EncodeOptions

from test_codec import clip  # noqa: E402


@pytest.mark.parametrize("fields, word", [
    ({"bits": 0}, "bits"), ({"bits": 7}, "bits"), ({"bits": True}, "bits"),
    ({"entropy": "zip"}, "entropy"), ({"segment_frames": 4}, "segment frames"),
    ({"rdo": -1.0}, "rdo"), ({"rdo": float("nan")}, "rdo"), ({"refine": -1}, "refine"),
    ({"refine": 1.5}, "refine"), ({"bitrate": 0}, "bitrate"), ({"bpp": float("inf")}, "bpp"),
    ({"bitrate": 1e5, "bpp": 0.1}, "not both")])
def test_each_bad_option_is_one_input_error(tiny, fields, word):
    with pytest.raises(InputError, match=word):
        EncodeOptions(**fields).checked(tiny)


def test_checked_once_per_model(tiny, make_tiny):
    opts = EncodeOptions(bits=4).checked(tiny)
    assert opts.checked_for is not None and opts.checked(tiny) is opts
    other = make_tiny(0.05)
    other.name = "another"
    assert opts.checked(other) is not opts  # another model: checked again
    assert opts == EncodeOptions(bits=4)  # the mark is not part of the value
    assert EncodeOptions.of(opts, bits=5).checked_for is None  # a changed copy is unchecked
    with pytest.raises(InputError, match="unknown encode option"):
        EncodeOptions.of(None, bitz=4)


def test_api_takes_the_object_or_its_fields(make_tiny):
    model = make_tiny(0.05)
    v = clip(t=9)
    opts = EncodeOptions(bits=4, rdo=0.0)
    assert codec.compress(model, v, opts) == codec.compress(model, v, bits=4, rdo=0.0)
    assert codec.compress(model, v, opts, bits=5) == codec.compress(model, v, bits=5, rdo=0.0)
    assert EncodeOptions(bpp=0.5).target_bitrate(10, 10, 25.0) == pytest.approx(1250.0)
