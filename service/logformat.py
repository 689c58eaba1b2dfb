"""The JSON log line shared by the app's loggers and gunicorn's own (deploy/gunicorn.conf.py copies it).

Each line: time (ISO 8601, UTC, with its zone), level, logger, message, pid (the gunicorn worker or master)
and request_id ("-" outside a request), plus any `extra` fields such as the access line's.
"""

from __future__ import annotations

JSON_FORMATTER = {
    "()": "pythonjsonlogger.json.JsonFormatter",
    "fmt": "%(levelname)s %(name)s %(message)s %(process)d",
    "rename_fields": {"levelname": "level", "name": "logger", "process": "pid"},
    "timestamp": "time",  # datetime.isoformat() in UTC: 2026-11-26T10:00:00.123456+00:00
}
