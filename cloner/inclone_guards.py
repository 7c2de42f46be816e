"""Refusals of process-wide operations, installed inside each clone before user code runs.

A clone shares its process with the host and the other clones. What ends,
duplicates or replaces that process, takes over its signal delivery, or makes a
subinterpreter (whose fresh import machinery would load extension modules bound
to the host) would hurt all of them, so inside a clone it raises
``gilclone.errors.ProcessWideOperationError`` in the task instead.

The bootstrap runs this file's source in a module of its own and calls
``install``; the host never imports it. Wrappers look the originals up at call
time so that ``os`` and ``posix`` can both be patched.
"""

import sys

_WHY_EXIT = "it would end the host process and every clone in it; return or raise instead"
_WHY_FORK = (
    "a fork copies the whole process, host and all clones, with their locks held by threads "
    "that do not exist in the child; use subprocess, or multiprocessing's 'spawn' or "
    "'forkserver' start method (multiprocessing.get_context('spawn'))"
)
_WHY_EXEC = "it would replace the host process and every clone in it; use subprocess instead"
_WHY_SIGNAL = (
    "signal dispositions, timers and wake-up fds belong to the whole process and are "
    "the host's; handle signals in the host"
)
_WHY_SELF_SIGNAL = "a signal sent to this process is handled by the host, not by this clone"
_WHY_SUBINTERP = (
    "a subinterpreter created inside a clone re-imports extension modules bound to the "
    "host's libpython and aborts the process; use more clones instead"
)
_WHY_CRASH = "it crashes the whole process on purpose"
_WHY_FAULT = "fatal-error handlers are process-wide signal handlers and belong to the host"

# module -> {function: why}; every call is refused.
REFUSED = {
    "os": {
        "_exit": _WHY_EXIT,
        "abort": _WHY_EXIT,
        "fork": _WHY_FORK,
        "forkpty": _WHY_FORK,
        "execv": _WHY_EXEC,
        "execve": _WHY_EXEC,
    },
    "_signal": {
        "signal": _WHY_SIGNAL,
        "setitimer": _WHY_SIGNAL,
        "alarm": _WHY_SIGNAL,
        "set_wakeup_fd": _WHY_SIGNAL,
        "siginterrupt": _WHY_SIGNAL,
        "pthread_kill": _WHY_SELF_SIGNAL,
        "raise_signal": _WHY_SELF_SIGNAL,
    },
    "faulthandler": {
        "enable": _WHY_FAULT,
        "register": _WHY_FAULT,
        "_sigsegv": _WHY_CRASH,
        "_sigabrt": _WHY_CRASH,
        "_sigfpe": _WHY_CRASH,
        "_read_null": _WHY_CRASH,
        "_stack_overflow": _WHY_CRASH,
        "_fatal_error": _WHY_CRASH,
        "_fatal_error_c_thread": _WHY_CRASH,
    },
    # Extension modules: patched when they are imported (see ``guard_module``).
    "_xxsubinterpreters": {"create": _WHY_SUBINTERP},
    "_interpreters": {"create": _WHY_SUBINTERP},
    "_testcapi": {
        "run_in_subinterp": _WHY_SUBINTERP,
        "run_in_subinterp_with_config": _WHY_SUBINTERP,
        "raise_signal": _WHY_SELF_SIGNAL,
        "raise_SIGINT_then_send_None": _WHY_SELF_SIGNAL,
        "fatal_error": _WHY_CRASH,
        "crash_no_current_thread": _WHY_CRASH,
    },
    "_testinternalcapi": {
        "run_in_subinterp_with_config": _WHY_SUBINTERP,
        "create_interpreter": _WHY_SUBINTERP,
    },
}
# ``posix`` holds the same functions as ``os``; ``signal`` re-exports ``_signal``'s.
ALIASES = {"posix": "os", "nt": "os", "signal": "_signal"}


def _error(qualname, why):
    message = f"{qualname}() is refused inside a gilclone clone: {why}"
    signal_op = qualname.startswith(("signal.", "_signal."))
    try:
        from gilclone.errors import ProcessWideOperationError, ProcessWideSignalError
    except ImportError:  # gilclone not importable here (a bare clone): same meaning
        return (ValueError if signal_op else RuntimeError)(message)
    return (ProcessWideSignalError if signal_op else ProcessWideOperationError)(message)


