"""The tiny program that applies limits inside the child, then execs the real command.

Why a shim instead of ``preexec_fn``: ``preexec_fn`` runs Python between fork and exec in a process
that was forked from a multi-threaded gateway (platform SDKs, litellm and the LLM worker start threads);
any lock held by another thread at fork time (logging, malloc, import lock) can deadlock the child,
and CPython documents it as unsafe with threads. ``prlimit(1)`` would work but cannot join a cgroup
or reset signal dispositions. The shim is a fresh interpreter (``python -I -S -c``: no site, no
user env), so it starts clean, costs ~15 ms, and needs nothing beyond the stdlib.

It runs twice per sandboxed run at the namespace levels: outermost (join the pids cgroup, set
rlimits, exec the namespace wrapper) and, inside a new PID namespace, as PID 1 (``init`` mode): a
command running as PID 1 would ignore SIGXCPU/SIGTERM, so the shim forks it, reaps orphans, and
exits with its status.
"""

from __future__ import annotations

import json
import sys
from typing import Any

SHIM_SOURCE = r"""
import json, os, resource, signal, sys
cfg = json.loads(sys.argv[1])
argv = sys.argv[2:]
for sig in (signal.SIGXFSZ, signal.SIGPIPE):
    signal.signal(sig, signal.SIG_DFL)
if cfg.get("cgroup"):
    with open(cfg["cgroup"] + "/cgroup.procs", "w") as f:
        f.write(str(os.getpid()))
extra = 0
if cfg.get("nproc_relative"):
    uid = os.getuid()
    for d in os.listdir("/proc"):
        try:
            st = os.stat("/proc/" + d)
            if d.isdigit() and st.st_uid == uid:
                extra += len(os.listdir("/proc/" + d + "/task"))
        except OSError:
            pass
for name, value in cfg.get("limits", {}).items():
    res = getattr(resource, name)
    soft, hard = value
    if name == "RLIMIT_NPROC":
        soft, hard = soft + extra, hard + extra
    cur_soft, cur_hard = resource.getrlimit(res)
    if cur_hard != resource.RLIM_INFINITY:
        soft, hard = min(soft, cur_hard), min(hard, cur_hard)
    resource.setrlimit(res, (soft, hard))
os.umask(0o077)
if cfg.get("init"):
    child = os.fork()
    if child == 0:
        try:
            os.execv(argv[0], argv)
        except OSError as exc:
            sys.stderr.write("sandbox: cannot exec %s: %s\n" % (argv[0], exc))
            os._exit(127)
    while True:  # reap orphans; when the command exits, exiting tears the PID namespace down
        pid, status = os.wait()
        if pid == child:
            break
    if os.WIFSIGNALED(status):
        os._exit(128 + os.WTERMSIG(status))
    os._exit(os.WEXITSTATUS(status))
try:
    os.execv(argv[0], argv)
except OSError as exc:
    sys.stderr.write("sandbox: cannot exec %s: %s\n" % (argv[0], exc))
    sys.exit(127)
"""


def shim_argv(config: dict[str, Any], command: list[str], python: str | None = None) -> list[str]:
    """argv that runs `command` after the shim applied `config` (cgroup, limits, init)."""
    return [python or sys.executable, "-I", "-S", "-c", SHIM_SOURCE, json.dumps(config), *command]
