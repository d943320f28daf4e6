"""Content probes: does a changed file still look like what its name promises?

Contract: ``probe_file(path)`` reads at most three ``BLOCK_BYTES`` blocks (head,
middle, tail; so at most ``MAX_BYTES_PER_FILE`` bytes) and returns a
``ProbeResult``, or ``None`` when the file is unreadable, vanished, empty or
not a regular file (never raises for those). Only regular files are opened,
with ``O_NOFOLLOW|O_NONBLOCK|O_NOCTTY`` (``OPEN_FLAGS``): a FIFO, socket,
device node or symlink in the share never blocks or misleads the window
thread. ``ProbeSummary`` sums the results of one window (the window's budget
and order are ``WindowAccumulator.probe_more``'s).

A file whose extension promises a recognisable type (zip-based office, pdf,
jpeg, png, gzip, sqlite, plain text) and whose head no longer carries it is
"type destroyed": the key evidence, because compressed formats are
high-entropy too and must never be alarmed on by entropy alone.
"""

from __future__ import annotations

import base64
import binascii
import errno
import math
import os
import re
import stat
import zlib
from collections import Counter
from dataclasses import dataclass, field

BLOCK_BYTES = 4096
MAX_BYTES_PER_FILE = 64 * 1024
HIGH_ENTROPY_BITS = 7.5
INCOMPRESSIBLE_RATIO = 0.95

_ZIP = (b"PK\x03\x04",)
SIGNATURES: dict[str, tuple[bytes, ...]] = {
    **{ext: _ZIP for ext in ("docx", "xlsx", "pptx", "odt", "ods", "odp", "zip")},
    "pdf": (b"%PDF",),
    "jpg": (b"\xff\xd8\xff",),
    "jpeg": (b"\xff\xd8\xff",),
    "png": (b"\x89PNG",),
    "gz": (b"\x1f\x8b",),
    "tgz": (b"\x1f\x8b",),
    "sqlite": (b"SQLite format 3\x00",),
    "db": (b"SQLite format 3\x00",),
}
SIGNATURE_BYTES = max(len(sig) for sigs in SIGNATURES.values() for sig in sigs)
TEXT_EXTENSIONS = frozenset({"txt", "csv", "md", "log", "xml", "html", "json", "ini", "conf"})

_B64_RE = re.compile(rb"^[A-Za-z0-9+/=\r\n]+$")
_HEX_RE = re.compile(rb"^[0-9a-fA-F\r\n]+$")


def shannon_entropy(data: bytes) -> float:
    """Bits per byte of ``data`` (0.0 for empty input), in [0, 8]."""
    if not data:
        return 0.0
    n = len(data)
    return -sum(c / n * math.log2(c / n) for c in Counter(data).values())


def compress_ratio(data: bytes) -> float:
    """zlib-compressed size over raw size (1.0 for empty input)."""
    if not data:
        return 1.0
    return len(zlib.compress(data, 6)) / len(data)


def _looks_text(data: bytes) -> bool:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        # Cut multi-byte sequence at a block edge, or latin-1 text.
        text = data.decode("latin-1")
    printable = sum(1 for ch in text if ch.isprintable() or ch in "\r\n\t")
    return printable >= 0.95 * max(len(text), 1)


