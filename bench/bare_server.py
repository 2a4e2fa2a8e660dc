"""The ceiling for bench/ingest.py: a bare aiohttp server that only checks the webhook signature.

Same route, same body-size bound and the same `adapters.webhook.signing.verify` as the real
adapter, then a 200 with a tiny JSON body. No schema validation, no journal, no turns: it is what
one Python process with aiohttp can do on this machine, and the gateway is reported as a fraction
of it.

    python bench/bare_server.py --secret-env BENCH_BOT_SECRET [--port 0]

Prints `bare server ready on port N` to stderr once listening; stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiohttp import web

from adapters.webhook.signing import SignatureError, verify

MAX_BODY = 65536
WINDOW = 300.0


def build_app(secret: bytes) -> web.Application:
    async def handle(request: web.Request) -> web.Response:
        body = await request.content.read(MAX_BODY + 1)
        if len(body) > MAX_BODY:
            return web.json_response({"error": "body too large"}, status=413)
        try:
            verify(secret, request.headers, body, time.time(), WINDOW)
        except SignatureError as exc:
            return web.json_response({"error": "unauthorized", "reason": exc.reason}, status=401)
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/webhooks/webhook/{bot_id}", handle)
    return app


async def serve(port: int, secret: bytes) -> None:
    runner = web.AppRunner(build_app(secret), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"bare server ready on port {runner.addresses[0][1]}", file=sys.stderr, flush=True)
    await stop.wait()
    await runner.cleanup()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--secret-env", required=True, help="environment variable holding the bot secret")
    args = parser.parse_args()
    asyncio.run(serve(args.port, os.environ[args.secret_env].encode("utf-8")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
