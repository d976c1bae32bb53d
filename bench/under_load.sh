#!/usr/bin/env bash
# The tests whose outcome once hung on timing, COUNT times each, with every core kept busy by
# stress-ng: a check that fails here is a bug to fix, not a run to repeat (docs/BENCHMARKS.md,
# "Test suite"). Prints pytest's summary: how many of the repeats passed and failed.
#
#   bash bench/under_load.sh                  # every group below, 10 times each
#   COUNT=3 bash bench/under_load.sh kills    # one group
#   STRESS_WORKERS=0 bash bench/under_load.sh # no stress-ng: other work keeps the cores busy
#
# Needs .venv from `make cpu` (or `make test`), stress-ng on the PATH, and pytest-repeat, which
# this installs into .venv: the suite itself never repeats a test.
set -euo pipefail
cd "$(dirname "$0")/.."
COUNT=${COUNT:-10}
PY=${PY:-.venv/bin/python}

declare -A GROUPS_=(
  # Cancel, abandon and close while the engine generates (ignore_eos: it cannot finish first).
  [engine]="tests/backends/test_vllm_engine.py::test_abandoned_stream_aborts_the_request
    tests/backends/test_vllm_engine.py::test_cancelled_stream_aborts_the_request
    tests/backends/test_vllm_engine.py::test_cancelled_complete_is_cancelled"
  # Closes the module's engine for good: one session (one engine start) per repeat.
  [close]="tests/backends/test_vllm_engine.py::test_close_ends_requests_in_flight"
  # Jobs killed midway and rerun: every row once, the kill landing where the test says. The
  # label job's once counted 60 judge calls for 70.
  [label]="tests/batch_jobs/test_label.py::test_killed_sample_job_reruns_to_every_sampled_prompt_exactly_once"
  [kills]="tests/batch_jobs/test_s3.py::test_killed_job_reruns_to_every_row_exactly_once
    tests/batch_jobs/test_route_edge_inputs.py::test_killed_local_job_with_empty_and_mixed_schema_files_reruns_exactly_once
    tests/batch_jobs/test_route_under_faults.py"
  [generate]="tests/batch_jobs/test_generate.py::test_killed_generate_job_resumes_without_asking_again"
  [two_nodes]="tests/test_two_nodes.py::test_route_job_loses_a_node_midway_and_writes_every_row_once"
  # The endpoint: a replica killed while it generates, the forced 504, prompts kept out of logs.
  [serve]="tests/serve_app/test_failures.py::test_a_dead_weak_replica_gives_clean_errors_and_health_reports_it
    tests/serve_app/test_failures.py::test_an_upstream_timeout_is_a_504
    tests/serve_app/test_route_endpoint.py::test_prompts_are_not_logged
    tests/serve_app/test_openai_contract.py"
  # Time bounds made generous, and the S3 fault layer's holds and delays.
  [timing]="tests/backends/test_openai_api.py tests/test_s3_faults.py"
)

"$PY" -m pip install -q pytest-repeat
# Ray starts its workers at nice 15: beside CPU hogs at nice 0 they get next to nothing, and
# nothing starts within any wait (docs/BENCHMARKS.md). Here they meet the load on equal terms.
export RAY_worker_niceness=${RAY_worker_niceness:-0}
# STRESS_WORKERS=0 when the load is other work already (`make test` beside this script).
STRESS_WORKERS=${STRESS_WORKERS:-$(nproc)}
if [ "$STRESS_WORKERS" -gt 0 ]; then
  command -v stress-ng >/dev/null || { echo "stress-ng is not installed" >&2; exit 1; }
  stress-ng --cpu "$STRESS_WORKERS" --timeout 0 --quiet &
  STRESS=$!
  trap 'kill $STRESS' EXIT
fi

selected=("$@")
[ ${#selected[@]} -gt 0 ] || selected=(engine close label kills generate two_nodes serve timing)
status=0
for group in "${selected[@]}"; do
  echo "== $group: $COUNT times each, $STRESS_WORKERS stress-ng workers beside it, $(date -u +%T) UTC"
  if [ "$group" = close ]; then
    for _ in $(seq "$COUNT"); do
      # shellcheck disable=SC2086
      CI=true "$PY" -m pytest -q -p no:cacheprovider ${GROUPS_[$group]} || status=1
    done
    continue
  fi
  # Each test repeated in a row; a module's engine, cluster or S3 server is started once.
  # (`--repeat-scope module` trips pytest's fixture teardown on the kill tests.)
  # shellcheck disable=SC2086
  CI=true "$PY" -m pytest -q -p no:cacheprovider -p repeat --count "$COUNT" \
    ${GROUPS_[$group]} || status=1
done
exit $status
