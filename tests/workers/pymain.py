"""A module with a main() for the `module = "pkg.mod:func"` form."""

import os


def main() -> int:
    print(f"main called in {os.environ['SUPERVISOR_WORKER']}", flush=True)
    return 5


if __name__ == "__main__":
    print("run as a script", flush=True)
