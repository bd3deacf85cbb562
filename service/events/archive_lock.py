"""One archive at a time: the database's history lock, then the target directory's lock.

The history lock (a session advisory lock, ``service.events.locks``) keeps two archives -
or an archive and a `fintegrate maintain` pass - off the same partitions, whatever their
directories; the directory lock keeps two runs off the same manifest, whatever their
databases. Either taken: ``ArchiveBusy``, one line naming the holder.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from service.config import DatabaseSettings
from service.events.archive_files import ArchiveBusy, DirectoryLock
from service.events.locks import HISTORY_WORK, SessionLock


@contextmanager
def history_lock(settings: DatabaseSettings, role: str) -> Iterator[SessionLock]:
    """The history lock for the block; ArchiveBusy when another run holds it."""
    lock = SessionLock(settings, HISTORY_WORK, role)
    holder = lock.acquire()
    if holder is not None:
        raise ArchiveBusy(
            f"another archive or maintenance pass is working on the event history: {holder}; "
            "wait for it to finish"
        )
    try:
        yield lock
    finally:
        lock.release()


@contextmanager
def archive_lock(settings: DatabaseSettings, directory: Path, role: str) -> Iterator[None]:
    """The history lock and ``directory``'s lock for the block (see module doc)."""
    with history_lock(settings, role) as held:
        directory_lock = DirectoryLock(directory, held.label)
        directory_lock.acquire()
        try:
            yield
        finally:
            directory_lock.release()
