#!/usr/bin/env bash
# BeforeInstall: prepare folders the service needs outside the installed files.
set -euo pipefail
source "$(dirname "$0")/common.sh"
mkdir -p "$HELLO_RUN"
log "deploying $DEPLOYMENT_ID (${BUNDLE_COMMIT:-no commit}) of $APPLICATION_NAME/$DEPLOYMENT_GROUP_NAME"
