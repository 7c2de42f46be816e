"""The namespace route (Linux, glibc): the host's own libpython, once per link-map namespace.

``dlmopen(LM_ID_NEWLM, libpython)`` maps the same file again in a namespace of its own,
where it binds to itself and where every extension module and C-API helper library it
loads lands too, bound to it: no copies, no twins, and the file's text and read-only
pages are shared through the page cache (bench/README.md, "Memory per added worker").

What a namespace does not share is glibc: each gets its own libc, malloc, stdio,
atexit, locale and pthread-key table, all in one process with one thread descriptor per
thread. Two things follow, both handled here (loader-notes.md item 7):

- pthread keys. Every libc hands out keys from 0, but the values live in the thread
  descriptor that all of them share, so a namespace's first key is the host's first
  key's slot: CPython's GIL-state key of the namespace would read the host's (and
  ``PyGILState_Ensure`` hung). Before anything runs in it, a namespace burns keys in its
  own libc until its next key is the start of a range of its own (``key_range``).
  The descriptor holds keys 0-31 inline and each further 32 in a block that the first
  ``pthread_setspecific`` in it allocates, with the malloc of the libc that calls it;
  at thread exit the thread's creator's libc frees the blocks. A host thread whose block
  the namespace's malloc made would end in "double free or corruption" (seen), so each
  namespace gets a block of its own whose first key is the host's (the "anchor"): the
  host sets and clears it on every host thread before the thread enters the namespace,
  which makes the host's malloc allocate the block. The host keeps [0, 32) and burns
  keys up to the end of the last namespace block, so its later keys stay clear of them.
- ctype tables. A thread created by the host's libc never ran the namespace libc's
  per-thread set-up; the tokenizer's ``isalnum()`` read a NULL table and crashed. Every
  host thread calls the namespace's ``__ctype_init()`` once before it first enters
  (``NamespaceCApi.PyGILState_Ensure`` and ``NamespaceClone.open``). Threads that the
  namespace's own Python starts are created by its libc, which does that itself.

The namespace's libc also starts with the host's environment array, which the host's
next setenv may free: each namespace gets a copy of its own (``_own_environment``).

glibc has 16 namespaces, the base one included, and reserves static TLS for about 11
(the 12th fails: "cannot allocate memory in static TLS block");
``GLIBC_TUNABLES=glibc.rtld.nns=16`` set before the process starts gives all 15.
"""

import ctypes
import logging
import os
import sys
import threading
import time
from typing import Dict, Optional, Tuple

from gilclone.cloner import load, setfiles, store, trust
from gilclone.cloner.capi import CApi

from gilclone.errors import CloneLoadError, CloneSetCorruptError, NamespaceLimitError

log = logging.getLogger(__name__)

ROUTE = "namespaces"
LM_ID_NEWLM = -1
MAX_NAMESPACES = 15  # glibc's DL_NNS (16) less the base namespace
# pthread keys, in glibc's blocks of 32 (PTHREAD_KEY_2NDLEVEL_SIZE): the host keeps block 0
# (keys 0-31, inline in the descriptor); namespace n (0..14) has block n + 1, whose first
# key is the host's anchor and whose other 31 are the namespace's (CPython takes 2-3,
# numpy's OpenBLAS one or two). The host's own later keys come from 512 on, of 1024.
KEY_BLOCK = 32
HOST_KEYS_END = KEY_BLOCK * (MAX_NAMESPACES + 1)
LC_ALL = 6  # glibc
SOURCE_STAMP = ".namespace-source.json"  # in the set directory: the vouched-for libpython
_LIMIT_MESSAGES = ("static TLS", "no more namespaces")
_FIX = ("use fewer workers, route='copies', or start the process with "
        "GLIBC_TUNABLES=glibc.rtld.nns=16 (up to 15 namespaces)")


def unsupported_reason() -> Optional[str]:
    """None where this process can use the route, else why not (one sentence)."""
    if not sys.platform.startswith("linux"):
        return f"the namespace route needs Linux with glibc (dlmopen); this is {sys.platform}"
    try:
        libc = os.confstr("CS_GNU_LIBC_VERSION")
    except (ValueError, OSError):
        libc = None
    if not libc:
        return "the namespace route needs glibc (dlmopen namespaces); this Linux has another libc"
    return None


