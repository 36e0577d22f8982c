"""The ``.mgv`` container: prelude, declarative header, typed CRC-checked records.

``bitstream_spec.md`` is normative; this module follows it. All integers are little-endian.

::

    prelude  magic(8) major(u16) minor(u16) header_len(u32)              16 bytes
    header   header_len bytes of fields (see FIELDS), then crc32(u32) over prelude + header
    records  sync "MGVR" type(u8) flags(u8) reserved(u16) length(u32) payload crc32(u32)
             SEGMENT* [INDEX] END

The reader is strict: every length is checked against a cap before it is used, payloads are
read in bounded chunks (a forged length cannot allocate more memory than the file holds), and
every failure raises one :class:`~neuralcodec.errors.StreamError` subclass. The reader works on
any binary file object; it only seeks for :meth:`Reader.index` / :meth:`Reader.segment_at`.
"""
from .audio_records import *  # noqa: F401,F403
from .header import *  # noqa: F401,F403
from .reader import *  # noqa: F401,F403
from .records import *  # noqa: F401,F403
