"""A second, dependency-free implementation of the entropy mode 1 ("context") decoder,
written from ``bitstream_spec.md`` §7 alone, and of the ADAPT records of §8c (their checks and
coded integers) written from that section: plain Python integers, no numpy, no constriction,
nothing imported from ``neuralcodec``. The tests check that it agrees bit for bit with the
library path (``neuralcodec.entropy.decode_bits`` and ``neuralcodec.adapt``, which use
constriction) on every test stream, so the spec, not one library version, defines the format.

``decode(data, K, T, H, W)`` → nested lists ``B[k][t][y][x]`` of 0/1;
``decode_adapt_ints(data, [(count, vmax), …])`` → one list of integers per tensor;
``parse_adapt(payload, S, model_sha256)`` → an ADAPT record's fields and integers;
each raises :class:`RefError` (``.error``: the §9 class a reader reports) where the spec says
the data is invalid.
"""
from __future__ import annotations

M64 = (1 << 64) - 1
PREC = 24  # probability precision of the range coder
SENTINEL = 0xA5C3


class RefError(Exception):
    """Invalid data; ``error`` names the class of spec §9 a reader reports."""

    def __init__(self, msg: str, error: str = "PayloadError") -> None:
        super().__init__(msg)
        self.error = error


def cut(p16: int) -> int:
    """Width of symbol 0's interval (out of 2**24) for a probability of a 1 of p16 / 65536."""
    return (((65536 - p16) * ((1 << PREC) - 2)) >> 16) + 1


class RangeDecoder:
    """§7 "Coder": 32-bit words, 64-bit low/range/point, 24-bit probabilities."""

    def __init__(self, data: bytes) -> None:
        if len(data) == 0 or len(data) % 4:
            raise RefError("payload length is not a positive multiple of 4")
        self.words = [int.from_bytes(data[i:i + 4], "little") for i in range(0, len(data), 4)]
        self.pos = 0
        self.low = 0
        self.range = M64
        self.point = (self._next() << 32) | self._next()

    def _next(self) -> int:
        if self.pos < len(self.words):
            w = self.words[self.pos]
            self.pos += 1
            return w
        return 0

    def decode(self, p16: int) -> int:
        c = cut(p16)
        scale = self.range >> PREC
        q = ((self.point - self.low) & M64) // scale
        if q >= 1 << PREC:
            raise RefError("invalid data")
        if q < c:
            sym, self.range = 0, scale * c
        else:
            sym = 1
            self.low = (self.low + scale * c) & M64
            self.range = scale * ((1 << PREC) - c)
        if self.range < 1 << 32:
            self.low = (self.low << 32) & M64
            self.range <<= 32
            self.point = ((self.point << 32) & M64) | self._next()
        return sym


class RangeEncoder:
    """§7 "Encoder": the reference writer's exact output (carries propagate into the words
    already written)."""

    def __init__(self) -> None:
        self.low = 0
        self.range = M64
        self.out = []

    def _add(self, v: int) -> None:
        self.low += v
        if self.low > M64:  # carry into the words already written
            self.low &= M64
            i = len(self.out) - 1
            while True:
                self.out[i] = (self.out[i] + 1) & 0xFFFFFFFF
                if self.out[i]:
                    break
                i -= 1

    def encode(self, sym: int, p16: int) -> None:
        c = cut(p16)
        scale = self.range >> PREC
        if sym == 0:
            self.range = scale * c
        else:
            self._add(scale * c)
            self.range = scale * ((1 << PREC) - c)
        if self.range < 1 << 32:
            self.out.append(self.low >> 32)
            self.low = (self.low << 32) & M64
            self.range <<= 32

    def finish(self) -> bytes:
        if self.range != M64:
            end = (self.low + self.range) & M64
            low = self.low
            self._add((1 << 32) - 1)
            word = self.low >> 32
            self.out.append(word)
            if end >> 32 == word:
                self.out.append(0)
            self.low = low
        return b"".join(w.to_bytes(4, "little") for w in self.out)


