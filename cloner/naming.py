"""Names for clones: unique per clone set and per clone, same length as the original.

A same-length name can be written over the original string in place, so the
libpython copy needs no structural edit at all.
"""

import string

PREFIX = "libgc"
SUFFIX = ".so"
_DIGITS = string.digits + string.ascii_lowercase
MIN_SET_ID_CHARS = 4
MAX_CLONES = 36 * 36
MIN_LIBRARY_KEY_CHARS = 6


def index_token(index: int) -> str:
    """Two characters for clone ``index`` (0..1295), in base 36."""
    if not 0 <= index < 36 * 36:
        raise ValueError(f"clone index {index} out of range 0..1295")
    return _DIGITS[index // 36] + _DIGITS[index % 36]


def clone_soname(original: str, set_id: str, index: int) -> str:
    """A soname as long as ``original`` that names clone ``index`` of set ``set_id``.

    Falls back to a longer name when the original is too short to hold enough of
    the set id (the writer then has to make room instead of writing in place).
    """
    room = len(original) - len(PREFIX) - len(SUFFIX) - 2
    take = max(room, MIN_SET_ID_CHARS)
    return f"{PREFIX}{set_id[:take]}{index_token(index)}{SUFFIX}"


def library_soname(original: str, key: str, index: int) -> str:
    """A name as long as ``original`` for clone ``index``'s copy of a helper library.

    ``key`` (hex) is a hash of the library's path and the clone's directory, so two
    libraries, clones or sets do not share a name in one process (ld.so would take a
    second library of a name for the first); hex never starts with ``gc``, which keeps
    these apart from libpython copies' names. Names too short for 6 hex digits grow.
    """
    room = len(original) - len("lib") - len(SUFFIX) - 2
    take = max(room, MIN_LIBRARY_KEY_CHARS)
    return f"lib{key[:take]}{index_token(index)}{SUFFIX}"
