"""``pipegate-demo`` (skeleton)."""


def main() -> int:
    return 0
