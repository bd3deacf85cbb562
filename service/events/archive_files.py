"""The files of an event archive: ``<partition>.jsonl.gz`` and ``manifest.json``.

Every file is written under a temporary name of its own (``.<name>.<random>.part``, created
with ``O_EXCL | O_NOFOLLOW``: never someone else's file, never through a symlink), fsynced,
renamed into place and its directory fsynced, so a file with its final name is always
complete. One run at a time per directory: ``DirectoryLock`` (``fcntl.flock`` on
``.fintegrate-archive.lock``, released by the kernel when the process dies). The manifest
is read again, changed and written back under that lock, entry by entry.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import gzip
import hashlib
import json
import os
import secrets
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "fintegrate-events-archive/1"
SUFFIX = ".jsonl.gz"
PART_SUFFIX = ".part"
LOCK_NAME = ".fintegrate-archive.lock"
NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
FLUSH_BYTES = 1 << 20
# zlib level 1: much faster than the default 6 for slightly larger files (docs/capacity.md).
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
    try:
        probe, handle = open_new(directory, "fintegrate-write-probe")
        with handle:
            handle.write(b"probe")
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


def open_new(directory: Path, final_name: str) -> tuple[Path, BinaryIO]:
    """A fresh temporary file for ``final_name``: unique, ``O_EXCL | O_NOFOLLOW``, mode 600."""
    temp = directory / f".{final_name}.{secrets.token_hex(6)}{PART_SUFFIX}"
    descriptor = os.open(temp, NEW_FILE, 0o600)
    return temp, os.fdopen(descriptor, "wb")


def remove_stale_temp_files(directory: Path) -> list[str]:
    """Temporary files a killed run left behind (call only under the directory's lock)."""
    stale = [*directory.glob(f".*{PART_SUFFIX}"), *directory.glob(f"*{SUFFIX}{PART_SUFFIX}")]
    for path in stale:
        path.unlink(missing_ok=True)
    return [path.name for path in stale]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(FLUSH_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


class ArchiveBusy(ArchiveError):
    """Another archive run holds the directory or the database's history lock."""


class DirectoryLock:
    """One archive run per directory: ``flock`` on ``.fintegrate-archive.lock``."""

    def __init__(self, directory: Path, label: str) -> None:
        self.path = directory / LOCK_NAME
        self.label = label
        self.descriptor: int | None = None

    def acquire(self) -> None:
        """Take it or raise ArchiveBusy naming the holder (never waits)."""
        try:
            descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise ArchiveDirectoryError(describe_os_error(self.path.parent, exc)) from exc
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(descriptor, 200).decode(errors="replace").strip() or "another run"
            os.close(descriptor)
            raise ArchiveBusy(
                f"archive directory {self.path.parent} is in use by {holder}; wait for it to finish"
            ) from None
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, self.label.encode(), 0)
        self.descriptor = descriptor

    def release(self) -> None:
        if self.descriptor is not None:
            os.close(self.descriptor)  # closing releases the flock
            self.descriptor = None


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
        self.progress = progress
        self.lines = 0
        self.buffer = bytearray()
        try:
            self.temp_path, self.raw = open_new(directory, self.final_path.name)
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

    def _reread(self) -> None:
        """Entries as they are on disk now, ours over them (read-merge-write, under the lock)."""
        self.entries = {**Manifest.load(self.directory).entries, **self.entries}

    def record(self, entry: dict[str, Any]) -> None:
        """Add or replace a partition's entry (a rerun rewrites the same file)."""
        self._reread()
        self.entries[entry["partition"]] = entry
        self.save()

    def mark_dropped(self, partition: str) -> None:
        self._reread()
        self.entries[partition]["dropped_at"] = datetime.now().astimezone().isoformat()
        self.save()

    def reconcile(self, existing: set[str]) -> None:
        """Entries whose partition is gone were dropped (a kill after the drop's commit)."""
        self.entries = Manifest.load(self.directory).entries
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
        temp: Path | None = None
        try:
            temp, handle = open_new(self.directory, MANIFEST_NAME)
            with handle:
                handle.write(json.dumps(document, indent=2).encode())
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, path)
            fsync_directory(self.directory)
        except OSError as exc:
            if temp is not None:
                temp.unlink(missing_ok=True)
            raise ArchiveDirectoryError(describe_os_error(self.directory, exc)) from exc
