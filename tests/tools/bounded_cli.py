"""Run the `met` CLI on one input under a memory and a time bound (for tests/test_bounds.py).

    python tests/tools/bounded_cli.py MEM_MIB SECONDS -- ARGS...

Every met_core module is imported first; then the address space is capped at what the process maps by
then plus MEM_MIB (RLIMIT_AS), and SIGALRM ends it after SECONDS. So the bound applies to the work one
input causes, not to importing torch. Exit code 3 means the time bound was hit.
"""
from __future__ import annotations

import importlib
import pkgutil
import resource
import signal
import sys

import met_core


def mapped_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


def main() -> int:
    mem_mib, seconds = int(sys.argv[1]), int(sys.argv[2])
    args = sys.argv[sys.argv.index("--") + 1:]
    for m in pkgutil.iter_modules(met_core.__path__):
        if m.name != "__main__":  # that one runs the CLI on import
            importlib.import_module(f"met_core.{m.name}")
    import safetensors.torch  # noqa: F401  (imported lazily by the readers)
    import torch
    torch.zeros(1) @ torch.zeros(1)  # start the thread pool before the cap
    limit = mapped_bytes() + mem_mib * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    def timeout(*_: object) -> None:
        print(f"bounded_cli: still working after {seconds} s", file=sys.stderr)
        raise SystemExit(3)

    signal.signal(signal.SIGALRM, timeout)
    signal.alarm(seconds)
    from met_core.cli import main as cli_main
    return cli_main(args)


if __name__ == "__main__":
    sys.exit(main())
