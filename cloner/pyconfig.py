"""Start a clone with its host's configuration through the PyConfig API (PEP 587, 3.8+).

The host reads its own settings (``host_settings``); ``initialize`` pre-initialises the
clone with a PyPreConfig, fills a PyConfig with them and calls Py_InitializeFromConfig.
PyConfig is a C struct whose layout changes with each minor version, so the field
lists below follow ``Include/cpython/initconfig.h`` of 3.8-3.13; strings and lists are
set through PyConfig_SetString / PyConfig_SetWideStringList as the API asks. A
layout check (known defaults at both ends of the struct after PyConfig_InitPythonConfig)
refuses to go on if the struct does not match.

What stays different on purpose: the clone imports ``site`` itself after its extension
remapping is installed (``site_import`` is 0 at initialisation, see load.py), it leaves
signal handlers, C stdio and the process locale to the host, and faulthandler is off
(it installs process-wide signal handlers).
"""

import ctypes
import sys
from ctypes import POINTER, c_char_p, c_int, c_ssize_t, c_ulong, c_void_p, c_wchar_p

from gilclone.errors import CloneLoadError

WINDOWS = sys.platform == "win32"
_INIT_PYTHON = 2  # _PyConfig_INIT_PYTHON


class PyStatus(ctypes.Structure):
    _fields_ = [("_type", c_int), ("func", c_char_p), ("err_msg", c_char_p), ("exitcode", c_int)]


class PyWideStringList(ctypes.Structure):
    _fields_ = [("length", c_ssize_t), ("items", POINTER(c_wchar_p))]


_S, _L, _I = c_wchar_p, PyWideStringList, c_int


def _preconfig_fields():
    fields = [("_config_init", _I), ("parse_argv", _I), ("isolated", _I), ("use_environment", _I),
              ("configure_locale", _I), ("coerce_c_locale", _I), ("coerce_c_locale_warn", _I)]
    if WINDOWS:
        fields.append(("legacy_windows_fs_encoding", _I))
    return fields + [("utf8_mode", _I), ("dev_mode", _I), ("allocator", _I)]


def _config_fields(minor: int):
    """PyConfig's members, in order, for CPython 3.<minor> (a release build)."""
    f = [("_config_init", _I), ("isolated", _I), ("use_environment", _I), ("dev_mode", _I),
         ("install_signal_handlers", _I), ("use_hash_seed", _I), ("hash_seed", c_ulong),
         ("faulthandler", _I)]
    f += [("_use_peg_parser", _I)] if minor == 9 else []
    f += [("tracemalloc", _I)]
    f += [("perf_profiling", _I)] if minor >= 12 else []
    f += [("import_time", _I)]
    f += [("code_debug_ranges", _I)] if minor >= 11 else []
    f += [("show_ref_count", _I)]
    f += [("show_alloc_count", _I)] if minor == 8 else []
    f += [("dump_refs", _I)]
    f += [("dump_refs_file", _S)] if minor >= 11 else []
    f += [("malloc_stats", _I), ("filesystem_encoding", _S), ("filesystem_errors", _S),
          ("pycache_prefix", _S), ("parse_argv", _I)]
    if minor >= 10:
        f += [("orig_argv", _L), ("argv", _L)]
    else:
        f += [("argv", _L), ("program_name", _S)]
    f += [("xoptions", _L), ("warnoptions", _L), ("site_import", _I), ("bytes_warning", _I)]
    f += [("warn_default_encoding", _I)] if minor >= 10 else []
    f += [(name, _I) for name in ("inspect", "interactive", "optimization_level", "parser_debug",
                                  "write_bytecode", "verbose", "quiet", "user_site_directory",
                                  "configure_c_stdio", "buffered_stdio")]
    f += [("stdio_encoding", _S), ("stdio_errors", _S)]
    f += [("legacy_windows_stdio", _I)] if WINDOWS else []
    f += [("check_hash_pycs_mode", _S)]
    f += [("use_frozen_modules", _I), ("safe_path", _I)] if minor >= 11 else []
    f += [("int_max_str_digits", _I)] if minor >= 12 else []
    f += [("cpu_count", _I)] if minor >= 13 else []
    f += [("pathconfig_warnings", _I)]
    f += [("program_name", _S)] if minor >= 10 else []
    f += [("pythonpath_env", _S), ("home", _S)]
    f += [("platlibdir", _S)] if minor >= 10 else []
    f += [("module_search_paths_set", _I), ("module_search_paths", _L)]
    f += [("stdlib_dir", _S)] if minor >= 11 else []
    f += [(name, _S) for name in ("executable", "base_executable", "prefix", "base_prefix",
                                  "exec_prefix", "base_exec_prefix")]
    f += [("platlibdir", _S)] if minor == 9 else []
    f += [("skip_source_first_line", _I), ("run_command", _S), ("run_module", _S),
          ("run_filename", _S)]
    f += [("sys_path_0", _S)] if minor >= 13 else []
    f += [("_install_importlib", _I), ("_init_main", _I)]
    f += [("_isolated_interpreter", _I)] if 9 <= minor <= 11 else []
    f += [("_orig_argv", _L)] if minor == 9 else []
    f += [("_is_python_build", _I)] if minor >= 11 else []
    # Debug and statistics builds append members: room so the library never writes past us.
    return f + [("_reserve", ctypes.c_char * 256)]


