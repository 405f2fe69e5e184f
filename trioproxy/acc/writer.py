"""``JsonLinesWriter``: accounting records appended to a file, one JSON object a line, reopened on demand.

Rotation: logrotate renames the file, then signals the proxy (``postrotate``: ``kill -USR1 PID``; a SIGHUP,
which also reloads the script and certificates, works too); the writer then opens a new file under the
configured name. Each record is written with one ``write`` and flushed, so a reader never sees half a line
from a running proxy. A write error is logged and counted; it never stops the proxy.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import IO, Any

__all__ = ["JsonLinesWriter"]

log = logging.getLogger("trioproxy.acc")


class JsonLinesWriter:
    """Appends records to ``path`` (created with its directory when missing)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.written = 0
        self.errors = 0
        self._file: IO[str] | None = None

    def _open(self) -> IO[str] | None:
        if self._file is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = open(self.path, "a", encoding="utf-8")
            except OSError as exc:
                self.errors += 1
                log.error("accounting file %s: %s", self.path, exc)
        return self._file

    def write(self, record: dict[str, Any]) -> bool:
        """Append one record; False when it could not be written."""
        line = json.dumps(record, separators=(",", ":"), default=str) + "\n"
        f = self._open()
        if f is None:
            return False
        try:
            f.write(line)
            f.flush()
        except OSError as exc:
            self.errors += 1
            log.error("accounting file %s: %s", self.path, exc)
            self.close()
            return False
        self.written += 1
        return True

    def reopen(self) -> None:
        """Close the file; the next record opens ``path`` again (after a rotation: a new file)."""
        self.close()
        self._open()

    def close(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
            self._file = None