class Counts:
    """One context set: counts (n0, n1) in half units, both starting at 1."""

    def __init__(self, size: int) -> None:
        self.n = [[1, 1] for _ in range(size)]

    def p16(self, c: int) -> int:
        n0, n1 = self.n[c]
        return min(65520, max(16, (n1 * 65536) // (n0 + n1)))


def encode_symbols(trace) -> bytes:
    """Range-code ``(symbol, p16)`` pairs with :class:`RangeEncoder` → payload bytes."""
    enc = RangeEncoder()
    for s, p in trace:
        enc.encode(s, p)
    return enc.finish()


def chunks(n: int, warmup: bool):
    if not warmup:
        if n:
            yield 0, n
        return
    lo = 0
    while lo < n:
        hi = min(n, 16) if lo == 0 else min(n, 2 * lo)
        yield lo, hi
        lo = hi


def _decoder(data: bytes, trace=None) -> "RangeDecoder":
    """A §7 decoder of ``data``; ``trace``: a list that receives every ``(symbol, p16)``."""
    rc = RangeDecoder(data)
    if trace is not None:
        inner = rc.decode

        def traced(p16):
            s = inner(p16)
            trace.append((s, p16))
            return s
        rc.decode = traced
    return rc


def decode(data: bytes, K: int, T: int, H: int, W: int, trace=None):
    """``trace``: a list that receives every ``(symbol, p16)`` in coding order."""
    rc = _decoder(data, trace)
    B = [[[[0] * W for _ in range(H)] for _ in range(T)] for _ in range(K)]
    sets = {"intra0": Counts(K), "intra1": Counts(9 * K), "flag0": Counts(20),
            "flag1": Counts(20), "inter0": Counts(40 * K), "inter1": Counts(30 * K)}
    phase = [[(y, x) for y in range(H) for x in range(W) if (y + x) % 2 == p] for p in (0, 1)]

    def nbrs(y, x):  # in-frame 4-neighbours
        return [(y2, x2) for y2, x2 in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1))
                if 0 <= y2 < H and 0 <= x2 < W]

    def edge_nbrs(y, x):  # edge-replicated 4-neighbours
        return [(max(0, y - 1), x), (min(H - 1, y + 1), x), (y, max(0, x - 1)), (y, min(W - 1, x + 1))]

    def step(name, tokens, ctx_of, warmup, store):
        """Decode the symbols of ``tokens`` (each token: a list of contexts, one per symbol)
        chunk by chunk; ``store(token, symbols)`` receives them."""
        cs = sets[name]
        for lo, hi in chunks(len(tokens), warmup):
            coded = []
            for tok in tokens[lo:hi]:
                ctxs = ctx_of(tok)
                syms = [rc.decode(cs.p16(c)) for c in ctxs]
                coded += zip(ctxs, syms)
                store(tok, syms)
            for c, s in coded:
                cs.n[c][s] += 2

    hist = [[0] * W for _ in range(H)]  # h of each token (bits changed from t-2 to t-1)
    for t in range(T):
        warm = t <= 1
        if t == 0:
            def put(tok, syms):
                y, x = tok
                for k in range(K):
                    B[k][0][y][x] = syms[k]
            step("intra0", phase[0], lambda tok: list(range(K)), warm, put)

            def ctx_intra1(tok):
                y, x = tok
                out = []
                for k in range(K):
                    ones = sum(B[k][0][a][b] for a, b in nbrs(y, x))
                    zeros = len(nbrs(y, x)) - ones
                    out.append(9 * k + (ones - zeros + 4))
                return out
            step("intra1", phase[1], ctx_intra1, warm, put)
            continue

        def hq(y, x):
            h = hist[y][x]
            return 0 if h == 0 else 1 if h == 1 else 2 if h <= 3 else 3

        F = [[0] * W for _ in range(H)]
        for ph in (0, 1):
            def ctx_flag(tok, ph=ph):
                y, x = tok
                if ph == 0:
                    n = sum(1 for a, b in nbrs(y, x) if hist[a][b] > 0)
                else:
                    n = sum(F[a][b] for a, b in nbrs(y, x))
                return [5 * hq(y, x) + n]

            def put_flag(tok, syms):
                y, x = tok
                F[y][x] = syms[0]
                if syms[0] == 0:
                    for k in range(K):
                        B[k][t][y][x] = B[k][t - 1][y][x]
            step("flag%d" % ph, phase[ph], ctx_flag, warm, put_flag)

            def ctx_bits(tok, ph=ph):
                y, x = tok
                out = []
                for k in range(K):
                    P = B[k][t - 1][y][x]
                    A = sum(1 for a, b in edge_nbrs(y, x) if B[k][t - 1][a][b] == P)
                    if ph == 0:
                        out.append(4 * (5 * (2 * k + P) + A) + hq(y, x))
                    else:
                        S = min(2, sum(1 for a, b in nbrs(y, x) if B[k][t][a][b] != B[k][t - 1][a][b]))
                        out.append(3 * (5 * (2 * k + P) + A) + S)
                return out

            def put_bits(tok, syms):
                y, x = tok
                for k in range(K):
                    B[k][t][y][x] = syms[k]
            changed = [tok for tok in phase[ph] if F[tok[0]][tok[1]]]
            step("inter%d" % ph, changed, ctx_bits, warm, put_bits)
        hist = [[sum(B[k][t][y][x] != B[k][t - 1][y][x] for k in range(K)) for x in range(W)]
                for y in range(H)]
    check = sum(rc.decode(32768) << i for i in range(16))
    if check != SENTINEL:
        raise RefError("end check failed")
    return B