def key_range(slot: int) -> Tuple[int, int]:
    """[first, end) of the pthread keys of the namespace opened ``slot``-th in this process."""
    anchor = anchor_key(slot)
    return anchor + 1, anchor + KEY_BLOCK


def anchor_key(slot: int) -> int:
    """The host's key that opens the block of namespace ``slot`` (see the module's doc)."""
    return KEY_BLOCK * (slot + 1)


# -- the global-scope libc and the namespaces opened -------------------------------------

_libc = None
_opened = []  # handles of the namespaces gilclone opened, in order (slot = place)
_open_lock = threading.Lock()


def _host_libc():
    """The host's libc from the global scope (no find_library: that runs ldconfig)."""
    global _libc
    if _libc is None:
        libc = ctypes.CDLL(None)
        libc.dlmopen.restype = ctypes.c_void_p
        libc.dlmopen.argtypes = [ctypes.c_long, ctypes.c_char_p, ctypes.c_int]
        libc.dlerror.restype = ctypes.c_char_p
        libc.dlsym.restype = ctypes.c_void_p
        libc.dlsym.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        libc.setlocale.restype = ctypes.c_char_p
        libc.setlocale.argtypes = [ctypes.c_int, ctypes.c_char_p]
        _libc = libc
    return _libc


def _open_namespace(path: str) -> Tuple[int, int]:
    """(handle, slot) of ``path`` dlmopen'ed in a new namespace, its keys already moved."""
    with _open_lock:
        slot = len(_opened)
        if slot >= MAX_NAMESPACES:
            raise NamespaceLimitError(
                f"{path}: gilclone has opened {slot} link-map namespaces in this process, "
                f"glibc's most; {_FIX.split(', or')[0]}"
            )
        _reserve_host_keys()
        t0 = time.perf_counter()
        handle = _host_libc().dlmopen(LM_ID_NEWLM, os.fsencode(path), os.RTLD_NOW | os.RTLD_LOCAL)
        if not handle:
            raise _open_error(path, slot, (_host_libc().dlerror() or b"").decode("utf-8", "replace"))
        _move_keys(handle, key_range(slot)[0], path)
        _opened.append(handle)
        log.info("namespace %d: dlmopen %s in %.1f ms", slot, path, (time.perf_counter() - t0) * 1e3)
        return handle, slot


def _open_error(path: str, slot: int, why: str) -> CloneLoadError:
    if any(m in why for m in _LIMIT_MESSAGES):
        return NamespaceLimitError(
            f"{path}: cannot open link-map namespace {slot + 1} ({slot} opened by gilclone in "
            f"this process): {why}; {_FIX}"
        )
    return CloneLoadError(f"{path}: dlmopen failed: {why}")


def _symbol(handle: int, name: str) -> int:
    """Address of ``name`` as the namespace binds it: dlsym on the libpython handle also
    searches its dependencies, so libc's symbols are the namespace's own libc's."""
    address = _host_libc().dlsym(handle, name.encode())
    if not address:
        raise CloneLoadError(f"the namespace's libc has no {name}; this libc is not supported")
    return address


def _fn(handle: int, name: str, restype, *argtypes):
    return ctypes.CFUNCTYPE(restype, *argtypes)(_symbol(handle, name))


_environments = []  # arrays handed to namespaces' libcs, which may point into them for ever


def _own_environment(handle: int) -> None:
    """Give the namespace's libc an environment array of its own, a copy of the host's.

    dlmopen starts the new libc with ``__environ`` pointing at the host libc's array;
    the host's next setenv of a new name reallocates that array, and the namespace's
    pointer dangles (seen: a segfault in setenv when numpy set OPENBLAS_MAIN_FREE in a
    namespace after the host had). glibc's setenv never frees an array it did not make,
    so this one only has to stay alive."""
    env = ctypes.POINTER(ctypes.c_char_p).in_dll(_host_libc(), "environ")
    entries = []
    while env[len(entries)] is not None:
        entries.append(env[len(entries)])
    array = (ctypes.c_char_p * (len(entries) + 1))(*entries)  # the last stays NULL
    _environments.append(array)
    ctypes.c_void_p.from_address(_symbol(handle, "__environ")).value = ctypes.addressof(array)


