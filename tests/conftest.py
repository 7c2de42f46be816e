import os
import signal
import sys

# tests/support is importable as `support` from every test module.
sys.path.insert(0, os.path.dirname(__file__))

# A command started in the background by a non-interactive shell (`make test &`, a CI
# runner's job) begins with SIGINT ignored, and an ignored signal stays ignored across
# exec: the children that the Ctrl-C tests send SIGINT would never see it. Python's own
# handler here is reset to the default on exec, so children start as from a terminal.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
