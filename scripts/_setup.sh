# Sourced by scripts/run and scripts/test: make .venv exist and hold the project, then activate it.
# Re-installs only when pyproject.toml changed since the last install, so repeated runs are quick.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    echo "creating .venv with $($PYTHON --version)" >&2
    "$PYTHON" -m venv .venv
fi
# The extras are the caller's: scripts/test asks for the test set (dev: pytest, hypothesis and every
# optional feature the tests exercise; dask: tests/test_dask.py runs a small Dask cluster),
# scripts/run only the demo's (cli: rich), so a newcomer's first run installs in seconds.
EXTRAS="${SETUP_EXTRAS:?the sourcing script sets SETUP_EXTRAS}${SHMPOOL_EXTRAS:+,$SHMPOOL_EXTRAS}"
# One stamp per extras set, so `SHMPOOL_EXTRAS=bench` installs its peers once, not on every switch.
STAMP=".venv/.shmpool-installed-${EXTRAS//,/-}"
# The compiled core (shmpool/_core) is built by the install too, so its sources count as changes.
core_changed() {
    local f
    for f in setup.py shmpool/_core/*.pyx shmpool/_core/*.pxd shmpool/_core/*.h; do
        [ "$f" -nt "$STAMP" ] && return 0
    done
    compgen -G "shmpool/_core/_sync.*.so" >/dev/null || return 0  # a fresh checkout: never built here
    return 1
}
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ] || core_changed; then
    # The install log is shown only when something fails, so a passing run stays readable.
    if ! { .venv/bin/python -m pip install --upgrade pip \
           && .venv/bin/python -m pip install -e ".[$EXTRAS]"; } \
           >.venv/install.log 2>&1; then
        # A machine without a compiler gets setup.py's one-paragraph answer, not the whole log.
        if grep -q "compiled core (shmpool._core) needs" .venv/install.log; then
            grep -h -A1 "^error: .*\|compiled core (shmpool._core) needs" .venv/install.log | grep -v "^--" | head -3 >&2
            echo "(full log in .venv/install.log)" >&2
        else
            cat .venv/install.log >&2
            echo "installing the project into .venv failed (log above, also in .venv/install.log)" >&2
        fi
        exit 1
    fi
    touch "$STAMP"
fi
# Bytecode of the project's own modules, written here because nothing else writes it: an editable
# install compiles nothing (pip compiles only what it copies into site-packages), and where
# PYTHONDONTWRITEBYTECODE is set (many CI images; this machine's sessions) no process writes it
# either. Then every Python process a test run starts (coordinators, workers, CLI calls, spawned
# clients: hundreds) compiled shmpool's ~100 modules again: ~85 ms of CPU of a ~340 ms start,
# measured on `python -c 'import shmpool.workers.worker'`. compileall writes the files whatever
# that variable says; when they are current it only compares timestamps (~30 ms). A file that
# does not compile is not this step's to report (-qq): its import fails where it is used.
.venv/bin/python -m compileall -qq shmpool coordinator workers tests || true
# shellcheck disable=SC1091
source .venv/bin/activate