def _struct(name, fields):
    return type(name, (ctypes.Structure,), {"_fields_": fields})


# -- what the host runs with ---------------------------------------------------------

# PyConfig int member -> how the host's value is read (sys.flags attributes unless noted).
_FLAG_FIELDS = {
    "isolated": "isolated",
    "dev_mode": "dev_mode",
    "bytes_warning": "bytes_warning",
    "warn_default_encoding": "warn_default_encoding",
    "inspect": "inspect",
    "interactive": "interactive",
    "optimization_level": "optimize",
    "parser_debug": "debug",
    "verbose": "verbose",
    "quiet": "quiet",
    "safe_path": "safe_path",
    "int_max_str_digits": "int_max_str_digits",
}


def host_settings(program_name: str, home: str = "") -> dict:
    """The host's configuration as PyConfig members (ints, strings, lists) and pre-config."""
    flags = sys.flags
    ints = {field: int(getattr(flags, attr)) for field, attr in _FLAG_FIELDS.items()
            if hasattr(flags, attr)}
    ints.update(
        use_environment=int(not flags.ignore_environment),
        user_site_directory=int(not flags.no_user_site),
        write_bytecode=int(not sys.dont_write_bytecode),
        buffered_stdio=int(not getattr(sys.__stdout__, "write_through", False)),
        # Left to the host: the clone must not take over process-wide state.
        install_signal_handlers=0, configure_c_stdio=0, faulthandler=0, parse_argv=0,
        site_import=0, pathconfig_warnings=0,
    )
    if not flags.hash_randomization:  # PYTHONHASHSEED=0; another seed is read from the
        ints.update(use_hash_seed=1, hash_seed=0)  # environment by the clone as by the host
    strings = {
        "program_name": program_name,
        "home": home,
        "filesystem_encoding": sys.getfilesystemencoding(),
        "filesystem_errors": sys.getfilesystemencodeerrors(),
        "pycache_prefix": getattr(sys, "pycache_prefix", None),
        "check_hash_pycs_mode": _check_hash_pycs_mode(),
    }
    stdout = sys.__stdout__
    if stdout is not None and getattr(stdout, "encoding", None):
        strings.update(stdio_encoding=stdout.encoding, stdio_errors=stdout.errors)
    lists = {
        "xoptions": [k if v is True else f"{k}={v}" for k, v in sys._xoptions.items()],
        "warnoptions": list(sys.warnoptions),
        "argv": [""],
    }
    if getattr(flags, "warn_default_encoding", 0):
        # 3.10+ takes this one from the parsed command line only (PyConfig's member is
        # overwritten while the configuration is read), so it is given as one.
        ints["parse_argv"] = 1
        lists["argv"] = [program_name or "python", "-X", "warn_default_encoding"]
    pre = {"isolated": int(flags.isolated), "use_environment": ints["use_environment"],
           "utf8_mode": int(flags.utf8_mode), "dev_mode": int(flags.dev_mode),
           "parse_argv": 0, "configure_locale": 0, "coerce_c_locale": 0,
           "coerce_c_locale_warn": 0}
    return {"ints": ints, "strings": strings, "lists": lists, "pre": pre}


def runtime_settings() -> dict:
    """Settings a clone takes after initialisation (they are not PyConfig members)."""
    out = {"recursion_limit": sys.getrecursionlimit(), "switch_interval": sys.getswitchinterval()}
    if hasattr(sys, "get_int_max_str_digits"):
        out["int_max_str_digits"] = sys.get_int_max_str_digits()
    return out


def _check_hash_pycs_mode() -> str:
    try:
        import _imp

        return _imp.check_hash_based_pycs
    except (ImportError, AttributeError):
        return "default"


