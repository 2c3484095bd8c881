"""Test-wide environment: a private PREFECT_HOME and MLPIPE_HOME, no analytics, no outside
servers.

Set before anything imports Prefect, so the ephemeral server of this test process uses a
temporary database and no developer's ~/.prefect is touched.
"""

import os
import tempfile

_home = tempfile.mkdtemp(prefix="mlpipe-prefect-home-")
os.environ["PREFECT_HOME"] = _home
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "120"
# no developer's `mlpipe up` stack: each test that wants one starts its own
os.environ["MLPIPE_HOME"] = tempfile.mkdtemp(prefix="mlpipe-home-")
for name in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI"):
    os.environ.pop(name, None)