def _refusal(qualname, why, original):
    def refused(*args, **kwargs):
        raise _error(qualname, why)

    _like(refused, original)
    refused.__doc__ = f"Refused in a gilclone clone: {why}.\n\n{getattr(original, '__doc__', '')}"
    return refused


def _like(wrapper, original):
    """Name the wrapper as the original (code checks ``fn.__module__``, ``__name__``)."""
    name = getattr(original, "__name__", None)
    if name:
        wrapper.__name__ = wrapper.__qualname__ = name
    module = getattr(original, "__module__", None)
    wrapper.__module__ = {"_signal": "signal", "posix": "os", "nt": "os"}.get(module, module)
    wrapper.__doc__ = getattr(original, "__doc__", None)
    wrapper.__wrapped_original__ = original


def _self_targets(pid):
    """Whether ``kill(pid, ...)`` reaches this process (itself, its group, or everyone)."""
    import os

    if pid in (os.getpid(), 0, -1):
        return True
    return hasattr(os, "getpgrp") and pid == -os.getpgrp()  # Windows has no process groups


def _guarded_kill(original, name):
    def kill(pid, sig):
        if sig != 0 and _self_targets(pid):
            raise _error(f"os.{name}", _WHY_SELF_SIGNAL)
        return original(pid, sig)

    _like(kill, original)
    return kill


def _guarded_killpg(original):
    def killpg(pgid, sig):
        import os

        if sig != 0 and pgid in (0, os.getpgrp()):
            raise _error("os.killpg", _WHY_SELF_SIGNAL)
        return original(pgid, sig)

    _like(killpg, original)
    return killpg


def _pidfd_target(fd):
    """The pid a pidfd (or an fd of a /proc/<pid> directory) refers to, or None."""
    import os

    try:
        link = os.readlink(f"/proc/self/fd/{int(fd)}")
        if link.startswith("/proc/") and link[6:].isdigit():
            return int(link[6:])
    except (OSError, ValueError, TypeError):
        pass
    try:
        with open(f"/proc/self/fdinfo/{int(fd)}") as f:
            for line in f:
                if line.startswith("Pid:"):
                    return int(line.split()[1])
    except (OSError, ValueError, TypeError):
        return None
    return None


def _guarded_pidfd_send_signal(original):
    def pidfd_send_signal(pidfd, sig, siginfo=None, flags=0):
        import os

        if sig != 0 and _pidfd_target(pidfd) == os.getpid():
            raise _error("signal.pidfd_send_signal", _WHY_SELF_SIGNAL)
        return original(pidfd, sig, siginfo, flags)

    _like(pidfd_send_signal, original)
    return pidfd_send_signal


def _guarded_dump_later(original):
    def dump_traceback_later(timeout, repeat=False, file=sys.stderr, exit=False):  # noqa: A002
        if exit:
            raise _error("faulthandler.dump_traceback_later", _WHY_EXIT + " (exit=True)")
        return original(timeout, repeat, file, exit)

    _like(dump_traceback_later, original)
    return dump_traceback_later


def _spawnvef(mode, file, args, env, func):
    """``os.spawn*`` without ``fork``: the same child through ``posix_spawn``."""
    import os

    search = getattr(func, "__name__", "") in ("execvp", "execvpe")
    spawn = os.posix_spawnp if search else os.posix_spawn
    pid = spawn(file, list(args), os.environ if env is None else env)
    if mode == os.P_NOWAIT:
        return pid
    while True:
        _, status = os.waitpid(pid, 0)
        if os.WIFSTOPPED(status):
            continue
        if os.WIFSIGNALED(status):
            return -os.WTERMSIG(status)
        return os.WEXITSTATUS(status)


