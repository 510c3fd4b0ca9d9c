"""The embedded Celery broker: kombu's filesystem transport, made safe for several processes.

kombu's own `_put` writes a message straight under its final name, and `_get` claims a file by
moving it, possibly while it is still being written (the writer's lock is advisory and the
reader never takes it): a consumer then reads half a message and the worker dies with a
JSONDecodeError. Its claim also moves the file to the system temporary folder, which on another
filesystem is a copy then a delete: two consumers can both copy and both deliver.

Here a message is written under a name no consumer looks at and renamed into place when complete
(a rename within one folder is atomic), and a consumer claims a message by renaming it into
its own claim folder beside the queue (atomic too: one consumer wins, the others move on). A
file that still does not decode is set aside in `rejected/` with an error log, not fatal.

Used when CELERY_BROKER_URL is `filesystem://` (celeryconfig.py names it); Redis needs none.
"""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path
from queue import Empty
from time import monotonic
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.json import dumps, loads

logger = logging.getLogger(__name__)

# Names a consumer never matches: `_get` only takes `<time>_<uuid>.<queue>.msg`.
_PARTIAL_PREFIX = ".partial-"


def _message_name(queue: str) -> str:
    return f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"


class Channel(filesystem.Channel):
    """Atomic put (temporary name + rename), atomic claim (rename into a claim folder)."""

    # kombu's base and filesystem channels name the argument differently; ours follows the latter.
    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]
        folder = Path(self.data_folder_out)
        final = folder / _message_name(queue)
        partial = folder / f"{_PARTIAL_PREFIX}{final.name}"
        try:
            with partial.open("wb") as handle:
                handle.write(dumps(payload).encode())
            os.replace(partial, final)
        except OSError as exc:
            partial.unlink(missing_ok=True)
            raise ChannelError(f"cannot add a message to {folder}") from exc

    def _claim_folder(self) -> Path:
        folder = Path(self.data_folder_in) / "claimed"
        folder.mkdir(exist_ok=True)
        return folder

    def _get(self, queue: str, timeout: float | None = None) -> Any:
        inbox = Path(self.data_folder_in)
        suffix = f".{queue}.msg"
        claims = self._claim_folder()
        for name in sorted(n for n in os.listdir(inbox) if n.partition(".")[2] == suffix[1:]):
            claimed = claims / f"{uuid.uuid4().hex}-{name}"
            try:
                os.rename(inbox / name, claimed)  # atomic: exactly one consumer wins
            except FileNotFoundError:
                continue  # another consumer took it
            payload = claimed.read_bytes()
            try:
                message = loads(payload)
            except (ValueError, UnicodeDecodeError):
                self._reject(claimed, name)
                continue
            claimed.unlink()
            return message
        raise Empty()

    def _reject(self, claimed: Path, name: str) -> None:
        rejected = Path(self.data_folder_in) / "rejected"
        rejected.mkdir(exist_ok=True)
        os.replace(claimed, rejected / name)
        logger.error("broker: message %s does not decode; set aside in %s", name, rejected)

    def _size(self, queue: str) -> int:
        suffix = f"{queue}.msg"
        return sum(1 for n in os.listdir(self.data_folder_in) if n.partition(".")[2] == suffix)


class Transport(filesystem.Transport):
    Channel = Channel
