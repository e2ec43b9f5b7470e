#!/bin/sh
# Downloads the plan reviewed on the merge request that produced this commit (the `plan.json` artifact of
# the fleetshift-plan job in the merge request's latest pipeline) to FILE.
#
# Fails, rather than applying something nobody reviewed, when the commit came from no merge request or that
# pipeline saved no plan. Needs curl and jq, and FLEETSHIFT_GITLAB_TOKEN (a token with the `api` scope).
set -eu

out=${1:?usage: fleetshift-fetch-plan.sh FILE}
project="${CI_API_V4_URL}/projects/${CI_PROJECT_ID}"

api() {
  curl --silent --show-error --fail --header "PRIVATE-TOKEN: ${FLEETSHIFT_GITLAB_TOKEN}" "$@"
}

iid=$(api "${project}/repository/commits/${CI_COMMIT_SHA}/merge_requests" \
  | jq -r '[.[] | select(.state == "merged")][0].iid // empty')
if [ -z "$iid" ]; then
  echo "fleetshift: ${CI_COMMIT_SHA} came from no merged merge request; FLEETSHIFT_REQUIRE_PLAN wants a reviewed plan" >&2
  exit 1
fi
pipeline=$(api "${project}/merge_requests/${iid}/pipelines?per_page=1" | jq -r '.[0].id // empty')
job=$(api "${project}/pipelines/${pipeline}/jobs?per_page=100" \
  | jq -r '[.[] | select(.name == "fleetshift-plan" and .status == "success")][0].id // empty')
if [ -z "$job" ]; then
  echo "fleetshift: no successful fleetshift-plan job in pipeline ${pipeline} of !${iid}" >&2
  exit 1
fi
api --output "$out" "${project}/jobs/${job}/artifacts/plan.json"
echo "fleetshift: applying the plan reviewed on !${iid} (job ${job})"