def guard_module(name, module):
    """Replace the refused functions of ``module`` (imported under ``name``)."""
    table = REFUSED.get(ALIASES.get(name, name))
    if table is None:
        return
    public = ALIASES.get(name, name)
    for attr, why in table.items():
        original = getattr(module, attr, None)
        if original is None or hasattr(original, "__wrapped_original__"):
            continue
        setattr(module, attr, _refusal(f"{public.replace('_signal', 'signal')}.{attr}", why, original))
    if public == "os" and hasattr(module, "_spawnvef") and hasattr(module, "posix_spawn"):
        module._spawnvef = _spawnvef  # os.spawn* forked; they keep working in clones
    if public == "os":
        for attr in ("kill",):
            original = getattr(module, attr, None)
            if original is not None and not hasattr(original, "__wrapped_original__"):
                setattr(module, attr, _guarded_kill(original, attr))
        original = getattr(module, "killpg", None)
        if original is not None and not hasattr(original, "__wrapped_original__"):
            module.killpg = _guarded_killpg(original)
    original = getattr(module, "pidfd_send_signal", None)
    if public == "_signal" and original is not None and not hasattr(original, "__wrapped_original__"):
        module.pidfd_send_signal = _guarded_pidfd_send_signal(original)
    if public == "faulthandler":
        original = getattr(module, "dump_traceback_later", None)
        if original is not None and not hasattr(original, "__wrapped_original__"):
            module.dump_traceback_later = _guarded_dump_later(original)


def install(loader_class):
    """Guard what is imported now, and every extension module imported from now on."""
    import importlib

    for name in ("posix", "nt", "os", "_signal", "signal", "faulthandler"):
        if name in sys.builtin_module_names or name in ("os", "signal"):
            try:
                guard_module(name, importlib.import_module(name))
            except ImportError:
                continue
    for name in REFUSED:
        if name in sys.builtin_module_names and name not in ("os", "_signal", "faulthandler"):
            guard_module(name, importlib.import_module(name))
    _guard_later_imports(loader_class)


def _guard_later_imports(loader_class):
    exec_module = loader_class.exec_module

    def guarded_exec_module(self, module):
        exec_module(self, module)
        guard_module(module.__name__, module)

    loader_class.exec_module = guarded_exec_module


def join_threads():
    """At host exit: wait for this clone's non-daemon threads, as the host waits for its own
    (threading._shutdown); threads they start are waited for too."""
    import threading

    here = threading.current_thread()
    while True:
        pending = [t for t in threading.enumerate()
                   if t is not here and not t.daemon and t.is_alive()
                   and t is not threading.main_thread()]
        if not pending:
            return
        for thread in pending:
            thread.join()


def own_pythonapi(libpython):
    """``ctypes.pythonapi`` in a clone is the clone's libpython, not the host's.

    ctypes makes it with ``PyDLL(None)``: the process's global scope, where the host's
    libpython is; C-API calls through it from a clone (PyThreadState_SetAsyncExc in
    test_threading) act on the host's interpreter and crash the process."""
    if "ctypes" in sys.modules:
        _point_pythonapi(sys.modules["ctypes"], libpython)
        return
    sys.meta_path.insert(0, _CtypesFinder(libpython))


def _point_pythonapi(module, libpython):
    module.pythonapi = module.PyDLL(libpython)


class PatchingLoader:
    """Runs a module with the loader found for it, then ``patch(module)``.

    A wrapper, never an edit of the loader found: on Windows the standard library
    sits in one zip whose single zipimporter loads every module from it, so
    editing that loader would patch every module imported after."""

    def __init__(self, loader, patch):
        self.loader, self.patch = loader, patch

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        self.patch(module)


def patched_spec(name, path, patch):
    """The spec the path finders give ``name``, its loader wrapped to ``patch`` the module."""
    from importlib.machinery import PathFinder

    spec = PathFinder.find_spec(name, path)
    if spec is not None and hasattr(spec.loader, "exec_module"):
        spec.loader = PatchingLoader(spec.loader, patch)
    return spec


class _CtypesFinder:
    """Finds nothing itself: has ``ctypes`` patched once the usual loader ran it."""

    def __init__(self, libpython):
        self.libpython = libpython

    def find_spec(self, name, path=None, target=None):
        if name != "ctypes":
            return None
        libpython = self.libpython
        return patched_spec(name, path, lambda module: _point_pythonapi(module, libpython))
