"""Typed errors of the codec. Every failure a user can cause (bad input file, damaged or
hostile stream, unknown model) is an :class:`MGVError`; the CLI maps each class to a one-line
message and an exit code. Nothing else should escape the codec layer for bad input."""


class MGVError(Exception):
    """Base class of every error the codec reports to users."""

    exit_code = 1


class InputError(MGVError):
    """The input video cannot be read (not a video, no frames, unsupported format)."""

    exit_code = 3


class OutputError(MGVError):
    """The output cannot be written (exists without --force, disk full, bad extension)."""

    exit_code = 4


class ModelError(MGVError):
    """Unknown model name, missing weights or a weights hash mismatch."""

    exit_code = 5


class StreamError(MGVError):
    """Base class of everything wrong with a .mgv stream."""

    exit_code = 2


class BadMagic(StreamError):
    """The file does not start with the .mgv magic."""


class UnsupportedVersion(StreamError):
    """The stream's major version is newer than this reader understands."""


class Truncated(StreamError):
    """The stream ends before a structure it announces."""


class CRCMismatch(StreamError):
    """A record's CRC32 does not match its bytes."""


class HeaderError(StreamError):
    """A header field is out of range or inconsistent."""


class RecordError(StreamError):
    """A record is malformed (bad type, length over its cap, inconsistent contents)."""


class PayloadError(StreamError):
    """A segment payload does not decode (entropy-coded data corrupted or inconsistent)."""


class ResourceError(MGVError):
    """The work would need more memory than is available (a frame too large to decode or
    encode here, out of memory), or a damaged stream would need more concealment than the
    file can justify."""

    exit_code = 1
