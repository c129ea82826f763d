"""`python -m sglang.launch_server ...`, run by the engine double."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.realpath(__file__)), "..", ".."))
import fake_engine

if __name__ == "__main__":
    sys.exit(fake_engine.main_sglang(sys.argv[1:]))
