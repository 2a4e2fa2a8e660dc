"""`switchboard` command line. Heavy modules are imported inside commands so `--help` is instant."""

from __future__ import annotations

import argparse
import asyncio
import sys
from importlib.metadata import PackageNotFoundError, version

from gateway import skills_cli


def _version() -> str:
    try:
        return version("switchboard")
    except PackageNotFoundError:  # running from a source tree without install
        return "0+unknown"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="switchboard", description="Self-improving LLM agent gateway for IM.")
    parser.add_argument("--version", action="version", version=f"switchboard {_version()}")
    config_help = "YAML config file (default: $SWITCHBOARD_CONFIG or ./switchboard.yaml)"
    parser.add_argument("--config", help=config_help)
    # Accepted after the subcommand too (`switchboard serve --config x.yaml`), as people type it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS, help=config_help)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("serve", parents=[common], help="run the gateway service (HTTP webhooks, adapters, workers)")
    sub.add_parser("chat", parents=[common], help="chat with the agent in this terminal through the full pipeline")
    doctor = sub.add_parser("doctor", parents=[common], help="check configuration, storage, LLM and adapters")
    doctor.add_argument("--no-llm-call", action="store_true", help="skip the 1-token LLM call")
    config = sub.add_parser("config", parents=[common], help="configuration helpers")
    config_sub = config.add_subparsers(dest="config_command", metavar="SUBCOMMAND")
    config_sub.add_parser("schema", help="print the JSON Schema of the config file")
    skills_cli.add_parser(sub, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `switchboard` console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    from gateway.errors import ConfigError, GatewayError

    try:
        if args.command == "serve":
            from gateway.run import serve

            return asyncio.run(serve(args.config))
        if args.command == "chat":
            from gateway.run import chat

            return asyncio.run(chat(args.config))
        if args.command == "doctor":
            from gateway.doctor import run_doctor

            return asyncio.run(run_doctor(args.config, llm_call=not args.no_llm_call))
        if args.command == "config":
            if args.config_command != "schema":
                parser.parse_args(["config", "--help"])
            from gateway.run import print_schema

            return print_schema()
        if args.command == "skills":
            return skills_cli.run(args, parser)
    except ConfigError as exc:
        print(f"switchboard: configuration error: {exc}", file=sys.stderr)
        return 2
    except GatewayError as exc:
        print(f"switchboard: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0
