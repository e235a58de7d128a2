"""`python serve.py`: the default model, ready to use.

Until the HTTP server lands (issue 3) this runs a short generation demo on the default model, with the same
engine flags as `jaxserve generate` (e.g. `python serve.py --dtype bfloat16 --prompt "Hello"`).
"""

import sys

from jaxserve.cli import main

if __name__ == "__main__":
    argv = sys.argv[1:]
    if not any(a == "--prompt" or a.startswith("--prompt=") for a in argv):
        argv += ["--prompt", "What is the capital of France?", "--prompt", "Write a haiku about the sea."]
    sys.exit(main(["generate", "--chat", *argv]))
