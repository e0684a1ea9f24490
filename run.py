"""Entry point: `python run.py scratch|finetune|info|evaluate|predict|sweep|sweep-report|bench ...` (see README.md)."""

import sys

from inat_keras.__main__ import main

if __name__ == "__main__":
    sys.exit(main())
