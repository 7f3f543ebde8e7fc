"""python3 -m voxnp.server --model DIR [--port 8000] ...: the same as `voxnp serve`."""
import sys

from ..errors import VoxnpError
from . import main


def run() -> int:
    import fire

    try:
        fire.Fire(main, name="voxnp serve")
    except VoxnpError as e:
        print(f"voxnp serve: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(run())
