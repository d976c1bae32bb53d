"""Starting Ray on a machine busy enough that Ray's own start-up limits run out.

A Ray node gives its raylet 30 s to register with the GCS and then gives up: a limit written
into Ray's code (`raylet_start_wait_time_s` in ray/_private/node.py), not a setting, though its
message names one. Two test workers each starting Ray, Serve and a vLLM engine on two cores
have run past it. Tests start such a node again, and only after that give-up: any other failure
to start is reported as it is.

Serve's limit is a setting (`RAY_TEST_ENV`): it gives a new proxy 5 s to report ready and
kills it after that, so on such a machine the app never came up. So is the dashboard's: a head
node gives it 60 s to publish its address, and beside a second test run a dashboard that had not
yet opened its log by then failed `ray start --head`. The tests wait for what they need with
timeouts of their own.

Ray keeps one idle worker process per CPU and ends the others after a second idle; the suite
runs one short job after another on the same cluster, and each worker started again costs a
Python start and its imports (measured in docs/BENCHMARKS.md, "Issue 25, continued"). Its
idle workers wait a minute.

Ray runs its workers at nice 15, so anything at the default priority comes first: beside two
CPU hogs at nice 0 Serve's replicas and the vLLM engine got next to nothing and nothing came
up. The suite keeps Ray's default, as a deployment has it (at nice 0 a quiet run was slower:
docs/BENCHMARKS.md, "Start-up limits"); a load that should meet Ray's workers on equal terms
sets `RAY_worker_niceness=0` (bench/under_load.sh).
"""

from __future__ import annotations

import contextlib

import psutil

GAVE_UP = "The current node timed out during startup"
ATTEMPTS = 3
RAY_TEST_ENV = {
    "RAY_DASHBOARD_STARTUP_TIMEOUT_S": "300",
    "RAY_idle_worker_killing_time_threshold_ms": "60000",
    "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "60",
    "RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S": "30",
}


def gave_up(text: str) -> bool:
    """Whether Ray's output or error says the node ran out of its registration wait."""
    return GAVE_UP in text


def kill(processes: list[psutil.Process]) -> None:
    """SIGKILL them all at once, then reap."""
    for proc in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(processes, timeout=10)
