"""`python -m sglang.launch_server ...`, run by the engine double."""
import sys

from sglang._double import fake_engine

if __name__ == "__main__":
    sys.exit(fake_engine.main_sglang(sys.argv[1:]))
