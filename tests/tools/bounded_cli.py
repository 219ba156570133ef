"""Run the `met` CLI on one input under a memory and a CPU-time bound (for tests/test_bounds.py).

    python tests/tools/bounded_cli.py MEM_MIB SECONDS -- ARGS...

Every met_core module is imported first; then the address space is capped at what the process maps by
then plus MEM_MIB (RLIMIT_AS), and the CPU time it may still use at SECONDS (RLIMIT_CPU: SIGXCPU, then
SIGKILL a few seconds later). So the bounds apply to the work one input causes, not to importing torch, and
they hold on a busy machine: CPU time is what the process used, not how long it waited for a core. A
wall-clock alarm at WALL_FACTOR x SECONDS stays as a safety net against true hangs only (a process that
waits on a socket or a lock uses no CPU). Exit code 3 means a bound was hit.
"""

from __future__ import annotations

import importlib
import math
import pkgutil
import resource
import signal
import sys

import met_core

WALL_FACTOR = 20  # the wall-clock safety net, in multiples of the CPU-time bound


def mapped_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    mem_mib, seconds = int(sys.argv[1]), int(sys.argv[2])
    args = sys.argv[sys.argv.index("--") + 1 :]
    for m in pkgutil.walk_packages(met_core.__path__, "met_core."):
        if m.name != "met_core.__main__" and not m.name.startswith("met_core.app"):  # __main__ runs the CLI on import
            importlib.import_module(m.name)
    import safetensors.torch  # noqa: F401  (imported lazily by the readers)
    import torch

    torch.zeros(1) @ torch.zeros(1)  # start the thread pool before the cap
    limit = mapped_bytes() + mem_mib * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    cpu = math.ceil(cpu_seconds()) + seconds  # RLIMIT_CPU counts from the process start, in whole seconds
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 5))

    def out_of_cpu(*_: object) -> None:
        print(f"bounded_cli: used more than {seconds} s of CPU time", file=sys.stderr)
        raise SystemExit(3)

    def hung(*_: object) -> None:
        print(f"bounded_cli: still waiting after {WALL_FACTOR * seconds} s of wall-clock time", file=sys.stderr)
        raise SystemExit(3)

    signal.signal(signal.SIGXCPU, out_of_cpu)
    signal.signal(signal.SIGALRM, hung)
    signal.alarm(WALL_FACTOR * seconds)
    from met_core.cli import main as cli_main

    return cli_main(args)


if __name__ == "__main__":
    sys.exit(main())
