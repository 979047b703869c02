"""Progress lines that reach the person running the kit, wherever the code runs.

A line is printed (a notebook cell shows it in its output). In a notebook kernel (ipykernel on Linux and macOS,
which redirects the process's own stdout and stderr into the cells), the line is also written to the console the
kernel was started from: `papermill in.ipynb out.ipynb` shows the kit's progress (stages started and done with
their times, training steps) as it happens, without `--log-output`, and so does the terminal of `jupyter lab`.
"""

from __future__ import annotations

import os
import sys


def say(message: str) -> None:
    """One progress line, flushed at once, to the output and (in a kernel) to the console that started it."""
    print(message, flush=True)
    console = getattr(sys.stderr, "_original_stdstream_copy", None)  # ipykernel's copy of the kernel's own stderr
    if isinstance(console, int):
        try:
            os.write(console, f"{message}\n".encode())
        except OSError:  # the console went away; the cell still has the line
            pass