_host_keys_reserved = False


def _reserve_host_keys() -> None:
    """Once: check the host's keys are all in block 0, then take every key up to
    HOST_KEYS_END in the host's libc (the anchors among them), so that its later keys
    never land in a namespace's block. Burnt keys have no destructor and hold no value."""
    global _host_keys_reserved
    if _host_keys_reserved:
        return
    libc, key = _host_libc(), ctypes.c_uint()
    libc.pthread_setspecific.argtypes = [ctypes.c_uint, ctypes.c_void_p]
    first = True
    while True:
        if libc.pthread_key_create(ctypes.byref(key), None) != 0:
            raise CloneLoadError("pthread_key_create failed in the host (no keys left)")
        if first and key.value >= KEY_BLOCK:
            libc.pthread_key_delete(key.value)
            raise CloneLoadError(
                f"this process already uses {key.value} pthread keys; the namespace route "
                f"needs the host's within the first {KEY_BLOCK}; use route='copies'"
            )
        first = False
        if key.value >= HOST_KEYS_END - 1:
            break
    _host_keys_reserved = True


def claim_block(slot: int) -> None:
    """Make the host's malloc allocate namespace ``slot``'s key block of this thread (set
    and clear the anchor), so that the host's libc frees what its own malloc made."""
    libc = _host_libc()
    anchor = anchor_key(slot)
    libc.pthread_setspecific(anchor, 1)
    libc.pthread_setspecific(anchor, None)


def _move_keys(handle: int, first: int, path: str) -> None:
    """Burn throw-away keys in the namespace's libc until the next one it hands out is
    ``first`` (glibc hands out the lowest free key; burnt ones are never freed)."""
    create = _fn(handle, "pthread_key_create", ctypes.c_int, ctypes.POINTER(ctypes.c_uint), ctypes.c_void_p)
    delete = _fn(handle, "pthread_key_delete", ctypes.c_int, ctypes.c_uint)
    key = ctypes.c_uint()
    while True:
        if create(ctypes.byref(key), None) != 0:
            raise CloneLoadError(f"{path}: the namespace's libc ran out of pthread keys")
        if key.value >= first:
            break
    delete(key.value)
    if key.value != first:
        raise CloneLoadError(f"{path}: the namespace's keys start at {key.value}, past {first}")


# -- the libpython file ---------------------------------------------------------------------

_vouched: Dict[tuple, str] = {}  # stat key -> sha256 hashed in this process


