"""Open a prepared clone in this process: load it bound to itself, initialise, finalise.

A clone's libpython is loaded once per process and initialised once; after
that any host thread may enter it (``with clone.entered():`` or the worker's
``attach``/``detach``). Clones live in a process-wide registry because a
libpython copy cannot be unloaded once its extension copies depend on it.
"""

import atexit
import contextlib
import ctypes
import logging
import os
import sys
import threading
import time
from typing import Callable, Dict, Optional, Tuple

from gilclone.cloner import pyconfig, store
from gilclone.cloner.capi import METH_O, CApi, PyMethodDef
from gilclone.cloner.extensions import TwinFactory, note_dll_directory

from gilclone.errors import CloneLoadError, CloneSetCorruptError

log = logging.getLogger(__name__)

_HOST_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)
_BOOTSTRAP_SOURCE: Optional[str] = None


def _bootstrap_source() -> str:
    global _BOOTSTRAP_SOURCE
    if _BOOTSTRAP_SOURCE is None:
        path = os.path.join(os.path.dirname(__file__), "inclone_bootstrap.py")
        with open(path, encoding="utf-8") as f:
            _BOOTSTRAP_SOURCE = f.read()
    return _BOOTSTRAP_SOURCE


def load_flags() -> int:
    """dlopen flags that make a copy bind its own symbols to itself."""
    if sys.platform.startswith("linux"):
        return os.RTLD_NOW | os.RTLD_LOCAL | os.RTLD_DEEPBIND
    if sys.platform == "darwin":
        return os.RTLD_NOW | os.RTLD_LOCAL
    return 0


