"""Reading a ``.mgv`` stream: the strict :class:`Reader` (sequential scan, random access
through the INDEX, and a damage-tolerant :meth:`Reader.scan` that resynchronizes on the record
sync word)."""
from __future__ import annotations

import zlib
from typing import BinaryIO, Iterator, List, Optional, Union

from ..errors import (BadMagic, CRCMismatch, HeaderError, RecordError, StreamError, Truncated,
                      UnsupportedVersion)
from .header import (CRC, END_RECORD_SIZE, FLAG_CRITICAL, MAGIC, MAJOR, MAX_HEADER_LEN,
                     MAX_RECORD_PAYLOAD, PRELUDE, READ_CHUNK, RECORD_HEAD, RECORD_NAMES,
                     RECORD_SYNC, REC_END, REC_INDEX, REC_SEGMENT, parse_fields)
from .records import Damage, IndexEntry, Record, RecordOrder, Segment, parse_end, parse_index

__all__ = ["Reader"]


def _crc_ok(data: bytes, crc: int) -> bool:
    return zlib.crc32(data) == crc


def _read_exact(fo: BinaryIO, n: int, what: str) -> bytes:
    """Read exactly ``n`` bytes in chunks of at most READ_CHUNK (so a forged length cannot
    allocate more than the file holds) → :class:`Truncated` on a short read."""
    if n <= READ_CHUNK:
        b = fo.read(n)
        if b is None or len(b) != n:
            raise Truncated(f"stream ends inside {what} ({0 if b is None else len(b)} of {n} bytes)")
        return b
    parts = []
    left = n
    while left:
        b = fo.read(min(left, READ_CHUNK))
        if not b:
            raise Truncated(f"stream ends inside {what} ({n - left} of {n} bytes)")
        parts.append(b)
        left -= len(b)
    return b"".join(parts)


