"""Facts about the interpreter this code runs in, as one JSON-able dict.

This file is also run as a script by *another* interpreter (``locate --python EXE``):
it must use only the standard library and work on CPython 3.8 and newer, on
Linux, Windows and macOS. Interpretation of the facts lives in locate.py.
"""

import json
import os
import site
import sys
import sysconfig

_CONFIG_VARS = (
    "LIBDIR",
    "LDLIBRARY",
    "INSTSONAME",
    "Py_ENABLE_SHARED",
    "EXT_SUFFIX",
    "MULTIARCH",
    "DESTSHARED",
    "PYTHONFRAMEWORK",
    "PYTHONFRAMEWORKPREFIX",
    "SOABI",
)


def collect() -> dict:
    return {
        "executable": sys.executable,
        "implementation": sys.implementation.name,
        "version": "%d.%d.%d" % sys.version_info[:3] + _release_suffix(),
        "sys_platform": sys.platform,
        "machine": _machine(),
        "prefix": sys.prefix,
        "base_prefix": getattr(sys, "base_prefix", sys.prefix),
        "sys_path": list(sys.path),
        "config": {k: sysconfig.get_config_var(k) for k in _CONFIG_VARS},
        "site_packages": _site_packages(),
        "loaded_libpython": _loaded_libpython(),
    }


def _release_suffix() -> str:
    level = sys.version_info.releaselevel
    if level == "final":
        return ""
    return {"alpha": "a", "beta": "b", "candidate": "rc"}[level] + str(sys.version_info.serial)


def _machine() -> str:
    if sys.platform == "win32":
        # platform.machine() goes through WMI on 3.12+, which aborts the process under Wine 8.
        arch = os.environ.get("PROCESSOR_ARCHITEW6432") or os.environ.get("PROCESSOR_ARCHITECTURE")
        if arch:
            return arch
    import platform

    try:
        return platform.machine()
    except Exception:  # platform.machine() can crash under Wine (WMI)
        return os.environ.get("PROCESSOR_ARCHITECTURE", "")


def _site_packages() -> list:
    dirs = []
    try:
        dirs.extend(site.getsitepackages())
    except AttributeError:  # old virtualenv's site.py
        pass
    user = getattr(site, "getusersitepackages", lambda: None)()
    if user:
        dirs.append(user)
    for key in ("purelib", "platlib"):
        dirs.append(sysconfig.get_path(key))
    return dirs


def _loaded_libpython():
    """The file that defines the C API in this process: a DLL, a dylib, or the executable."""
    if sys.platform == "win32":
        return _windows_dll_path()
    try:
        found = _dladdr_path()
    except Exception:
        found = None
    if sys.platform == "darwin" and not found:
        try:
            found = _dyld_images_path()
        except Exception:
            found = None
    return found


def _dyld_images_path(lib=None):
    """macOS fallback: the libpython among the images dyld has loaded (None for a static host)."""
    import ctypes

    lib = lib if lib is not None else ctypes.CDLL(None)
    count = lib._dyld_image_count
    count.restype = ctypes.c_uint32
    name = lib._dyld_get_image_name
    name.argtypes = [ctypes.c_uint32]
    name.restype = ctypes.c_char_p
    return pick_libpython_image([os.fsdecode(name(i) or b"") for i in range(count())])


def pick_libpython_image(names):
    """The first image path that is a libpython dylib or a Python framework binary."""
    import re

    for path in names:
        if re.match(r"libpython3\.\d+[a-z]*\.dylib$", os.path.basename(path)) or re.search(
            r"Python\.framework/Versions/[^/]+/Python$", path
        ):
            return os.path.realpath(path)
    return None


def _windows_dll_path():
    import ctypes

    handle = getattr(sys, "dllhandle", None)
    if not handle:
        return None
    buf = ctypes.create_unicode_buffer(32768)
    length = ctypes.windll.kernel32.GetModuleFileNameW(ctypes.c_void_p(handle), buf, len(buf))
    return buf.value[:length] if length else None


def _dladdr_path():
    import ctypes

    class DlInfo(ctypes.Structure):
        _fields_ = [
            ("dli_fname", ctypes.c_char_p),
            ("dli_fbase", ctypes.c_void_p),
            ("dli_sname", ctypes.c_char_p),
            ("dli_saddr", ctypes.c_void_p),
        ]

    libc = ctypes.CDLL(None)
    dladdr = libc.dladdr
    dladdr.argtypes = [ctypes.c_void_p, ctypes.POINTER(DlInfo)]
    info = DlInfo()
    address = ctypes.cast(ctypes.pythonapi.Py_Initialize, ctypes.c_void_p).value
    if not dladdr(address, ctypes.byref(info)) or not info.dli_fname:
        return None
    return os.path.realpath(os.fsdecode(info.dli_fname))


if __name__ == "__main__":
    sys.stdout.write(json.dumps(collect()))
