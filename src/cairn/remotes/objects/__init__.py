"""A remote made of objects in storage the user owns: an S3 (or S3-compatible) bucket or a folder.
There is no server: every device reads and writes the objects directly (through ``obstore``,
which signs S3 requests and does put-if-absent natively). The layout, under the remote's prefix:

- ``cairn.json``: the format version (a newer one is refused, never misread);
- ``keyring/<version>``: one object per keyring version (the opaque blob, the revoked key ids
  and the proof, signed for that number); a new version is written only if absent and only over
  the latest, which makes the keyring's compare-and-swap. Anyone who may write to the storage
  can write one too: devices use only versions the workspace's keys authenticate, and push
  checks revoked key ids against the newest such version only (``set_keyring_check``);
- ``probes/<token>``: written twice and removed (``probe``) before the first write of a process,
  once a day after, and on every status: storage that lets the second put-if-absent through
  (ignoring ``If-None-Match``) is refused, since devices would overwrite each other's objects;
- ``log/<device>/<n>``: immutable batches, each written once, put-if-absent, by its own device
  (numbered 1, 2, 3 ... without gaps); an upload cut short leaves no object or a whole one;
- ``devices/<device>``: each device's record (its name, and how far it has read every log),
  written by that device only;
- ``snapshots/<n>`` and ``snapshots/<n>-<token>/<part>``: what ``compact`` wrote: every
  mutation of the logs up to a version vector (``covers``), in a few large parts, so a new
  device does not fetch the history batch by batch; the batches it covers that every device has
  read are then removed;
- ``compact.lock``: held while a compaction runs, taken over once stale.

A reader's cursor is a version vector: for each device, the batch and the position in it that it
has read up to, so a batch written later is never skipped. A reader that is behind a snapshot
reads that device's part of it from its position on. Batches, device records and snapshots are
framed: compressed, then sealed by the workspace's ``Frames`` (AES-256-GCM bound to the object's
name), so object names and sizes are all the bucket learns. An object that fails to open is
skipped and listed in ``status()["skipped_objects"]``, never applied; a batch that is missing
from the middle of a log (a synced folder that has not caught up) holds that log back until it
arrives, and is listed in ``status()["missing_objects"]``.

A bucket cannot hold a request open, so ``supports_long_poll`` is False: ``pull(wait=...)`` polls
every ``poll_every`` seconds, and a background worker pulls by interval instead.
"""

from cairn.remotes.objects.compaction import LOCK_TTL, STALE_AFTER
from cairn.remotes.objects.format import FORMAT, FRAME, MAX_INFLATED, MAX_NUMBER
from cairn.remotes.objects.repository import ObjectRemote
from cairn.remotes.objects.urls import open_url

__all__ = [
    "FORMAT",
    "FRAME",
    "LOCK_TTL",
    "MAX_INFLATED",
    "MAX_NUMBER",
    "STALE_AFTER",
    "ObjectRemote",
    "open_url",
]
