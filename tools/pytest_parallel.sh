#!/usr/bin/env bash
# The parallel part of `make test`: the suite on two pytest-xdist workers. A worker that dies mid-test (a native
# crash: tests/conftest.py prints its signal and its Python stacks) fails the test it was running; when the only
# failures are such crashes, those tests run once more, alone, in a fresh process, and their verdict counts. Any
# other failure or error fails the run as it is. Usage: tools/pytest_parallel.sh PYTHON [PYTEST ARGS...]
set -uo pipefail
python=$1
shift
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# core dumps on for the workers only: a worker that dies of a signal leaves a core file, from which tests/conftest.py
# prints gdb's backtrace of the thread that crashed (the Python stacks alone do not say which library it was in)
(ulimit -c unlimited 2>/dev/null; exec "$python" -m pytest -q -n 2 "$@") 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
if [ "$rc" -ne 0 ] && ! grep -q "^ERROR " "$log"; then
  crashed=$(grep -oP "worker '\w+' crashed while running '\K[^']+" "$log" | sort -u)
  failed=$(grep -oP "^FAILED \K\S+" "$log" | sort -u)
  if [ -n "$crashed" ] && [ "$crashed" = "$failed" ]; then
    echo "== a pytest-xdist worker crashed (see [conftest] above); its tests once more, alone: $(echo $crashed)"
    # shellcheck disable=SC2086
    "$python" -m pytest -q -p no:cacheprovider $crashed
    rc=$?
  fi
fi
exit "$rc"
