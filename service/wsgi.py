"""The WSGI entry point for gunicorn: `gunicorn -c deploy/gunicorn.conf.py service.wsgi:app`.

A bad setting ends the process with one line on stderr and exit code 3, which gunicorn treats as "worker
failed to boot" and stops instead of respawning (preloaded in the master, the master itself exits 3).
"""

import sys

from service.app import create_app
from service.config import ConfigError

try:
    app = create_app()
except ConfigError as err:
    print(f"gradsvc: configuration error: {err}", file=sys.stderr, flush=True)
    sys.exit(3)
