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
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
    # The install log is shown only when something fails, so a passing run stays readable.
    if ! { .venv/bin/python -m pip install --upgrade pip \
           && .venv/bin/python -m pip install -e ".[$EXTRAS]"; } \
           >.venv/install.log 2>&1; then
        cat .venv/install.log >&2
        echo "installing the project into .venv failed (log above, also in .venv/install.log)" >&2
        exit 1
    fi
    touch "$STAMP"
fi
# shellcheck disable=SC1091
source .venv/bin/activate