# ---- §8c: ADAPT records ------------------------------------------------------------------------
ADAPT_HEAD = 28  # method, reserved, n, model_sha256, first_segment, segments
ADAPT_VARIANT_HEAD = 44  # method 2 (1.4): the same, then decoder_sha256 (16 bytes)
ADAPT_ENTRY = 8  # index u16, e i8, vmax u8, count u32
ADAPT_CONTEXTS = 16


def _adapt_tensor(count: int, vmax: int, code_pass, code_sign, values=None):
    """One tensor of §8c "Coded integers". ``code_pass(c, symbols or m)`` codes a pass in
    context c (chunks, counts) → its symbols; ``code_sign(symbol or None)`` one sign symbol at
    p16 32768. ``values`` given: encode them; None: decode → the integers."""
    if vmax == 0:
        return [0] * count
    enc = values is not None
    z = code_pass(0, [int(v != 0) for v in values] if enc else count)
    a = list(z)  # magnitudes known so far
    nz = [i for i in range(count) if a[i]]
    neg = [code_sign(int(values[i] < 0) if enc else None) for i in nz]
    L = nz  # the indices with |v_i| >= l, i.e. a_i = l
    for lv in range(1, vmax):
        if not L:
            break
        g = code_pass(min(lv, ADAPT_CONTEXTS - 1), [int(abs(values[i]) > lv) for i in L] if enc else len(L))
        for i, gi in zip(L, g):
            if gi:
                a[i] = lv + 1
        L = [i for i in L if a[i] == lv + 1]
    for i, s in zip(nz, neg):
        if s:
            a[i] = -a[i]
    return a


def _passes(code_one):
    """The pass coder of §8c over ``code_one(symbol or None, p16)`` with fresh counts per tensor."""
    def start():
        cs = Counts(ADAPT_CONTEXTS)

        def code_pass(c, syms):
            m = syms if isinstance(syms, int) else len(syms)
            out = []
            for lo, hi in chunks(m, True):
                p = cs.p16(c)
                chunk = [code_one(None if isinstance(syms, int) else syms[j], p) for j in range(lo, hi)]
                for s in chunk:
                    cs.n[c][s] += 2
                out += chunk
            return out
        return code_pass
    return start