class Clone:
    """One libpython copy loaded and initialised in this process."""

    route = "copies"  # how it is loaded (namespace.py: "namespaces")

    def __init__(self, record: store.CloneRecord, python: dict):
        self.record = record
        self.python = environment_of_this_process(python_for_host(python))
        self.twins = TwinFactory(record)
        self.api: Optional[CApi] = None
        self.handlers: Dict[str, Callable[[str], str]] = {
            "twin": self.twins.twin_for,
            "lib": self.twins.library_for,  # ctypes loads by path (inclone_bootstrap.py)
            "dlldir": note_dll_directory,  # Windows: os.add_dll_directory in a clone
        }
        self._lock = threading.Lock()
        self._callback = _HOST_CALLBACK(self._host_call)  # kept alive with the clone
        self._method = PyMethodDef(b"_gilclone_host", ctypes.cast(self._callback, ctypes.c_void_p), METH_O, None)
        self._program_name = None
        self.initialised = False

    @property
    def index(self) -> int:
        return self.record.index

    # -- life cycle -------------------------------------------------------------

    def load(self) -> CApi:
        """Check the clone's files against its manifest and map it (no initialisation)."""
        if self.api is not None:
            return self.api
        problem = store.check_clone(self.record)
        if problem:
            raise CloneSetCorruptError(
                f"clone {self.record.directory} is not intact: {problem}; run `gilclone prepare` "
                "to rebuild it"
            )
        if os.name == "nt":
            _add_dll_directories(self.python.get("extension_dirs", ()))
        t0 = time.perf_counter()
        try:
            lib = ctypes.CDLL(self.record.libpython, mode=load_flags())
        except OSError as exc:
            raise CloneLoadError(f"{self.record.libpython}: cannot be loaded: {exc}") from None
        log.info("clone %d: loaded %s (flags %#x) in %.1f ms", self.index, self.record.libpython,
                 load_flags(), (time.perf_counter() - t0) * 1e3)
        self.api = CApi(lib)
        return self.api

    def open(self, sys_path=None, argv=None, run_site: bool = True) -> None:
        """Load and initialise the clone on the calling thread (once per process)."""
        with self._lock:
            if self.initialised:
                return
            api = self.load()
            if api.Py_IsInitialized():
                raise CloneLoadError(
                    f"{self.record.libpython}: already initialised in this process by other code"
                )
            t0 = time.perf_counter()
            with _INIT_LOCK if os.name == "nt" else contextlib.nullcontext():
                self._initialise(sys_path, argv, run_site)
            self.initialised = True
            log.info("clone %d: initialised in %.1f ms", self.index, (time.perf_counter() - t0) * 1e3)
            _join_threads_at_exit()

    def _initialise(self, sys_path, argv, run_site: bool) -> None:
        api = self.api
        run_site = run_site and not sys.flags.no_site  # `python -S`: no site in clones either
        if os.name == "nt":
            self._initialise_legacy()
        else:
            executable = self.python.get("executable") or ""
            home = "" if executable and os.path.exists(executable) else self.python["base_prefix"]
            settings = pyconfig.host_settings(executable if not home else "", home)
            minor = int(self.python["version"].split(".")[1])
            pyconfig.initialize(api.lib, minor, settings)
        fn = api.PyCFunction_NewEx(ctypes.byref(self._method), None, None)
        api.PySys_SetObject(b"_gilclone_host", fn)
        api.Py_DecRef(fn)
        config = self._bootstrap_config(sys_path, argv, run_site)
        source = _bootstrap_source() + f"\n_gilclone_bootstrap({config!r})\n"
        api.PyRun_SimpleString(source.encode("utf-8"))
        error = self.sys_attr_text("_gilclone_error")
        if run_site and not error and os.name != "nt":
            pyconfig.mark_site_imported(api.lib)
        self._main_tstate = api.PyEval_SaveThread()  # release the clone's GIL
        if error:
            raise CloneLoadError(f"clone {self.record.index} failed to start:\n{error}")

    def _bootstrap_config(self, sys_path, argv, run_site: bool) -> dict:
        """What inclone_bootstrap.py is told (a literal dict)."""
        return {
            "index": self.record.index,
            "route": "copies",  # twins for extension modules, ctypes loads the clone's copies
            "libpython": self.record.libpython,  # ctypes.pythonapi in the clone (guards and ctypes hook)
            "dlopen_flags": load_flags() if sys.platform.startswith("linux") else None,
            "sys_path": list(sys_path if sys_path is not None else self.python["sys_path"]),
            "argv": list(argv if argv is not None else [""]),
            "site": run_site,
            "runtime": pyconfig.runtime_settings(),
            "guards": os.path.join(os.path.dirname(os.path.abspath(__file__)), "inclone_guards.py"),
        }

    def _initialise_legacy(self) -> None:
        """Windows: the pre-PyConfig start-up, which finds the clone's ._pth file."""
        api = self.api
        api.no_site_flag.value = 1  # site imports extensions; run it after the remapping
        executable = self.python.get("executable") or ""
        self._program_name = ctypes.create_unicode_buffer(executable)
        if os.path.isfile(self._pth_path()):
            # CPython finds <clone DLL name>._pth next to the DLL; Py_SetPythonHome
            # (or a path) would make it ignore that file.
            pass
        elif executable and os.path.exists(executable):
            api.Py_SetProgramName(self._program_name)
        else:
            self._program_name = ctypes.create_unicode_buffer(self.python["base_prefix"])
            api.Py_SetPythonHome(self._program_name)
        api.Py_InitializeEx(0)  # 0: leave signal handling to the host

    def _pth_path(self) -> str:
        return os.path.splitext(self.record.libpython)[0] + "._pth"

    def sys_attr_text(self, name: str) -> Optional[str]:
        api = self.api
        sys_mod = api.PyImport_AddModule(b"sys")
        value = api.PyObject_GetAttrString(sys_mod, name.encode())
        if not value:
            api.PyErr_Clear()
            return "bootstrap did not run"
        try:
            if value == _none_address(api):
                return None
            return api.str_of(value)
        finally:
            api.Py_DecRef(value)

    def finalize(self) -> int:
        """Finalise the clone's interpreter (once; the clone cannot be used afterwards)."""
        with self._lock:
            if not self.initialised:
                return 0
            self.api.PyGILState_Ensure()
            self.initialised = False
            log.debug("clone %d: finalising", self.index)
            return self.api.Py_FinalizeEx()

    # -- entering from a host thread ------------------------------------------

    @contextlib.contextmanager
    def entered(self):
        """Hold the clone's GIL on this thread (its own thread state) for the block."""
        state = self.api.PyGILState_Ensure()
        try:
            yield self.api
        finally:
            self.api.PyGILState_Release(state)

    def run_source(self, source: str, result: Optional[str] = None) -> Optional[str]:
        """Run ``source`` in the clone's ``__main__``; return ``str(__main__.<result>)``.

        For diagnostics and verification; the pool has a faster path.
        """
        with self.entered() as api:
            if api.PyRun_SimpleString(source.encode("utf-8")) != 0:
                raise CloneLoadError(f"clone {self.index}: code failed (traceback on stderr)")
            if result is None:
                return None
            main = api.PyImport_AddModule(b"__main__")
            value = api.PyObject_GetAttrString(main, result.encode())
            if not value:
                api.PyErr_Clear()
                raise CloneLoadError(f"clone {self.index}: no result {result!r}")
            try:
                return api.str_of(value)
            finally:
                api.Py_DecRef(value)

    # -- the clone calling the host --------------------------------------------

    def _host_call(self, _self, arg):
        """``sys._gilclone_host("op\\0payload")`` inside the clone lands here, in host Python."""
        api = self.api
        try:
            op, _, payload = api.str_of(arg).partition("\0")
            handler = self.handlers.get(op)
            if handler is None:
                raise KeyError(f"unknown host operation {op!r}")
            return api.new_str(handler(payload))
        except BaseException as exc:  # never let an exception unwind through C frames
            api.PyErr_SetString(api.PyExc_RuntimeError, str(exc).encode("utf-8", "replace"))
            return None


