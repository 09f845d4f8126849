"""Command line of ``pipegate-client`` (skeleton; replaced by the real client)."""

import argparse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pipegate-client")
    parser.parse_args(argv)
    return 0