def decode_adapt_ints(data: bytes, tensors, trace=None):
    """The coded integers of an ADAPT record for tensors ``[(count, vmax), …]`` → one list of
    integers per tensor → RefError (PayloadError) for invalid data or check bits. ``trace``: a
    list that receives every ``(symbol, p16)`` in coding order, check bits included."""
    if len(data) == 0 or len(data) % 4:
        raise RefError("ADAPT data is not a positive multiple of 4 bytes")
    rc = _decoder(data, trace)
    new_pass = _passes(lambda s, p16: rc.decode(p16))
    out = [_adapt_tensor(count, vmax, new_pass(), lambda s: rc.decode(32768)) for count, vmax in tensors]
    if sum(rc.decode(32768) << i for i in range(16)) != SENTINEL:
        raise RefError("ADAPT end check failed")
    return out


def encode_adapt_ints(tensors) -> bytes:
    """``[(values, vmax), …]`` → the coded integers (the reference writer's exact bytes)."""
    enc = RangeEncoder()

    def one(s, p16):
        enc.encode(s, p16)
        return s
    new_pass = _passes(one)
    for values, vmax in tensors:
        _adapt_tensor(len(values), vmax, new_pass(), lambda s: one(s, 32768), [int(v) for v in values])
    for i in range(16):
        enc.encode((SENTINEL >> i) & 1, 32768)
    return enc.finish()


def parse_adapt(payload: bytes, segment_count: int, model_sha256: bytes):
    """An ADAPT payload checked in the order of §8c (rules 1-12) → None for a method other than
    0 and 2 (skipped), else ``(first_segment, segments, [(index, e, vmax, integers), …])``."""
    def bad(msg):
        raise RefError(msg, "RecordError")

    def u(off, size):
        return int.from_bytes(payload[off:off + size], "little")
    if len(payload) == 0:
        bad("empty ADAPT payload")
    if payload[0] not in (0, 2):
        return None
    head = ADAPT_VARIANT_HEAD if payload[0] == 2 else ADAPT_HEAD
    if len(payload) < head:
        bad("ADAPT head cut short")
    if payload[1] != 0:
        bad("reserved byte")
    n = u(2, 2)
    if not 1 <= n <= 1024:
        bad("tensor count")
    if len(payload) < head + ADAPT_ENTRY * n:
        bad("ADAPT entries cut short")
    if bytes(payload[4:20]) != bytes(model_sha256):
        bad("model_sha256")
    first, segments = u(20, 4), u(24, 4)
    if first >= segment_count or not 1 <= segments <= segment_count - first:
        bad("segment range")
    entries = []
    for j in range(n):
        off = head + ADAPT_ENTRY * j
        index, e, vmax, count = u(off, 2), payload[off + 2], payload[off + 3], u(off + 4, 4)
        e = e - 256 if e >= 128 else e
        if entries and index <= entries[-1][0]:
            bad("tensor indices not strictly increasing")
        if not -64 <= e <= 0:
            bad("exponent")
        if count == 0:
            bad("count 0")
        entries.append((index, e, vmax, count))
    if sum(c for *_, c in entries) > 1 << 20:
        bad("numbers over the cap")
    if sum(c * (vm + 1) for _, _, vm, c in entries) > 1 << 23:
        bad("symbols over the cap")
    ints = decode_adapt_ints(payload[head + ADAPT_ENTRY * n:], [(c, vm) for _, _, vm, c in entries])
    return first, segments, [(i, e, vm, v) for (i, e, vm, _), v in zip(entries, ints)]


def read_adapt(payloads, segment_count: int, model_sha256: bytes):
    """The ADAPT payloads of a stream, in record order (rules 1-12 each, then 14: ranges) → the
    parsed records of methods 0 and 2."""
    out = []
    for p in payloads:
        r = parse_adapt(p, segment_count, model_sha256)
        if r is None:
            continue
        first, segments, _ = r
        if any(first < f + s and f < first + segments for f, s, _ in out):
            raise RefError("ADAPT ranges overlap", "RecordError")
        out.append(r)
    return out
