"""Measuring a command as a child process: wall time, CPU time and its own peak resident memory.

The peak is the child's ``VmHWM`` (high-water mark of its own address space, read by the child
itself at exit), not ``ru_maxrss`` from ``wait4``: Python starts children with vfork / posix_spawn,
and Linux carries the parent's peak over into the child's ``ru_maxrss`` at exec, so a benchmark
process holding a few hundred MB would inflate every stage it runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# run a module as __main__ and write this process's VmHWM (kB) to $MEASURE_PEAK_FILE at exit
_LAUNCH = """
import os, runpy, sys
mod = sys.argv[1]
sys.argv = [mod, *sys.argv[2:]]
try:
    runpy.run_module(mod, run_name="__main__", alter_sys=True)
finally:
    with open("/proc/self/status") as f:
        hwm = [line.split()[1] for line in f if line.startswith("VmHWM:")]
    with open(os.environ["MEASURE_PEAK_FILE"], "w") as f:
        f.write(hwm[0] if hwm else "")
"""


def run_module(module: str, args: list[str], env: dict | None = None, check: bool = True) -> dict:
    """Run ``python -m module args`` as a child: ``wall_s``, ``cpu_s`` (user + system of the child and its
    children, ``wait4``), ``peak_gb`` (the child's own VmHWM; None where /proc is missing), ``returncode``."""
    with tempfile.NamedTemporaryFile(suffix=".peak", delete=False) as f:
        peak_file = f.name
    env = dict(os.environ if env is None else env, MEASURE_PEAK_FILE=peak_file)
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", _LAUNCH, module, *args], env=env)
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    code = os.waitstatus_to_exitcode(status)
    try:
        text = Path(peak_file).read_text().strip()
    finally:
        Path(peak_file).unlink(missing_ok=True)
    if check and code:
        raise SystemExit(f"python -m {module} {' '.join(args)} failed (exit {code})")
    return {"wall_s": wall, "cpu_s": ru.ru_utime + ru.ru_stime, "peak_gb": int(text) / 2**20 if text else None,
            "returncode": code}
