"""The slice of a clone's C API the host calls, bound through ctypes.

Every function here is called from the host with the host's GIL released
(``ctypes.CDLL`` functions release it), so a clone can run for as long as it
likes while other host threads carry on.
"""

import ctypes
from ctypes import POINTER, c_char_p, c_int, c_ssize_t, c_ulong, c_void_p, c_wchar_p

PyBUF_READ = 0x100
PyBUF_WRITE = 0x200
METH_O = 0x0008


class PyMethodDef(ctypes.Structure):
    _fields_ = [
        ("ml_name", c_char_p),
        ("ml_meth", c_void_p),
        ("ml_flags", c_int),
        ("ml_doc", c_char_p),
    ]


class Py_buffer(ctypes.Structure):  # noqa: N801 - CPython's name
    _fields_ = [
        ("buf", c_void_p),
        ("obj", c_void_p),
        ("len", c_ssize_t),
        ("itemsize", c_ssize_t),
        ("readonly", c_int),
        ("ndim", c_int),
        ("format", c_char_p),
        ("shape", POINTER(c_ssize_t)),
        ("strides", POINTER(c_ssize_t)),
        ("suboffsets", POINTER(c_ssize_t)),
        ("internal", c_void_p),
    ]


# name -> (restype, argtypes)
_PROTOTYPES = {
    "Py_SetProgramName": (None, [c_wchar_p]),
    "Py_SetPythonHome": (None, [c_wchar_p]),
    "Py_InitializeEx": (None, [c_int]),
    "Py_IsInitialized": (c_int, []),
    "Py_FinalizeEx": (c_int, []),
    "PyRun_SimpleString": (c_int, [c_char_p]),
    "PyEval_SaveThread": (c_void_p, []),
    "PyEval_RestoreThread": (None, [c_void_p]),
    "PyGILState_Ensure": (c_int, []),
    "PyGILState_Release": (None, [c_int]),
    "PyImport_AddModule": (c_void_p, [c_char_p]),
    "PyImport_ImportModule": (c_void_p, [c_char_p]),
    "PyObject_GetAttrString": (c_void_p, [c_void_p, c_char_p]),
    "PyObject_CallObject": (c_void_p, [c_void_p, c_void_p]),
    "Py_IncRef": (None, [c_void_p]),
    "Py_DecRef": (None, [c_void_p]),
    "PyTuple_New": (c_void_p, [c_ssize_t]),
    "PyTuple_SetItem": (c_int, [c_void_p, c_ssize_t, c_void_p]),
    "PyMemoryView_FromMemory": (c_void_p, [c_void_p, c_ssize_t, c_int]),
    "PyMemoryView_FromBuffer": (c_void_p, [POINTER(Py_buffer)]),
    "PyCFunction_NewEx": (c_void_p, [POINTER(PyMethodDef), c_void_p, c_void_p]),
    "PySys_SetObject": (c_int, [c_char_p, c_void_p]),
    "PyUnicode_AsUTF8AndSize": (c_void_p, [c_void_p, POINTER(c_ssize_t)]),
    "PyUnicode_FromStringAndSize": (c_void_p, [c_char_p, c_ssize_t]),
    "PyLong_AsSsize_t": (c_ssize_t, [c_void_p]),
    "PyLong_FromSsize_t": (c_void_p, [c_ssize_t]),
    "PyErr_SetString": (None, [c_void_p, c_char_p]),
    "PyErr_Occurred": (c_void_p, []),
    "PyErr_Print": (None, []),
    "PyErr_Clear": (None, []),
    "PyErr_ExceptionMatches": (c_int, [c_void_p]),
    # thread id (a pthread_t, as threading.get_ident), exception type or NULL to clear
    "PyThreadState_SetAsyncExc": (c_int, [c_ulong, c_void_p]),
}


# Calls that never block and never run Python code: bound a second time without
# releasing the host's GIL, which saves a release/re-acquire on the hot path.
# (PyEval_RestoreThread may wait for the clone's GIL, held by a clone thread that
# may be calling back into the host, so it must always release the host's GIL.)
_HOLDING_HOST_GIL = ("PyEval_SaveThread", "Py_DecRef")


class _Bound:
    pass


class CApi:
    """Typed functions of one loaded libpython (a clone's, or any other)."""

    def __init__(self, lib: ctypes.CDLL):
        self.lib = lib
        _bind(self, lib, _PROTOTYPES)
        # ``held.X``: the same function called with the host's GIL kept.
        self.held = _Bound()
        _bind(self.held, ctypes.PyDLL(lib._name, handle=lib._handle),
              {name: _PROTOTYPES[name] for name in _HOLDING_HOST_GIL})
        self.no_site_flag = c_int.in_dll(lib, "Py_NoSiteFlag")
        self.PyExc_RuntimeError = c_void_p.in_dll(lib, "PyExc_RuntimeError").value

    def str_of(self, obj: int) -> str:
        """Text of a clone ``str`` object (the caller holds the clone's GIL)."""
        size = c_ssize_t()
        ptr = self.PyUnicode_AsUTF8AndSize(obj, ctypes.byref(size))
        if not ptr:
            self.PyErr_Clear()
            return "<not a str>"
        return ctypes.string_at(ptr, size.value).decode("utf-8", "replace")

    def new_str(self, text: str) -> int:
        data = text.encode("utf-8", "surrogateescape")
        return self.PyUnicode_FromStringAndSize(data, len(data))


def _bind(target, lib, prototypes) -> None:
    for name, (restype, argtypes) in prototypes.items():
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes
        setattr(target, name, fn)
