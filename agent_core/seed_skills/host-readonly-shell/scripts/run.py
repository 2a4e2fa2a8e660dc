"""Run one allow-listed read-only command (arguments: JSON object on stdin) and print its output."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

# The full command line is matched exactly: no arguments from the caller ever reach argv.
ALLOWED: dict[str, list[str]] = {
    "df -h": ["df", "-h"],
    "uptime": ["uptime"],
    "free -m": ["free", "-m"],
    "uname -a": ["uname", "-a"],
    "ss -tlnp": ["ss", "-tlnp"],
    "ps aux --sort=-%cpu": ["ps", "aux", "--sort=-%cpu"],
    "hostname": ["hostname"],
    "date": ["date"],
}
TIMEOUT = 10.0
MAX_LINES = 40
MAX_CHARS = 8000


def run(command: str) -> tuple[int, dict[str, object]]:
    """(exit code of this script, JSON result)."""
    argv = ALLOWED.get(" ".join(command.split()))
    if argv is None:
        return 2, {"error": f"command not allowed: {command!r}", "allowed": sorted(ALLOWED)}
    program = shutil.which(argv[0])
    if program is None:
        return 1, {"error": f"{argv[0]} is not installed on this host", "command": command}
    try:
        done = subprocess.run([program, *argv[1:]], capture_output=True, text=True, timeout=TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        return 1, {"error": f"{command} did not finish within {TIMEOUT:g}s", "command": command}
    lines = (done.stdout or done.stderr).splitlines()[:MAX_LINES]
    return 0, {"command": command, "exit_code": done.returncode, "output": "\n".join(lines)[:MAX_CHARS]}


def main() -> int:
    """Read arguments, print the result."""
    try:
        args = json.loads(sys.stdin.read() or "{}")
        command = str(args["command"])
    except (KeyError, ValueError):
        print(json.dumps({"error": "missing argument: command", "allowed": sorted(ALLOWED)}))
        return 2
    code, result = run(command)
    print(json.dumps(result, ensure_ascii=False))
    return code


if __name__ == "__main__":
    sys.exit(main())