def _decoded_random(sample: bytes) -> bool:
    """True when ``sample`` is base64 or hex text whose decoded bytes look random."""
    stripped = sample.strip()
    if len(stripped) < 256:
        return False
    body = stripped[: len(stripped) - len(stripped) % 4]
    decoded = b""
    if _HEX_RE.match(stripped):
        try:
            decoded = binascii.unhexlify(re.sub(rb"\s", b"", stripped)[: len(stripped) // 2 * 2])
        except (binascii.Error, ValueError):
            decoded = b""
    elif _B64_RE.match(body):
        try:
            decoded = base64.b64decode(re.sub(rb"\s", b"", body)[: len(body) // 4 * 4] or b"")
        except (binascii.Error, ValueError):
            decoded = b""
    # 3 KiB of decoded random bytes reach ~7.9 bits; text decoded stays far below.
    return len(decoded) >= 192 and shannon_entropy(decoded) > 7.0


@dataclass(frozen=True)
class ProbeResult:
    """What one file's sampled blocks say."""

    path: str
    bytes_probed: int
    entropy_bits: float
    compress_ratio: float
    expected_type: str  # the extension that promised a type, "" when none
    type_destroyed: bool
    encoded_random: bool
    head: bytes = b""  # the first SIGNATURE_BYTES bytes

    @property
    def high_entropy(self) -> bool:
        return self.entropy_bits > HIGH_ENTROPY_BITS

    @property
    def incompressible(self) -> bool:
        return self.compress_ratio > INCOMPRESSIBLE_RATIO

    @property
    def random(self) -> bool:
        """Ciphertext-like: random and incompressible bytes, or base64/hex of random bytes."""
        return (self.high_entropy and self.incompressible) or self.encoded_random

    def carries(self, ext: str) -> bool:
        """The head carries the signature of the type ``ext`` names (False if none known)."""
        return any(self.head.startswith(sig) for sig in SIGNATURES.get(ext, ()))


# Only regular files are read, never through a symlink (a link to /etc/shadow or
# /dev/zero planted in the share), never blocking (a FIFO renamed into place as
# budget.docx) and never becoming the controlling terminal (a tty device node).
OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def _read_blocks(path: str) -> tuple[bytes, bytes]:
    """(head block, head+middle+tail sample) of the regular file ``path``.

    Raises OSError for anything else: a FIFO, socket, device node or directory
    (checked before opening, so a device is never opened, and after, on the
    descriptor, so a swap in between is caught), a symlink (ELOOP), a vanished
    file. At most three ``BLOCK_BYTES`` positional reads, whatever the file does
    meanwhile (grows, shrinks): the size is the one seen at open.
    """
    if not stat.S_ISREG(os.lstat(path).st_mode):
        raise OSError(errno.EINVAL, "not a regular file", path)
    fd = os.open(path, OPEN_FLAGS)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        size = st.st_size
        head = os.pread(fd, BLOCK_BYTES, 0)
        sample = head
        if size > 3 * BLOCK_BYTES:
            sample += os.pread(fd, BLOCK_BYTES, size // 2 - BLOCK_BYTES // 2)
            sample += os.pread(fd, BLOCK_BYTES, size - BLOCK_BYTES)
        elif size > BLOCK_BYTES:
            sample += os.pread(fd, 2 * BLOCK_BYTES, BLOCK_BYTES)
    finally:
        os.close(fd)
    return head, sample[:MAX_BYTES_PER_FILE]


def expected_type(path: str) -> str:
    """The type a file's name promises: its last known extension, or ""."""
    name = os.path.basename(path).lower()
    ext = name.rsplit(".", 1)[-1] if "." in name else ""
    if ext in SIGNATURES or ext in TEXT_EXTENSIONS:
        return ext
    return ""


def probe_file(path: str) -> ProbeResult | None:
    """Probe one file (see module contract); ``None`` when it cannot be read."""
    try:
        head, sample = _read_blocks(path)
    except (OSError, ValueError):  # ValueError: a NUL in the name
        return None
    if not sample:
        return None
    ext = expected_type(path)
    entropy = shannon_entropy(sample)
    destroyed = False
    if ext in SIGNATURES:
        destroyed = not any(head.startswith(sig) for sig in SIGNATURES[ext])
    elif ext in TEXT_EXTENSIONS:
        destroyed = not _looks_text(sample) or entropy > 6.5
    encoded = _decoded_random(head) if entropy < 6.5 else False
    if encoded and ext in TEXT_EXTENSIONS:
        destroyed = True
    return ProbeResult(
        path=path,
        bytes_probed=len(sample),
        entropy_bits=entropy,
        compress_ratio=compress_ratio(sample),
        expected_type=ext,
        type_destroyed=destroyed,
        encoded_random=encoded,
        head=head[:SIGNATURE_BYTES],
    )


@dataclass
class ProbeSummary:
    """Sums over the probed files of one window; ``destroyed_paths`` is bounded by the input."""

    files_probed: int = 0
    bytes_probed: int = 0
    files_high_entropy: int = 0
    files_type_destroyed: int = 0
    files_incompressible: int = 0
    files_encoded_random: int = 0
    files_skipped: int = 0
    files_unprobed: int = 0  # left over when the budget was spent
    entropy_sum: float = 0.0
    destroyed_paths: list[str] = field(default_factory=list)

    @property
    def mean_entropy(self) -> float:
        return self.entropy_sum / self.files_probed if self.files_probed else 0.0

    def add(self, r: ProbeResult) -> None:
        self.files_probed += 1
        self.bytes_probed += r.bytes_probed
        self.entropy_sum += r.entropy_bits
        self.files_high_entropy += r.high_entropy
        self.files_incompressible += r.incompressible
        self.files_encoded_random += r.encoded_random
        if r.type_destroyed:
            self.files_type_destroyed += 1
            self.destroyed_paths.append(r.path)
