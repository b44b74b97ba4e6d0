#!/usr/bin/env python
"""Start the VALL-E X studio: `python launch.py --help` lists every option.

With no subcommand this serves the web UI and the OpenAI-compatible API on one port (models load
lazily on first use, so the page opens at once even with no weights on disk). Subcommands:
`synth` (batch), `record`, `say`, `download`. Same as the `vallex-studio` console script.
"""
import sys

from app.cli import main

if __name__ == "__main__":
    sys.exit(main())
