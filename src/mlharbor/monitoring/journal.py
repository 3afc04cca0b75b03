"""The bounded on-disk buffer between serving and the prediction log: append-only, fsync'd.

Files ``journal-<seq>.log`` in one folder; the highest is *active* (appended to), the others are
*sealed* (waiting to become Parquet segments). Each append writes frames, then fsyncs. A frame
is::

    MAGIC "MLJ2" | payload length | records | CRC-32 of the previous 12 bytes | CRC-32 of the
    payload | payload                       (integers: 4 bytes, big-endian)

The payload is newline-separated JSON, one entry per record (format 2, ``"v": 2``; see
:func:`~.logrows.record_entry`), or a binary frame of records whose inputs are numbers
(:mod:`.logframes`); sealed (:class:`~.segments.Sealer`) when a key is configured.

Why a checksummed header with the record count: a frame can be *torn* (half-written: a crash,
a full disk, a dying device) anywhere in a file, not only at its end. The reader then skips
it, counts the records it held as lost, and finds the next frame by its magic and header
checksum, so the rest of the file and every later file are still compacted instead of one bad
frame stopping the log for good. An append that fails is cut off the file again (``ftruncate``)
so the next append never lands behind torn bytes. Journals older versions wrote (frames of
``length | payload`` with no header) are still read; there a damaged frame is skipped without
knowing how many records it held.

The journal is bounded by ``max_bytes``: past it, :meth:`append_frames` refuses (the caller
counts the records as dropped) rather than grow without limit or block.

Bytes are copied as little as possible, because at 64 rows a request the journal carries ~11 KB
per request and every copy of a flush's megabytes into a fresh buffer also pays for the fresh
pages: a payload may come in parts (a binary frame's header and its arrays), checksummed part by
part and written with one ``writev`` (never joined first), and files are read back through
``mmap`` (a binary frame's arrays then view the page cache, not a copy of the file).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import mmap
import os
import struct
import threading
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import orjson

from mlharbor.monitoring.logframes import decode, is_frame

if TYPE_CHECKING:
    from mlharbor.monitoring.segments import Sealer

log = logging.getLogger("mlharbor.monitoring.journal")

PREFIX = "journal-"
SUFFIX = ".log"
FRAME_MAGIC = b"MLJ2"
# magic, payload length, records, header CRC (of the 12 bytes before it), payload CRC
_HEAD = struct.Struct(">4sIIII")
HEADER_SIZE = _HEAD.size
# A payload: bytes, or its parts in order (bytes-like, contiguous), written without joining.
Payload = bytes | list[bytes | memoryview]
# One frame: (payload, how many records it holds).
Frame = tuple[Payload, int]
# One step of reading a file: ("payload", the frame's payload, (offset after it, records or
# None when unknown)), or ("torn_records" / "torn_frames", how many, (offset, None)).
_Step = tuple[str, Any, tuple[int, int | None]]
# Buffers per writev call (the kernel takes at most IOV_MAX, 1024 on Linux).
_IOV_BATCH = 512


@dataclasses.dataclass
class JournalContents:
    """What a journal file holds: its readable entries, and what could not be read.

    ``torn_records`` counts records of damaged frames (and JSON lines that do not parse);
    ``torn_frames`` counts damaged stretches whose record count is unknown (a torn header, or
    a damaged frame of an old-format journal).
    """

    rows: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    torn_records: int = 0
    torn_frames: int = 0


def frame_bytes(payload: Payload, records: int) -> bytes:
    """One frame (header and payload) as it is written to a journal file."""
    return b"".join(frame_parts(payload, records)[0])


def frame_parts(payload: Payload, records: int) -> tuple[list[bytes | memoryview], int]:
    """One frame as the buffers to write (its header, then the payload's parts) and its size;
    the payload's checksum is taken part by part, so the parts are never joined."""
    parts = [payload] if isinstance(payload, bytes) else payload
    crc = size = 0
    for part in parts:
        crc = zlib.crc32(part, crc)
        size += _nbytes(part)
    head = FRAME_MAGIC + size.to_bytes(4, "big") + records.to_bytes(4, "big")
    head += zlib.crc32(head).to_bytes(4, "big") + crc.to_bytes(4, "big")
    return [head, *parts], HEADER_SIZE + size


def payload_size(payload: Payload) -> int:
    """Bytes of a payload, whole or in parts."""
    return len(payload) if isinstance(payload, bytes) else sum(map(_nbytes, payload))


def joined(payload: Payload) -> bytes:
    """A payload as one bytes object (to seal it)."""
    return payload if isinstance(payload, bytes) else b"".join(payload)


def _nbytes(part: bytes | memoryview) -> int:
    return part.nbytes if type(part) is memoryview else len(part)


class Journal:
    def __init__(self, directory: Path, *, max_bytes: int, sealer: Sealer | None = None) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.sealer = sealer
        directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        existing = self._files()
        # Never append to a file left by an earlier process: its tail may be torn.
        self._seq = (self._seq_of(existing[-1]) + 1) if existing else 1
        self._fh: BinaryIO | None = None
        self._active_bytes = 0
        self._sealed_bytes = 0
        self.recount()

    @property
    def backlog_bytes(self) -> int:
        return self._sealed_bytes + self._active_bytes

    def append(self, rows: list[bytes]) -> bool:
        """Write one frame of JSON lines (one record each) durably; False (nothing written)
        when the journal is full."""
        if not rows:
            return True
        return self.append_frames([(b"\n".join(rows), len(rows))])

    def append_frames(self, frames: Sequence[Frame]) -> bool:
        """Write frames (JSON lines, or binary frames of :mod:`.logframes`, each with the
        number of records it holds) with one fsync; False (nothing written) when they do not
        fit in the journal. Raises when sealing or writing fails; then nothing stays written.
        """
        frames = [(p, n) for p, n in frames if payload_size(p)]
        if not frames:
            return True
        with self._lock:
            name = self._name(self._seq)
            if self.sealer is not None:
                frames = [(self.sealer.seal(joined(p), name), n) for p, n in frames]
            buffers: list[bytes | memoryview] = []
            size = 0
            for payload, records in frames:
                parts, length = frame_parts(payload, records)
                buffers += parts
                size += length
            if self.backlog_bytes + size > self.max_bytes:
                return False
            self._write(name, buffers, size)
            return True

    def _write(self, name: str, buffers: list[bytes | memoryview], size: int) -> None:
        if self._fh is None:
            # Unbuffered: a failed write leaves nothing behind in a buffer to flush later.
            self._fh = (self.directory / name).open("ab", buffering=0)
        fh, start = self._fh, self._active_bytes
        try:
            _write_all(fh.fileno(), buffers)
            os.fsync(fh.fileno())
        except BaseException:
            self._cut(fh, start)
            raise
        self._active_bytes += size

    def _cut(self, fh: BinaryIO, size: int) -> None:
        """Undo a failed append: the file back to ``size`` bytes; when even that fails, seal
        the file (the reader skips the torn frame at its end) so no append lands behind it."""
        try:
            os.ftruncate(fh.fileno(), size)
            return
        except OSError as exc:
            log.warning("cannot cut a failed journal write off %s (%s); sealing the file",
                        self._name(self._seq), exc)
        with contextlib.suppress(OSError):
            fh.close()
        self._fh = None
        try:
            self._sealed_bytes += (self.directory / self._name(self._seq)).stat().st_size
        except OSError:
            self._sealed_bytes += size
        self._active_bytes = 0
        self._seq += 1

    def rotate(self) -> None:
        """Seal the active file (if it holds anything); the next append starts a new one."""
        with self._lock:
            if self._fh is None:
                return
            self._fh.close()
            self._fh = None
            self._sealed_bytes += self._active_bytes
            self._active_bytes = 0
            self._seq += 1

    def sealed(self) -> list[Path]:
        with self._lock:
            active = self._name(self._seq)
            return [p for p in self._files() if p.name != active]

    @property
    def active_seq(self) -> int:
        """The sequence number of the file appends go to; every lower one is sealed."""
        return self._seq

    def sealed_before(self, seq: int) -> list[Path]:
        """Journal files numbered below ``seq`` (sealed by the process that wrote them): what
        a compactor in another process may turn into segments."""
        return [p for p in self._files() if self._seq_of(p) < seq]

    def bytes_on_disk(self) -> int:
        """Bytes of every journal file in the folder, the active one included, as found now
        (another process may be appending or compacting): what a compactor has to catch up
        with."""
        total = 0
        for path in self._files():
            with contextlib.suppress(FileNotFoundError):
                total += path.stat().st_size
        return total

    def recount(self) -> None:
        """Re-read the sealed files' sizes, after another process compacted some of them."""
        with self._lock:
            active = self._name(self._seq)
            total = 0
            for path in self._files():
                if path.name != active:
                    try:
                        total += path.stat().st_size
                    except FileNotFoundError:  # compacted meanwhile
                        continue
            self._sealed_bytes = total

    def read(self, path: Path) -> list[dict[str, Any]]:
        """The entries of a journal file; torn frames are skipped (see :meth:`contents`)."""
        return self.contents(path).rows

    def contents(self, path: Path) -> JournalContents:
        """The entries of a journal file, and a count of what was torn and skipped.

        Raises only when the file cannot be read, or a frame whose checksum is right does not
        open with the configured key (a wrong key is not damage: nothing is skipped for it).

        The file is mapped, not read: binary frames' arrays view the mapping (it is unmapped
        once the last of them is gone). Sealed journal files never change, so nothing
        truncates a mapped file under its reader.
        """
        out = JournalContents()
        for piece in self.pieces(path):
            out.rows += piece.rows
            out.torn_records += piece.torn_records
            out.torn_frames += piece.torn_frames
        return out

    def pieces(self, path: Path, max_bytes: int | None = None) -> Iterator[JournalContents]:
        """:meth:`contents` in pieces of whole frames, each holding at most ``max_bytes`` of
        payload (or one frame, when a frame alone is larger); all in one piece when None.

        What bounds a compactor's memory: a journal file holds seconds of traffic (tens of
        megabytes at full load), and its rows expanded at once cost several times that. Once
        the caller asks for the next piece, the pages of the mapping read so far are handed
        back (``MADV_DONTNEED``): read through a mapping, a file's pages count in the reader's
        resident memory until then, so without it reading a file in pieces would still map
        all of it in. Arrays still viewing those pages stay valid (the kernel reads them in
        again from the file)."""
        with path.open("rb") as fh:
            if os.fstat(fh.fileno()).st_size == 0:
                return
            data = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        steps = (self._checked(path, data) if data[:len(FRAME_MAGIC)] == FRAME_MAGIC
                 else self._legacy(path, data))
        piece, size, done = JournalContents(), 0, 0
        for kind, value, offset in steps:
            if kind == "torn_records":
                piece.torn_records += value
            elif kind == "torn_frames":
                piece.torn_frames += value
            else:
                self._payload(piece, path, value, offset[1])
                size += len(value)
            if max_bytes is not None and size >= max_bytes:
                yield piece
                piece, size = JournalContents(), 0
                done = _forget(data, done, offset[0])
        if piece.rows or piece.torn_records or piece.torn_frames:
            yield piece

    def _checked(self, path: Path, data: mmap.mmap) -> Iterator[_Step]:
        offset, end = 0, len(data)
        view = memoryview(data)  # payloads are read in place, not copied out of the file
        while offset < end:
            head = _header(data, offset)
            if head is None:  # a torn header: how many records it held is unknown
                yield "torn_frames", 1, (offset, None)
                found = _next_header(data, offset + 1)
            else:
                size, records, crc = head
                start = offset + HEADER_SIZE
                payload = view[start:start + size]
                if len(payload) == size and zlib.crc32(payload) == crc:
                    offset = start + size
                    yield "payload", payload, (offset, records)
                    continue
                # Torn: the next frame may begin inside the length this header claims.
                yield "torn_records", records, (offset, None)
                found = _next_header(data, start)
            if found is None:
                break
            offset = found

    def _legacy(self, path: Path, data: mmap.mmap) -> Iterator[_Step]:
        """A journal of ``length | payload`` frames (older versions): no record counts and no
        checksums, so a damaged frame is skipped as one frame and reading goes on after it."""
        offset = 0
        while offset + 4 <= len(data):
            size = int.from_bytes(data[offset:offset + 4], "big")
            payload = data[offset + 4:offset + 4 + size]
            if len(payload) < size:
                yield "torn_frames", 1, (offset, None)
                return
            offset += 4 + size
            yield "payload", payload, (offset, None)
        if 0 < len(data) - offset < 4:
            yield "torn_frames", 1, (offset, None)

    def _payload(self, out: JournalContents, path: Path, payload: bytes | memoryview,
                 records: int | None) -> None:
        """The entries of one whole frame into ``out``. A binary frame's arrays view
        ``payload`` (a slice of the file's bytes), so it is decoded without a copy."""
        if self.sealer is not None:
            # Errors propagate: a frame that is whole but does not open means a wrong key
            # (or KMS down), not damage, and skipping it would throw records away.
            payload = self.sealer.open(bytes(payload), path.name)
        if is_frame(payload):
            try:
                out.rows.extend(decode(payload))
            except (ValueError, KeyError, TypeError, IndexError):
                if records is None:
                    out.torn_frames += 1
                else:
                    out.torn_records += records
            return
        for line in bytes(payload).split(b"\n"):
            if line:
                try:
                    out.rows.append(orjson.loads(line))
                except orjson.JSONDecodeError:
                    out.torn_records += 1

    def remove(self, path: Path) -> None:
        with self._lock:
            try:
                size = path.stat().st_size
                path.unlink()
            except FileNotFoundError:  # removed by another compactor meanwhile
                return
            self._sealed_bytes = max(0, self._sealed_bytes - size)

    def close(self) -> None:
        self.rotate()

    def seq_of(self, path: Path) -> int:
        return self._seq_of(path)

    def _files(self) -> list[Path]:
        return sorted(self.directory.glob(f"{PREFIX}*{SUFFIX}"), key=self._seq_of)

    @staticmethod
    def _seq_of(path: Path) -> int:
        return int(path.name[len(PREFIX):-len(SUFFIX)])

    @staticmethod
    def _name(seq: int) -> str:
        return f"{PREFIX}{seq:010d}{SUFFIX}"


def _write_all(fd: int, buffers: list[bytes | memoryview]) -> None:
    """Write every buffer, in order, with as few ``writev`` calls as the kernel allows (a
    short write resumes where it stopped)."""
    at = 0
    while at < len(buffers):
        written = os.writev(fd, buffers[at:at + _IOV_BATCH])
        while written and at < len(buffers):
            size = _nbytes(buffers[at])
            if written < size:  # a short write: the rest of this buffer goes next
                buffers[at] = memoryview(buffers[at])[written:]
                break
            written -= size
            at += 1
        while at < len(buffers) and not _nbytes(buffers[at]):
            at += 1


def _forget(data: mmap.mmap, done: int, upto: int) -> int:
    """Hand back the mapped pages below ``upto`` (whole pages only); returns the new mark."""
    upto -= upto % mmap.PAGESIZE
    if upto > done and hasattr(mmap, "MADV_DONTNEED"):
        with contextlib.suppress(OSError, ValueError):
            data.madvise(mmap.MADV_DONTNEED, 0, upto)
        return upto
    return done


def _header(data: bytes | mmap.mmap, offset: int) -> tuple[int, int, int] | None:
    """(payload length, records, payload CRC) of the frame header at ``offset``; None when
    there is none there (torn, or not a header at all)."""
    if offset + HEADER_SIZE > len(data):
        return None
    magic, size, records, head_crc, crc = _HEAD.unpack_from(data, offset)
    if magic != FRAME_MAGIC or zlib.crc32(data[offset:offset + 12]) != head_crc:
        return None
    return size, records, crc


def _next_header(data: bytes | mmap.mmap, start: int) -> int | None:
    """The offset of the next intact frame header at or after ``start``."""
    at = data.find(FRAME_MAGIC, start)
    while at != -1:
        if _header(data, at) is not None:
            return at
        at = data.find(FRAME_MAGIC, at + 1)
    return None
