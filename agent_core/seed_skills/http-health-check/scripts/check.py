"""Check HTTP(S) endpoints: status, latency, TLS days to expiry (arguments: JSON object on stdin)."""

from __future__ import annotations

import json
import socket
import ssl
import sys
import time
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

MAX_ENDPOINTS = 20


def tls_days_left(host: str, port: int, timeout: float) -> float:
    """Days until the server certificate's notAfter (verified against the system trust store)."""
    context = ssl.create_default_context()
    with (
        socket.create_connection((host, port), timeout=timeout) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        cert = tls.getpeercert()
    not_after = str(cert["notAfter"]) if cert else ""
    return (ssl.cert_time_to_seconds(not_after) - time.time()) / 86400


def _reason(exc: BaseException) -> str:
    """A short, human-readable cause of a failed request."""
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        exc = exc.reason if isinstance(exc.reason, BaseException) else exc
    if isinstance(exc, socket.gaierror):
        return f"DNS lookup failed ({exc.strerror})"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate invalid ({exc.verify_message})"
    return str(exc) or type(exc).__name__


def check(url: str, timeout: float) -> dict[str, Any]:
    """One result row; never raises."""
    row: dict[str, Any] = {"url": url, "ok": False, "status": None, "latency_ms": None, "tls_days_left": None}
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return {**row, "error": "not an http(s) URL"}
    started = time.monotonic()
    try:
        request = urllib.request.Request(url, method="GET", headers={"User-Agent": "switchboard-health/1.0"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            row["status"] = response.status
    except urllib.error.HTTPError as exc:
        row["status"] = exc.code
    except (OSError, ValueError) as exc:
        return {**row, "error": _reason(exc)}
    row["latency_ms"] = round((time.monotonic() - started) * 1000, 1)
    row["ok"] = 200 <= row["status"] < 400
    row["error"] = None if row["ok"] else f"HTTP {row['status']}"
    if parts.scheme == "https":
        try:
            row["tls_days_left"] = int(tls_days_left(parts.hostname, parts.port or 443, timeout))
        except (OSError, ValueError) as exc:
            row["error"] = f"TLS check failed: {_reason(exc)}"
    return row


def main() -> int:
    """Read arguments, print one row per endpoint."""
    try:
        args = json.loads(sys.stdin.read() or "{}")
        endpoints = args["endpoints"]
        if not isinstance(endpoints, list) or not endpoints or len(endpoints) > MAX_ENDPOINTS:
            raise ValueError(f"endpoints: give 1 to {MAX_ENDPOINTS} URLs as a list")
        timeout = float(args.get("timeout", 10))
    except KeyError:
        print(json.dumps({"error": "missing argument: endpoints"}))
        return 1
    except ValueError as exc:
        print(json.dumps({"error": str(exc)}))
        return 1
    results = [check(str(url), timeout) for url in endpoints]
    print(json.dumps({"results": results, "all_ok": all(r["ok"] for r in results)}, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