class Reader:
    """Strict streaming reader of a ``.mgv`` file object.

    On construction the prelude and header are read and checked (:attr:`header`,
    :attr:`version`). :meth:`records` and :meth:`segments` scan forward from the first record
    and need no seeking; :meth:`index` and :meth:`segment_at` seek (seekable files only).
    """

    def __init__(self, fo: BinaryIO) -> None:
        self.fo = fo
        try:
            self.base = fo.tell() if fo.seekable() else 0
        except (OSError, ValueError):
            self.base = 0
        head = fo.read(PRELUDE.size) or b""
        if len(head) < len(MAGIC) or head[:len(MAGIC)] != MAGIC:
            if MAGIC.startswith(head) and len(head) < len(MAGIC):
                raise Truncated("stream ends inside the magic") if head else Truncated("empty stream")
            raise BadMagic("not an .mgv stream (bad magic)")
        if len(head) < PRELUDE.size:
            raise Truncated("stream ends inside the prelude")
        _, major, minor, hlen = PRELUDE.unpack(head)
        if major != MAJOR:
            raise UnsupportedVersion(f"stream version {major}.{minor}; this reader reads {MAJOR}.x")
        if hlen > MAX_HEADER_LEN:
            raise HeaderError(f"header length {hlen} exceeds the cap {MAX_HEADER_LEN}")
        body = _read_exact(fo, hlen, "the header")
        (crc,) = CRC.unpack(_read_exact(fo, CRC.size, "the header CRC"))
        if not _crc_ok(head + body, crc):
            raise CRCMismatch("header CRC mismatch")
        self.version = (major, minor)
        self.header = parse_fields(body, minor)
        self.records_offset = PRELUDE.size + hlen + CRC.size  # relative to self.base
        self._pos = self.records_offset

    # ---- sequential access ------------------------------------------------------------------
    def read_record(self) -> Record:
        """Read the record at the current position (offset bookkeeping for non-seekable files)."""
        offset = self._pos
        raw = self.fo.read(RECORD_HEAD.size) or b""
        if not raw:
            raise Truncated("stream ends before its END record")
        if len(raw) < RECORD_HEAD.size:
            raise Truncated("stream ends inside a record header")
        sync, rtype, flags, res, length = RECORD_HEAD.unpack(raw)
        if sync != RECORD_SYNC:
            raise RecordError(f"no record sync word at offset {offset}")
        if length > MAX_RECORD_PAYLOAD:
            raise RecordError(f"record length {length} at offset {offset} exceeds the cap")
        payload = _read_exact(self.fo, length, f"{RECORD_NAMES.get(rtype, 'a')} record")
        (crc,) = CRC.unpack(_read_exact(self.fo, CRC.size, "a record CRC"))
        if not _crc_ok(raw + payload, crc):
            raise CRCMismatch(f"CRC mismatch in {RECORD_NAMES.get(rtype, 'record')} at offset {offset}")
        if res != 0 or flags & ~FLAG_CRITICAL:
            raise RecordError(f"reserved record bits set at offset {offset}")
        self._pos = offset + RECORD_HEAD.size + length + CRC.size
        return Record(rtype, flags, offset, payload)

    def records(self) -> Iterator[Record]:
        """All records from the first one through END (END included). Unknown non-critical
        types are returned too (callers skip them); unknown critical types raise
        :class:`UnsupportedVersion`."""
        self._seek(self.records_offset)
        order = RecordOrder(self.header, self.records_offset)
        while True:
            rec = self.read_record()
            if rec.type not in RECORD_NAMES and rec.type != 0 and rec.flags & FLAG_CRITICAL:
                raise UnsupportedVersion(f"record type {rec.type} is required but unknown")
            order.check(rec)
            yield rec
            if rec.type == REC_END:
                self.check_nothing_after(rec)
                return

    def segments(self, start: int = 0) -> Iterator[Segment]:
        """Scan records and yield every SEGMENT with index >= ``start``, checked against the
        header, in order; raises :class:`Truncated` if segments are missing before END."""
        expected = 0
        for rec in self.records():
            if rec.type == REC_SEGMENT:
                seg = Segment.parse(rec.payload)
                seg.check(self.header, expected)
                expected += 1
                if seg.index >= start:
                    yield seg
            elif rec.type == REC_END:
                if expected != self.header.segment_count:
                    raise Truncated(f"stream has {expected} of {self.header.segment_count} segments")

    # ---- random access ----------------------------------------------------------------------
    def _seek(self, rel: int) -> None:
        if rel == self._pos:
            return
        try:
            self.fo.seek(self.base + rel)
        except (OSError, ValueError, AttributeError):
            raise RecordError("stream is not seekable") from None
        self._pos = rel

    def stream_size(self) -> Optional[int]:
        """Bytes of the stream (from its first byte to the end of the file), None when the
        file is not seekable."""
        if not self.seekable():
            return None
        try:
            size = self.fo.seek(0, 2) - self.base
        except (OSError, ValueError):
            return None
        self._pos = -1  # the next read seeks
        return size

    def seekable(self) -> bool:
        try:
            return bool(self.fo.seekable())
        except (OSError, ValueError, AttributeError):
            return False

    def index(self) -> Optional[List[IndexEntry]]:
        """Segment table from the INDEX record, found through the END record at the end of the
        file → None if the file is not seekable or has no index (scan instead). A present but
        inconsistent index raises."""
        if not self.seekable():
            return None
        end = self.fo.seek(0, 2) - self.base
        self._pos = -1
        if end - END_RECORD_SIZE < self.records_offset:
            return None
        self._seek(end - END_RECORD_SIZE)
        try:  # no readable END at the end (cut or damaged file): callers scan instead
            rec = self.read_record()
            if rec.type != REC_END:
                return None
            off = parse_end(rec)
        except StreamError:
            return None
        if off == 0:
            return None
        if not self.records_offset <= off <= end - END_RECORD_SIZE - RECORD_HEAD.size - CRC.size:
            raise RecordError(f"END points to offset {off} outside the records")
        self._seek(off)
        rec = self.read_record()
        if rec.type != REC_INDEX:
            raise RecordError(f"END points to a record of type {rec.type}, not INDEX")
        if rec.offset + rec.size != end - END_RECORD_SIZE:
            raise RecordError("INDEX is not followed by END")
        entries = parse_index(rec.payload, self.header, self.records_offset, rec.offset)
        starts = self._segment_starts(rec.offset)
        if starts != [e.offset for e in entries]:
            raise RecordError("INDEX offsets do not match the SEGMENT records of the file")
        return entries

    def records_before(self, stop: int) -> List[Record]:
        """The records from the first one up to offset ``stop`` (the first SEGMENT's, from the
        index), read and CRC checked (seekable files): what precedes the segments, ADAPT records
        included."""
        out: List[Record] = []
        self._seek(self.records_offset)
        while self._pos < stop:
            rec = self.read_record()
            if rec.type not in RECORD_NAMES and rec.type != 0 and rec.flags & FLAG_CRITICAL:
                raise UnsupportedVersion(f"record type {rec.type} is required but unknown")
            out.append(rec)
        return out

    def _segment_starts(self, stop: int) -> List[int]:
        """Offsets of the SEGMENT records among the records from the first one to ``stop``
        (the INDEX), walking the record heads only (payloads are skipped, not read): an
        INDEX entry must name a real record boundary, never bytes inside another record."""
        out: List[int] = []
        pos = self.records_offset
        while pos < stop:
            self._seek(pos)
            raw = self.fo.read(RECORD_HEAD.size) or b""
            self._pos = -1
            if len(raw) < RECORD_HEAD.size:
                raise RecordError("INDEX does not match the records of the file")
            sync, rtype, _, _, length = RECORD_HEAD.unpack(raw)
            if sync != RECORD_SYNC or length > MAX_RECORD_PAYLOAD:
                raise RecordError("INDEX does not match the records of the file")
            if rtype == REC_SEGMENT:
                out.append(pos)
            pos += RECORD_HEAD.size + length + CRC.size
            if len(out) > self.header.segment_count:
                break
        if pos != stop:
            raise RecordError("INDEX does not follow the last record before it")
        return out

    def check_nothing_after(self, end: Record) -> None:
        """Spec §4: nothing follows END → :class:`RecordError` for trailing bytes (a second
        END included)."""
        after = end.offset + end.size
        try:
            if self.seekable():
                size = self.fo.seek(0, 2) - self.base
                self._pos = -1
                extra = size - after
            else:
                self._pos = after
                extra = len(self.fo.read(1) or b"")
        except (OSError, ValueError):
            return
        if extra > 0:
            raise RecordError(f"{'bytes' if extra > 1 else 'data'} after the END record "
                              f"(offset {after})")

    def segment_at(self, offset: int, expected_index: Optional[int] = None) -> Segment:
        """Read and check the SEGMENT record at ``offset`` (relative to the stream start)."""
        self._seek(offset)
        rec = self.read_record()
        if rec.type != REC_SEGMENT:
            raise RecordError(f"record at offset {offset} is not a SEGMENT")
        seg = Segment.parse(rec.payload)
        seg.check(self.header, expected_index)
        return seg

    # ---- damage-tolerant scan ------------------------------------------------------------------
    def scan(self) -> Iterator[Union[Record, "Damage"]]:
        """Records from the first one through END, resynchronizing after damage.

        Yields every readable record (CRC checked) and, for each unreadable stretch, one
        :class:`Damage` (its first error and the byte range skipped). After a record that does
        not read (bad sync, CRC mismatch, length over the cap or past the end of the file) the
        scan looks for the next ``MGVR`` sync word after the damaged record's first byte, so a
        damaged length field costs only the records it covers. A file that ends before END
        yields a final :class:`Damage` with a :class:`Truncated` error. Non-seekable streams
        cannot resynchronize: the first damage ends the scan. An unknown CRITICAL record type
        with a valid CRC still raises :class:`UnsupportedVersion` (that is not damage).
        """
        can_seek = self.seekable()
        size = None
        if can_seek:
            size = self.fo.seek(0, 2) - self.base
            self._pos = -1
        pos = self.records_offset
        # bytes that failed candidates may read: bounded by a multiple of the file size, so a
        # file full of forged sync words costs linear, not quadratic, time
        budget = 4 * (size or 0) + (1 << 20)
        while True:
            self._seek(pos) if can_seek else None
            try:
                rec = self.read_record()
            except StreamError as e:
                if isinstance(e, Truncated) and size is not None and pos >= size:
                    yield Damage(pos, pos, e)  # clean cut between records
                    return
                if can_seek:
                    try:
                        budget -= max(0, self.fo.tell() - self.base - pos)
                    except (OSError, ValueError):
                        budget = -1
                    self._pos = -1
                nxt = self._find_sync(pos + 1, size) if can_seek and budget > 0 else None
                yield Damage(pos, size if nxt is None else nxt, e)
                if nxt is None:
                    if not isinstance(e, Truncated):
                        yield Damage(size or pos, size or pos, Truncated("stream ends before its END record"))
                    return
                pos = nxt
                continue
            if rec.type not in RECORD_NAMES and rec.type != 0 and rec.flags & FLAG_CRITICAL:
                raise UnsupportedVersion(f"record type {rec.type} is required but unknown")
            yield rec
            if rec.type == REC_END:
                return
            pos = rec.offset + rec.size

    def _find_sync(self, start: int, size: Optional[int]) -> Optional[int]:
        """Offset of the next ``MGVR`` at or after ``start`` (read in bounded chunks) or None."""
        pos = start
        while size is None or pos < size:
            self._seek(pos)
            block = self.fo.read(READ_CHUNK)
            self._pos = -1
            if not block:
                return None
            i = block.find(RECORD_SYNC)
            if i >= 0:
                return pos + i
            if len(block) < len(RECORD_SYNC):
                return None
            pos += len(block) - len(RECORD_SYNC) + 1
        return None
