"""Entry point: `python run.py scratch|finetune|info|evaluate|predict ...` (see README.md)."""

import sys

from inat_keras.cli import main

if __name__ == "__main__":
    sys.exit(main())
