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
    import _imp
    import sys
    from _frozen_importlib import ModuleSpec
    from _frozen_importlib_external import ExtensionFileLoader

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
    sys._gilclone_index = config["index"]

    sys.argv[:] = config["argv"]
    if config["site"]:
        import site

        site.main()
    sys.path[:] = config["sys_path"]
    _take_runtime_settings(config["runtime"])
    _install_guards(config["guards"], ExtensionFileLoader, config["libpython"])


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
