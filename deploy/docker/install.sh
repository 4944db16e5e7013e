#!/bin/sh
# The image's install step (deploy/docker/Dockerfile), kept in a script so that
# tests/test_deploy_docker.py runs the same steps in a fresh virtual environment.
#
#   install.sh SRC VENV
#
# creates the virtual environment VENV and installs the source tree SRC into it, with the
# extras in DASK_DATALOG_EXTRAS (comma-separated; default gpu, empty for none), then checks
# that the commands the pods run exist. PYTHON (default python3) makes the environment.
set -eu
SRC=$1
VENV=$2
EXTRAS=${DASK_DATALOG_EXTRAS-gpu}

"${PYTHON:-python3}" -m venv "$VENV"
"$VENV/bin/pip" install --quiet --upgrade pip
"$VENV/bin/pip" install --quiet "$SRC${EXTRAS:+[$EXTRAS]}"

# A missing command fails the build here, not every pod at start-up.
"$VENV/bin/dask-datalog" run --help >/dev/null
"$VENV/bin/dask" scheduler --help >/dev/null
case ",$EXTRAS," in
  *,gpu,*) "$VENV/bin/dask" cuda worker --help >/dev/null ;;
esac