# Windows: two clones running Py_InitializeEx at once crashed now and then under Wine
# (access violations inside it, 3.13); clones start one at a time there.
_INIT_LOCK = threading.Lock()
_dll_directories: Dict[str, object] = {}


def _add_dll_directories(dirs) -> None:
    """Windows: extension twins live in the clone directory, so the DLLs their originals
    load from beside them (sqlite3.dll, libffi-8.dll, ...) must be found another way."""
    for d in dirs:
        if d not in _dll_directories and os.path.isdir(d):
            try:
                _dll_directories[d] = os.add_dll_directory(d)
            except OSError:
                pass


def host_path(path):
    """A set prepared on Linux for Windows names POSIX paths; under Wine, whose Z: drive is
    the Unix root, they are found there (elsewhere on Windows: on the current drive)."""
    if os.name != "nt" or not isinstance(path, str) or not path.startswith("/"):
        return path
    return (_wine_drive() + path).replace("/", "\\")


def _wine_drive() -> str:
    try:
        return "Z:" if hasattr(ctypes.WinDLL("ntdll"), "wine_get_version") else ""
    except (OSError, AttributeError):
        return ""


def python_for_host(python: dict) -> dict:
    """The set's facts about its Python with paths this process can open."""
    if os.name != "nt":
        return python
    out = dict(python)
    for key in ("executable", "libpython", "prefix", "base_prefix"):
        out[key] = host_path(out.get(key))
    for key in ("sys_path", "extension_dirs"):
        out[key] = [host_path(p) for p in out.get(key, ())]
    return out


def environment_of_this_process(python: dict) -> dict:
    """The set's facts with the environment (executable, prefix, sys.path) of the process
    that loads it, when that process runs the same base Python.

    A cached set is shared by every virtual environment of one base Python and records
    the one that prepared it; a clone started from that record would run the other
    environment's site-packages and .pth files (or fail once it moved). The clone's
    libpython is the base Python's either way, so the environment is taken from here.
    """
    if os.name == "nt" or not sys.executable or not os.path.exists(sys.executable):
        return python
    recorded = python.get("base_prefix")
    if not recorded or os.path.realpath(recorded) != os.path.realpath(sys.base_prefix):
        return python
    if "%d.%d" % sys.version_info[:2] != ".".join(str(python.get("version", "")).split(".")[:2]):
        return python
    out = dict(python)
    out.update(executable=sys.executable, prefix=sys.prefix, sys_path=list(sys.path))
    return out


