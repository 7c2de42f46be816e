"""One root error type for everything gilclone raises on purpose.

Each subclass names a class of cause; the message names the file or the
cause and how to fix it, so the CLI can print it as one line.
"""


class GilcloneError(Exception):
    """Root of every error gilclone raises deliberately."""


class BinaryFormatError(GilcloneError):
    """A file could not be read as a binary we understand (missing, text, truncated, foreign)."""

    def __init__(self, path, problem):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class LocateError(GilcloneError):
    """The libpython of an interpreter could not be found or the interpreter could not be run."""


class PythonVersionError(GilcloneError):
    """The interpreter is of a version or build that gilclone cannot clone."""


class ToolMissingError(GilcloneError):
    """An external tool that an operation needs is not installed."""


class CloneError(GilcloneError):
    """Preparing or opening a clone set failed."""


class RewriteError(CloneError):
    """Rewriting a binary failed, or the re-read result did not match the intended edits."""


class CloneSetCorruptError(CloneError):
    """A file of a prepared clone set does not match its manifest."""


class CacheLocationError(CloneError):
    """The clone cache directory cannot be used (not writable, no space, noexec mount)."""


class CloneLoadError(GilcloneError):
    """A prepared clone could not be loaded or initialised in this process."""


class NamespaceLimitError(CloneLoadError):
    """No further link-map namespace could be opened for the namespace route (glibc's
    limit, 11 by default and 15 at most)."""


class CacheTrustError(CloneError):
    """A file of the clone cache could have been written by someone else (owner, mode, symlink)."""


class ProcessWideOperationError(GilcloneError, RuntimeError):
    """A task in a clone tried something that acts on the whole process (which the host and
    every other clone share): ending it, forking it, replacing it, taking its signals, or
    creating a subinterpreter. Raised in the task; the process carries on."""


class ProcessWideSignalError(ProcessWideOperationError, ValueError):
    """Signal handling is the host's: like CPython outside the main thread or main
    interpreter, it is also a ValueError, which code that tolerates that case catches."""
