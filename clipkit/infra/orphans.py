"""Child processes that end with their parent: the decode workers of a command killed with
SIGKILL (or by the out-of-memory killer) lived on, blocked writing to a pipe nobody reads
(parent pid 1, about 70 MB each; twelve piled up in half an hour of interrupted runs).
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent() -> None:
    """Have the kernel SIGKILL this process when the parent that started it ends (Linux; a
    no-op elsewhere). Call it first thing in a child; a worker holds nothing to save.

    The kernel ties the signal to the parent *thread* that forked the child: workers are
    started from the thread that runs the command, which lives as long as the command.
    """
    if not sys.platform.startswith("linux"):
        return
    parent = multiprocessing.parent_process()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
            return  # refused (a sandbox): the worker still ends with its pipe, as before
    except (OSError, AttributeError):
        return
    if parent is not None and os.getppid() != parent.pid:  # it died before we asked
        os._exit(1)