def environment_check(python: dict) -> Tuple[bool, str]:
    """Whether clones of a set recorded as ``python`` would run this process's environment
    (for ``verify``): they do unless this process runs another base Python."""
    used = environment_of_this_process(python)
    here = os.path.realpath(sys.prefix)
    version = ".".join(str(python.get("version", "")).split(".")[:2])
    if version != "%d.%d" % sys.version_info[:2]:
        return True, (
            f"the set is of Python {version}, this process runs {sys.version_info[0]}."
            f"{sys.version_info[1]}: its clones run the environment it was prepared from "
            f"({python.get('prefix')}); a pool needs clones of its own version"
        )
    if os.name != "nt" and os.path.realpath(used.get("prefix") or "") != here:
        return False, (
            f"this process runs {sys.executable} (base {sys.base_prefix}), the set was prepared "
            f"from {python.get('executable')} (base {python.get('base_prefix')}); its clones "
            "would run that environment; prepare a set from this Python"
        )
    return True, (
        f"clones run this process's environment ({sys.prefix}); the set was prepared from "
        f"{python.get('executable')}"
    )


def _none_address(api: CApi) -> int:
    return ctypes.addressof(ctypes.c_byte.in_dll(api.lib, "_Py_NoneStruct"))


_JOIN_AT_EXIT: list = []


def _join_threads_at_exit() -> None:
    """Once per process: at exit, wait for the non-daemon threads that tasks started in
    clones, after the host's own (atexit runs once threading has joined those)."""
    with _REGISTRY_LOCK:
        if not _JOIN_AT_EXIT:
            _JOIN_AT_EXIT.append(True)
            atexit.register(join_clone_threads)


_JOIN_SOURCE = (
    b"import sys\n"
    b"if '_gilclone_guards' in sys.modules:\n"
    b"    sys.modules['_gilclone_guards'].join_threads()\n"
)
_GIL_WAIT_AT_EXIT = 10.0  # seconds; a free clone's GIL is had within a switch interval


def join_clone_threads() -> None:
    for registry in _EXIT_REGISTRIES:
        for clone in list(registry.values()):
            if clone.initialised:
                _join_threads_of(clone)


def _join_threads_of(clone: Clone) -> None:
    """Join in a helper thread: a clone whose GIL is never released (a thread stuck in C)
    must not hang the exit, so entering it has a time limit; the joining has none."""
    entered = threading.Event()

    def join() -> None:
        state = clone.api.PyGILState_Ensure()
        entered.set()
        try:
            clone.api.PyRun_SimpleString(_JOIN_SOURCE)
        finally:
            clone.api.PyGILState_Release(state)

    joiner = threading.Thread(target=join, name=f"gilclone-exit-join-{clone.index}", daemon=True)
    joiner.start()
    if entered.wait(_GIL_WAIT_AT_EXIT):
        joiner.join()
    else:
        print(f"gilclone: clone {clone.index} is busy at exit; its threads are not waited for",
              file=sys.stderr)


_REGISTRY: Dict[str, Clone] = {}
_REGISTRY_LOCK = threading.Lock()
# Registries whose clones' threads are joined at exit (namespace.py adds its own).
_EXIT_REGISTRIES: list = [_REGISTRY]


def clone_for(record: store.CloneRecord, python: dict) -> Clone:
    """The process-wide Clone object for ``record`` (one per libpython copy)."""
    key = os.path.realpath(record.libpython)
    with _REGISTRY_LOCK:
        clone = _REGISTRY.get(key)
        if clone is None:
            clone = _REGISTRY[key] = Clone(record, python)
        return clone
