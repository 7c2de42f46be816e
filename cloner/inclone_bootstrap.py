"""Runs inside a clone right after Py_InitializeEx (site import off). Not imported by the host.

Until ``_install`` has replaced ExtensionFileLoader.create_module, importing any
extension module here would bind it to the host's libpython, so this file
imports only built-in and frozen modules (sys, posix through os, _imp and the
frozen import machinery). The host appends a call ``_gilclone_bootstrap(CONFIG)``
with CONFIG a literal dict.
"""


def _gilclone_bootstrap(config):
    import sys

    try:
        _install(config)
        sys._gilclone_error = None
    except BaseException as exc:  # reported to the host, which raises CloneLoadError
        sys._gilclone_error = _describe(exc)


def _describe(exc):
    import sys

    try:
        import traceback

        return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    except BaseException:
        return f"{type(exc).__name__}: {exc}"
    finally:
        sys.stderr.flush()


def _install(config):
    import sys
    from _frozen_importlib_external import ExtensionFileLoader

    # In a link-map namespace (cloner/namespace.py) extension modules bind to the
    # namespace's own libpython as they are: nothing to remap.
    if config.get("route", "copies") == "copies":
        _install_twins(config, ExtensionFileLoader)
    sys._gilclone_index = config["index"]

    _install_dll_directory_hook()
    sys.argv[:] = config["argv"]
    if config["site"]:
        import site

        site.main()
    sys.path[:] = config["sys_path"]
    _take_runtime_settings(config["runtime"])
    _install_guards(config["guards"], ExtensionFileLoader, config["libpython"])
    # After the guards: their ctypes finder (own_pythonapi) goes first in sys.meta_path, and
    # this hook, which also points ctypes.pythonapi at the clone, must come before it.
    _install_ctypes_hook(config)


def _install_twins(config, ExtensionFileLoader):  # noqa: N803 - the class it patches
    """Reroute every extension-module load to this clone's twin of the file."""
    import _imp
    import sys
    from _frozen_importlib import ModuleSpec

    # Extension modules that the interpreter's own start-up loaded from their
    # original files would be bound to the host: refuse to run with them.
    early = sorted(
        name
        for name, mod in list(sys.modules.items())
        if str(getattr(mod, "__file__", "") or "").endswith((".so", ".pyd", ".dylib"))
    )
    if early:
        raise ImportError(f"extension modules loaded before gilclone's remapping: {early}")

    host = sys._gilclone_host
    dlopen_flags = config["dlopen_flags"]
    twins = {}

    def create_module(self, spec):
        origin = spec.origin
        twin = twins.get(origin)
        if twin is None:
            try:
                twin = host("twin\0" + origin)
            except RuntimeError as exc:
                raise ImportError(
                    f"gilclone could not prepare this clone's copy of {origin}: {exc}",
                    name=spec.name,
                    path=origin,
                ) from None
            twins[origin] = twin
        twin_spec = ModuleSpec(spec.name, self, origin=twin)
        previous = sys.getdlopenflags() if dlopen_flags is not None else None
        if dlopen_flags is not None:
            sys.setdlopenflags(dlopen_flags)
        try:
            module = _imp.create_dynamic(twin_spec)
        finally:
            if previous is not None:
                sys.setdlopenflags(previous)
        # Single-phase modules set __file__ to the file actually loaded; code that
        # finds data next to its module must see the original place.
        try:
            if getattr(module, "__file__", None) == twin:
                module.__file__ = origin
        except (AttributeError, TypeError):
            pass
        return module

    ExtensionFileLoader.create_module = create_module
    sys._gilclone_twins = twins


