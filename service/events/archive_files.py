"""The files of an event archive: ``<partition>.jsonl.gz`` and ``manifest.json``.

Every file is written under a temporary name, fsynced, renamed into place and its directory
fsynced, so a file with its final name is always complete.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import json
import os
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "fintegrate-events-archive/1"
SUFFIX = ".jsonl.gz"
PART_SUFFIX = ".part"
FLUSH_BYTES = 1 << 20
# zlib level 1: about 4x faster than the default 6 for ~15% larger files (docs/capacity.md).
COMPRESS_LEVEL = 1


class ArchiveError(Exception):
    """The archive stopped; the message is one line saying what and what to do."""


class ArchiveDirectoryError(ArchiveError):
    """The target directory cannot take the archive; one line saying why."""


def check_directory(directory: Path) -> Path:
    """The directory, resolved, once it exists and takes a file; else ArchiveDirectoryError."""
    if not directory.exists():
        raise ArchiveDirectoryError(f"archive directory {directory} does not exist; create it")
    if not directory.is_dir():
        raise ArchiveDirectoryError(f"archive target {directory} is not a directory")
    probe = directory / f".fintegrate-write-probe-{os.getpid()}"
    try:
        probe.write_bytes(b"probe")
        probe.unlink()
    except OSError as exc:
        raise ArchiveDirectoryError(describe_os_error(directory, exc)) from exc
    return directory.resolve()


def describe_os_error(directory: Path, exc: OSError) -> str:
    """One line for a write failure in the archive directory."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return f"archive directory {directory} is full ({exc.strerror}); nothing was dropped"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"archive directory {directory} is not writable ({exc.strerror})"
    return f"cannot write to archive directory {directory}: {exc.strerror or exc}"


def fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class _HashingFile:
    """Passes compressed bytes to the file and to a sha256 (the manifest's checksum)."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self.raw.write(data)

    def flush(self) -> None:
        self.raw.flush()


class ArchiveFile:
    """One partition's ``.jsonl.gz``: a file-like sink for the rows, bounded buffer."""

    def __init__(
        self, directory: Path, partition: str, progress: Callable[[int], None] | None
    ) -> None:
        self.directory = directory
        self.final_path = directory / f"{partition}{SUFFIX}"
        self.temp_path = directory / f"{partition}{SUFFIX}{PART_SUFFIX}"
        self.progress = progress
        self.lines = 0
        self.buffer = bytearray()
        try:
            self.raw = open(self.temp_path, "wb")  # noqa: SIM115 - closed in finish/abandon
        except OSError as exc:
            raise ArchiveDirectoryError(describe_os_error(directory, exc)) from exc
        self.hashing = _HashingFile(self.raw)
        self.gzip = gzip.GzipFile(
            filename="", mode="wb", fileobj=self.hashing, compresslevel=COMPRESS_LEVEL, mtime=0
        )

    def write(self, data: bytes | str) -> int:
        """Rows (JSON lines) come in here; written through every ``FLUSH_BYTES``."""
        self.buffer += data.encode() if isinstance(data, str) else data
        if len(self.buffer) >= FLUSH_BYTES:
            self._flush()
        return len(data)

    def _flush(self) -> None:
        lines = self.buffer.count(b"\n")
        try:
            self.gzip.write(self.buffer)
        except OSError as exc:
            raise ArchiveDirectoryError(describe_os_error(self.directory, exc)) from exc
        self.buffer.clear()
        self.lines += lines
        if self.progress:
            self.progress(lines)

    def finish(self) -> tuple[str, int, int]:
        """Close, fsync and rename into place; (sha256, bytes, lines)."""
        try:
            self._flush()
            self.gzip.close()
            self.raw.flush()
            os.fsync(self.raw.fileno())
            self.raw.close()
            os.replace(self.temp_path, self.final_path)
            fsync_directory(self.directory)
        except OSError as exc:
            self.abandon()
            raise ArchiveDirectoryError(describe_os_error(self.directory, exc)) from exc
        except BaseException:
            self.abandon()
            raise
        return self.hashing.digest.hexdigest(), self.hashing.size, self.lines

    def abandon(self) -> None:
        """Remove the temporary file (a failed or interrupted write)."""
        with contextlib.suppress(OSError):
            self.raw.close()
        self.temp_path.unlink(missing_ok=True)


class Manifest:
    """``manifest.json``: one entry per archived partition, rewritten atomically."""

    def __init__(self, directory: Path, entries: dict[str, dict[str, Any]]) -> None:
        self.directory = directory
        self.entries = entries

    @classmethod
    def load(cls, directory: Path) -> Manifest:
        path = directory / MANIFEST_NAME
        if not path.exists():
            return cls(directory, {})
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
            entries = {entry["partition"]: entry for entry in document["files"]}
        except (ValueError, KeyError, TypeError) as exc:
            raise ArchiveDirectoryError(
                f"{path} is not a fintegrate archive manifest ({exc}); use another directory"
            ) from exc
        return cls(directory, entries)

    def record(self, entry: dict[str, Any]) -> None:
        """Add or replace a partition's entry (a rerun rewrites the same file)."""
        self.entries[entry["partition"]] = entry
        self.save()

    def mark_dropped(self, partition: str) -> None:
        self.entries[partition]["dropped_at"] = datetime.now().astimezone().isoformat()
        self.save()

    def reconcile(self, existing: set[str]) -> None:
        """Entries whose partition is gone were dropped (a kill after the drop's commit)."""
        stale = [
            name
            for name, entry in self.entries.items()
            if entry.get("dropped_at") is None and name not in existing
        ]
        for name in stale:
            self.entries[name]["dropped_at"] = datetime.now().astimezone().isoformat()
        if stale:
            self.save()

    def save(self) -> None:
        document = {
            "format": MANIFEST_FORMAT,
            "table": "customer_events",
            "files": sorted(self.entries.values(), key=lambda e: e["range_end"]),
        }
        path = self.directory / MANIFEST_NAME
        temp = self.directory / f"{MANIFEST_NAME}{PART_SUFFIX}"
        try:
            with open(temp, "w", encoding="utf-8") as handle:
                json.dump(document, handle, indent=2)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, path)
            fsync_directory(self.directory)
        except OSError as exc:
            temp.unlink(missing_ok=True)
            raise ArchiveDirectoryError(describe_os_error(self.directory, exc)) from exc
