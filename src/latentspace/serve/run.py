"""Start uvicorn on the app: in this process for one worker, or as N worker processes.

uvicorn can only spawn worker processes from an import string, so for N > 1 the settings travel
to the workers as JSON in an environment variable and `app_from_env` rebuilds the app there. The
workers also share a fresh directory for their Prometheus metrics (see serve/metrics.py), removed
when the server stops.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import uvicorn

from latentspace.process_state import environment
from latentspace.serve.app import create_app
from latentspace.serve.metrics import MULTIPROCESS_ENV
from latentspace.serve.settings import ServeSettings

SETTINGS_ENV = "LATENTSPACE_SERVE_SETTINGS"


def app_from_env():
    return create_app(ServeSettings.model_validate_json(os.environ[SETTINGS_ENV]))


def run_server(settings: ServeSettings, log_level: str = "info") -> None:
    common = dict(
        host=settings.host, port=settings.port, log_level=log_level, timeout_graceful_shutdown=10, server_header=False
    )
    if settings.workers == 1:
        uvicorn.run(create_app(settings), **common)
    else:
        # Fresh for every start: files left by an earlier server would be counted again.
        shared_metrics = tempfile.mkdtemp(prefix="latentspace-metrics-")
        try:
            # The workers inherit these; this process gets its own values back when the server stops.
            with environment({SETTINGS_ENV: settings.model_dump_json(), MULTIPROCESS_ENV: shared_metrics}):
                uvicorn.run("latentspace.serve.run:app_from_env", factory=True, workers=settings.workers, **common)
        finally:
            shutil.rmtree(shared_metrics, ignore_errors=True)