def _install_ctypes_hook(config):
    """Make ctypes and cffi load this clone's libraries: ``CDLL``/``PyDLL``/``LoadLibrary``
    (and cffi's ``ffi.dlopen``) of a library that uses the C API (or depends on one that
    does) open the clone's copy of it, bound to the clone with RTLD_DEEPBIND, and
    ``ctypes.pythonapi`` is the clone's own libpython instead of the global scope (the
    host's). Each module is patched right after it is first imported, so clones that
    never use it pay nothing."""
    import sys

    flags = config["dlopen_flags"]
    libpython = config.get("libpython")
    # In a namespace, libraries ctypes loads land in it, bound to it; only PyDLL(None), the
    # global scope of the process (the host's libpython), needs pointing at this clone.
    namespace = config.get("route") == "namespaces"
    if (flags is None and not namespace) or not libpython:
        return  # Linux only: elsewhere ctypes already loads by path
    host = sys._gilclone_host

    def own_copy(name):
        """The clone's copy of library ``name`` (str/bytes/path), or None to load as asked."""
        import os

        if not isinstance(name, (str, bytes, os.PathLike)) or not os.fspath(name):
            return None
        wanted = os.fsdecode(name)
        try:
            return host("lib\0" + wanted) or None
        except RuntimeError as exc:
            raise OSError(f"gilclone could not prepare this clone's copy of {wanted}: {exc}") from None

    def patch_ctypes(ctypes):
        original_init = ctypes.CDLL.__init__

        def __init__(self, name, mode=ctypes.DEFAULT_MODE, handle=None, *args, **kwargs):
            if handle is not None:
                pass  # wraps a handle the caller already has
            elif name is None and self._func_flags_ & ctypes._FUNCFLAG_PYTHONAPI:
                name, mode = libpython, mode | (flags or 0)  # PyDLL(None): the C API of this clone
            elif not namespace:
                copy = own_copy(name)
                if copy:
                    name, mode = copy, mode | flags
            original_init(self, name, mode, handle, *args, **kwargs)

        ctypes.CDLL.__init__ = __init__
        ctypes.pythonapi = ctypes.PyDLL(None)

    def patch_cffi(cffi):
        original_dlopen = cffi.FFI.dlopen

        def dlopen(self, name, flags_=0):
            copy = own_copy(name)
            if copy:
                name, flags_ = copy, flags_ | flags
            return original_dlopen(self, name, flags_)

        cffi.FFI.dlopen = dlopen

    patches = {"ctypes": patch_ctypes} if namespace else {"ctypes": patch_ctypes, "cffi": patch_cffi}
    for name in [n for n in patches if n in sys.modules]:  # imported by site (a .pth file)
        patches.pop(name)(sys.modules[name])

    class LibraryLoaderHook:
        @staticmethod
        def find_spec(name, path=None, target=None):
            patch = patches.get(name)
            if patch is None:
                return None
            return sys.modules["_gilclone_guards"].patched_spec(name, path, patch)

    sys.meta_path.insert(0, LibraryLoaderHook)


def _install_dll_directory_hook():
    """Windows: tell the host about ``os.add_dll_directory`` calls (pywin32_bootstrap's), so
    the helper DLLs a twin imports from there are found and copied for this clone."""
    import sys

    if sys.platform != "win32":
        return
    import os

    host = sys._gilclone_host
    original = os.add_dll_directory

    def add_dll_directory(path):
        handle = original(path)
        try:
            host("dlldir\0" + os.fspath(path))
        except RuntimeError:
            pass  # only a search hint for the host: the directory is added either way
        return handle

    os.add_dll_directory = add_dll_directory



def _take_runtime_settings(runtime):
    """The host's settings that are not part of PyConfig (it may have changed them)."""
    import sys

    sys.setrecursionlimit(runtime["recursion_limit"])
    sys.setswitchinterval(runtime["switch_interval"])
    if "int_max_str_digits" in runtime:
        sys.set_int_max_str_digits(runtime["int_max_str_digits"])


def _install_guards(path, loader_class, libpython):
    """Refuse process-wide operations (cloner/inclone_guards.py) before user code runs."""
    import sys

    with open(path, encoding="utf-8") as f:
        source = f.read()
    module = type(sys)("_gilclone_guards")
    module.__file__ = path
    exec(compile(source, path, "exec"), module.__dict__)
    sys.modules[module.__name__] = module
    module.install(loader_class)
    module.own_pythonapi(libpython)
