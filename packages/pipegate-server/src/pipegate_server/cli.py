"""Command line of ``pipegate-server`` (skeleton; replaced by the real server)."""

import argparse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pipegate-server")
    parser.parse_args(argv)
    return 0
