"""Per-clone copies ("twins") of extension modules, made on first import.

CPython extension modules on Linux resolve ``Py*`` symbols from whatever is
first in the global scope, i.e. the host's libpython. A clone needs its own
copy of each extension, with a DT_NEEDED on the clone's libpython (so a
RTLD_DEEPBIND load finds the clone first) and its ``$ORIGIN`` run paths made
absolute (so bundled libraries such as numpy's OpenBLAS are still found from
the copy's new place).
"""

import hashlib
import logging
import os
import threading
import time
from typing import Dict

from gilclone.cloner import integrity, leftovers, store, trust
from gilclone.cloner.builders import builder_for
from gilclone.cloner.filelock import FileLock

from gilclone.errors import BinaryFormatError, CloneError

TWIN_FILE = "twin.json"

log = logging.getLogger(__name__)


class TwinFactory:
    """Makes and finds the extension twins of one clone. Thread-safe and process-safe."""

    def __init__(self, record: store.CloneRecord):
        self.record = record
        self._known: Dict[str, str] = {}
        self._lock = threading.Lock()

    def twin_for(self, origin: str) -> str:
        """Path of the twin of extension ``origin``, built if missing or stale."""
        with self._lock:
            known = self._known.get(origin)
            if known:
                return known
            twin = self._twin_for(os.path.realpath(origin))
            self._known[origin] = twin
            return twin

    def _twin_for(self, source: str) -> str:
        base = os.path.basename(source)
        key = f"{base}-{hashlib.sha1(source.encode()).hexdigest()[:10]}"
        twin = os.path.join(self.record.ext_dir, key, base)
        if _is_current(self.record, key, base, source):
            return twin
        trust.make_private_dirs(self.record.ext_dir)
        with FileLock(os.path.join(self.record.ext_dir, ".lock")):
            # Every twin is built under this lock: what lies here unfinished is dead.
            leftovers.remove_in(self.record.ext_dir, lock_held=True)
            if _is_current(self.record, key, base, source):
                return twin
            t0 = time.perf_counter()
            self._build(source, key, base)
        log.info("clone %d: built twin of %s in %.2f s", self.record.index, source, time.perf_counter() - t0)
        return twin

    def _build(self, source: str, key: str, base: str) -> None:
        builder = builder_for(self.record.binary_format)
        tmp = os.path.join(self.record.ext_dir, leftovers.temp_name())
        os.mkdir(tmp, trust.DIR_MODE)
        target = os.path.join(tmp, base)
        try:
            try:
                builder.build_twin(source, target, self.record.rename_map, self.record.soname)
            except BinaryFormatError as exc:
                raise CloneError(f"cannot copy extension module: {exc}") from None
            src_stat = os.stat(source)
            store.write_json_atomic(
                os.path.join(tmp, TWIN_FILE),
                {
                    "source": source,
                    "source_size": src_stat.st_size,
                    "source_mtime_ns": src_stat.st_mtime_ns,
                    "sha256": store.sha256_file(target),
                },
            )
            trust.seal(tmp)
            twin_dir = os.path.join(self.record.ext_dir, key)
            store.discard(twin_dir)
            os.rename(tmp, twin_dir)
            # The manifest lists every file of the clone: a twin not listed is refused.
            integrity.list_in_manifest(self.record.directory, f"ext/{key}/",
                                       [f"ext/{key}/{base}", f"ext/{key}/{TWIN_FILE}"])
        finally:
            if os.path.exists(tmp):
                store.discard(tmp)


def _is_current(record: store.CloneRecord, key: str, base: str, source: str) -> bool:
    """The twin exists, was made from the source as it is now, and is listed and unaltered.

    ``twin.json`` only says which source the twin was made from; the twin's path
    is ours (``ext/<key>/<base>``), never read from it.
    """
    try:
        meta = store.read_json(os.path.join(record.ext_dir, key, TWIN_FILE))
        src = os.stat(source)
    except (OSError, ValueError):
        return False
    if not isinstance(meta, dict) or meta.get("source") != source:
        return False
    if meta.get("source_size") != src.st_size or meta.get("source_mtime_ns") != src.st_mtime_ns:
        return False
    return integrity.listed_and_intact(record, [f"ext/{key}/{base}", f"ext/{key}/{TWIN_FILE}"])