def check_source(root: str, path: str, sha256: Optional[str]) -> None:
    """Refuse a libpython whose bytes are not those the set ``root`` recorded.

    Hashing 20+ MB costs tens of ms, so as integrity.py does for clone files a stamp in
    the set directory vouches for a file whose inode, size, mtime and ctime are those
    seen when it was last hashed: writing or replacing the file renews its ctime, which
    no user can set back.
    """
    if not sha256:
        raise CloneSetCorruptError(
            f"{os.path.join(root, setfiles.SET_FILE)}: records no libpython hash; "
            f"run `gilclone prepare --dest {root}`"
        )
    st = os.stat(path)
    key = [path, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
    if _vouched.get(tuple(key)) == sha256 or (st.st_ino and _read_stamp(root) == {"file": key, "sha256": sha256}):
        _vouched[tuple(key)] = sha256
        return
    actual = setfiles.sha256_file(path)
    if actual != sha256:
        raise CloneSetCorruptError(
            f"{path}: its SHA-256 ({actual[:12]}) is not the one the clone set {root} recorded "
            f"({sha256[:12]}): the interpreter was rebuilt or altered; run `gilclone prepare` "
            "to make a set for it"
        )
    _vouched[tuple(key)] = sha256
    try:
        setfiles.write_json_atomic(os.path.join(root, SOURCE_STAMP), {"file": key, "sha256": sha256})
    except OSError:
        pass  # a read-only set: hashed once per process instead


def _read_stamp(root: str) -> Optional[dict]:
    path = os.path.join(root, SOURCE_STAMP)
    if trust.entry_problem(path):
        return None
    try:
        return setfiles.read_json(path)
    except (OSError, ValueError):
        return None


def source_of(cset: store.CloneSet) -> Tuple[str, Optional[str]]:
    """(libpython path, its recorded SHA-256) of the set."""
    from gilclone.cloner import integrity

    meta = integrity.read_set_file(cset.root)
    return meta.get("libpython") or cset.python["libpython"], meta.get("libpython_sha256")


# -- the clone ------------------------------------------------------------------------------


class NamespaceCApi(CApi):
    """The C API of a namespace; entering it from a thread prepares that thread first."""

    def __init__(self, lib: ctypes.CDLL, prepare_thread):
        super().__init__(lib)
        ensure = self.PyGILState_Ensure

        def PyGILState_Ensure() -> int:  # noqa: N802 - CPython's name
            prepare_thread()
            return ensure()

        self.PyGILState_Ensure = PyGILState_Ensure


class NamespaceClone(load.Clone):
    """A clone on the namespace route: the set's original libpython in a namespace of its own.

    Leased by set record like a copy (the record's index names it); its copy file is
    not used.
    """

    route = ROUTE

    def __init__(self, record: store.CloneRecord, python: dict, root: str, libpython: str,
                 sha256: Optional[str]):
        super().__init__(record, python)
        self.root, self.libpython, self.sha256 = root, libpython, sha256
        self.handlers = {}  # no twins and no library copies: the namespace loads the originals
        self.slot: Optional[int] = None
        self._threads = threading.local()
        self._ctype_init = None
        self._load_lock = threading.Lock()

    def load(self) -> CApi:
        with self._load_lock:  # a second namespace for one clone would never be closed
            if self.api is not None:
                return self.api
            reason = unsupported_reason()
            if reason:
                raise CloneLoadError(reason)
            check_source(self.root, self.libpython, self.sha256)
            handle, self.slot = _open_namespace(self.libpython)
            self._ctype_init = _fn(handle, "__ctype_init", None)
            _copy_locale(handle)
            _own_environment(handle)
            self.api = NamespaceCApi(ctypes.CDLL(self.libpython, handle=handle), self.prepare_thread)
            return self.api

    def prepare_thread(self) -> None:
        """Once per host thread, before it runs anything in the namespace."""
        if not getattr(self._threads, "ready", False):
            claim_block(self.slot)
            self._ctype_init()
            self._threads.ready = True

    def open(self, sys_path=None, argv=None, run_site: bool = True) -> None:
        self.load()
        self.prepare_thread()  # Py_Initialize runs on this thread
        super().open(sys_path, argv, run_site)

    def _bootstrap_config(self, sys_path, argv, run_site: bool) -> dict:
        config = super()._bootstrap_config(sys_path, argv, run_site)
        # Extensions and ctypes libraries loaded in the namespace bind to its libpython:
        # no twins and no ctypes hook; ctypes.pythonapi is this libpython, which a dlopen
        # from inside the namespace finds there.
        config.update(route=ROUTE, libpython=self.libpython, dlopen_flags=None)
        return config


def _copy_locale(handle: int) -> None:
    """The host set its locale at start-up (LC_CTYPE from the environment); the namespace's
    libc starts in "C", which would make open()'s default encoding ASCII there."""
    current = _host_libc().setlocale(LC_ALL, None)
    if current:
        _fn(handle, "setlocale", ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p)(LC_ALL, current)


_NAMESPACES: Dict[str, NamespaceClone] = {}
load._EXIT_REGISTRIES.append(_NAMESPACES)


def namespace_for(record: store.CloneRecord, cset: store.CloneSet) -> NamespaceClone:
    """The process-wide NamespaceClone for ``record`` (next to load.clone_for's copies)."""
    key = os.path.realpath(record.libpython)
    with load._REGISTRY_LOCK:
        clone = _NAMESPACES.get(key)
    if clone is not None:
        return clone
    libpython, sha256 = source_of(cset)
    with load._REGISTRY_LOCK:
        return _NAMESPACES.setdefault(key, NamespaceClone(record, cset.python, cset.root, libpython, sha256))
