"""`python serve.py`: the OpenAI-compatible server on the default model, at http://127.0.0.1:8000.

Takes the same flags as `jaxserve serve` (e.g. `python serve.py --port 8080 --max-model-len 2048`).
"""

import sys

from jaxserve.cli import main

if __name__ == "__main__":
    sys.exit(main(["serve", *sys.argv[1:]]))
