"""python3 -m voxnp.server --model DIR [--port 8000] ...: the same as `voxnp serve`."""
import sys

from ..errors import VoxnpError
from . import main

TEXT_FLAGS = ("--api-key", "--api_key", "--served-name", "--served_name")  # never numbers


def as_text(argv: list[str]) -> list[str]:
    """Quote the values of TEXT_FLAGS, so fire keeps a key like 0123 as it was typed."""
    out = list(argv)
    for i, arg in enumerate(out):
        flag, eq, value = arg.partition("=")
        if flag in TEXT_FLAGS and eq:
            out[i] = f"{flag}={value!r}"
        elif arg in TEXT_FLAGS and i + 1 < len(out):
            out[i + 1] = repr(out[i + 1])
    return out


def run() -> int:
    import fire

    try:
        fire.Fire(main, command=as_text(sys.argv[1:]), name="voxnp.server")
    except VoxnpError as e:
        print(f"voxnp serve: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(run())
