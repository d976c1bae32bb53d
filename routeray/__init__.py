"""The `routeray` command line."""

import os
from pathlib import Path

# Where routeray keeps what it can rebuild: embedding caches, the demo's tiny model.
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "routeray"