# -- initialising a clone ------------------------------------------------------------

def initialize(lib, minor: int, settings: dict) -> None:
    """Pre-initialise and initialise the libpython ``lib`` (a ctypes.CDLL) with ``settings``."""
    _bind(lib)
    pre = _struct("PyPreConfig", _preconfig_fields())()
    lib.PyPreConfig_InitPythonConfig(ctypes.byref(pre))
    for name, value in settings["pre"].items():
        setattr(pre, name, value)
    _check(lib.Py_PreInitialize(ctypes.byref(pre)), "Py_PreInitialize")
    config = _struct("PyConfig", _config_fields(minor))()
    lib.PyConfig_InitPythonConfig(ctypes.byref(config))
    _check_layout(config, minor)
    try:
        _fill(lib, config, settings)
        _check(lib.Py_InitializeFromConfig(ctypes.byref(config)), "Py_InitializeFromConfig")
    finally:
        lib.PyConfig_Clear(ctypes.byref(config))


def _bind(lib) -> None:
    status, cfg = PyStatus, c_void_p
    for name, restype, argtypes in (
        ("PyPreConfig_InitPythonConfig", None, [cfg]),
        ("Py_PreInitialize", status, [cfg]),
        ("PyConfig_InitPythonConfig", None, [cfg]),
        ("PyConfig_SetString", status, [cfg, c_void_p, c_wchar_p]),
        ("PyConfig_SetWideStringList", status, [cfg, c_void_p, c_ssize_t, POINTER(c_wchar_p)]),
        ("Py_InitializeFromConfig", status, [cfg]),
        ("PyConfig_Clear", None, [cfg]),
    ):
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes


def _check_layout(config, minor: int) -> None:
    """PyConfig_InitPythonConfig's known defaults must sit where this layout puts them."""
    expected = {"_config_init": _INIT_PYTHON, "parse_argv": 1, "site_import": 1,
                "configure_c_stdio": 1, "pathconfig_warnings": 1, "_install_importlib": 1,
                "_init_main": 1}
    found = {name: getattr(config, name) for name in expected}
    if found != expected:
        raise CloneLoadError(
            f"the PyConfig layout gilclone knows for Python 3.{minor} does not match this "
            f"libpython (defaults read {found}); this build is not supported"
        )


def _fill(lib, config, settings: dict) -> None:
    names = {name for name, _ in config._fields_}
    for name, value in settings["ints"].items():
        if name in names:
            setattr(config, name, value)
    for name, value in settings["strings"].items():
        if name in names and value:
            _check(lib.PyConfig_SetString(ctypes.byref(config), _address(config, name), value),
                   f"PyConfig_SetString({name})")
    for name, values in settings["lists"].items():
        items = (c_wchar_p * max(1, len(values)))(*values)
        _check(lib.PyConfig_SetWideStringList(ctypes.byref(config), _address(config, name),
                                              len(values), items),
               f"PyConfig_SetWideStringList({name})")


def _address(config, name: str) -> int:
    return ctypes.addressof(config) + getattr(type(config), name).offset


def _check(status: PyStatus, what: str) -> None:
    if status._type != 0:  # _PyStatus_TYPE_OK
        message = (status.err_msg or b"").decode("utf-8", "replace")
        func = (status.func or b"").decode("utf-8", "replace")
        raise CloneLoadError(f"{what} failed in the clone: {func}: {message or status.exitcode}")



_NO_SITE_INDEX = 6  # sys.flags: debug, inspect, interactive, optimize, dont_write_bytecode,
#                     no_user_site, no_site, ... (the same order in 3.8-3.13)


def mark_site_imported(lib) -> None:
    """``sys.flags.no_site = 0`` in a clone whose site ran after initialisation (the caller
    holds the clone's GIL). sys.flags is read-only to Python code; CPython itself fills it
    with PyStructSequence_SetItem, which is what this does."""
    lib.PySys_GetObject.restype = c_void_p
    lib.PySys_GetObject.argtypes = [c_char_p]
    lib.PyLong_FromLong.restype = c_void_p
    lib.PyLong_FromLong.argtypes = [ctypes.c_long]
    lib.PyStructSequence_SetItem.restype = None
    lib.PyStructSequence_SetItem.argtypes = [c_void_p, c_ssize_t, c_void_p]
    flags = lib.PySys_GetObject(b"flags")  # borrowed
    if flags:
        lib.PyStructSequence_SetItem(flags, _NO_SITE_INDEX, lib.PyLong_FromLong(0))
