#!/bin/sh
# Entrypoint of mlharbor images: maps each platform's contract onto `mlharbor serve`.
#  - SageMaker runs the image as `IMAGE serve`; Kubernetes, Cloud Run, Vertex AI and Azure ML run
#    it with no arguments: both serve. Anything else is run as a command (`IMAGE mlharbor --help`).
#  - Port: Vertex AI's AIP_HTTP_PORT, else Cloud Run / Knative's PORT, else 8080.
#  - A baked image holds a one-version registry in /opt/mlharbor/model. SQLite needs a writable
#    folder, so its database is copied to MLHARBOR_HOME; the files are read in place. Set
#    MLHARBOR_DATABASE_URL (and MLHARBOR_ARTIFACT_URI) to serve from a shared registry instead.
#  - MLHARBOR_SERVER__WORKERS=N serves with N processes on the one port (default 1: on
#    Kubernetes, scale with replicas instead).
set -eu
if [ "$#" -eq 0 ] || [ "$1" = "serve" ]; then
  [ "$#" -gt 0 ] && shift
  port="${AIP_HTTP_PORT:-${PORT:-${MLHARBOR_SERVER__PORT:-8080}}}"
  mkdir -p "$MLHARBOR_HOME"
  if [ -z "${MLHARBOR_DATABASE_URL:-}" ] && [ -f /opt/mlharbor/model/mlharbor.db ]; then
    cp /opt/mlharbor/model/mlharbor.db "$MLHARBOR_HOME/baked.db"
    export MLHARBOR_DATABASE_URL="sqlite:///$MLHARBOR_HOME/baked.db"
    export MLHARBOR_ARTIFACT_URI="${MLHARBOR_ARTIFACT_URI:-/opt/mlharbor/model/artifacts}"
  fi
  exec mlharbor serve "$MLHARBOR_MODEL_REF" --host "${MLHARBOR_SERVER__HOST:-0.0.0.0}" \
    --port "$port" "$@"
fi
exec "$@"
