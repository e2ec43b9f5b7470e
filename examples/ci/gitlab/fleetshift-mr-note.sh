#!/bin/sh
# Posts FILE as the merge request's fleetshift plan note, or updates the note already there.
#
# The note is recognised by the hidden marker `reconcile plan --format markdown` puts on its first line, so a
# merge request keeps one plan note however many times it is pushed to. Needs curl and jq, and the variables
# GitLab sets in merge request pipelines plus FLEETSHIFT_GITLAB_TOKEN (a token with the `api` scope).
set -eu

file=${1:?usage: fleetshift-mr-note.sh PLAN.md}
marker='<!-- fleetshift:plan -->'
notes="${CI_API_V4_URL}/projects/${CI_PROJECT_ID}/merge_requests/${CI_MERGE_REQUEST_IID}/notes"
headers=$(mktemp)
trap 'rm -f "$headers"' EXIT

api() {
  curl --silent --show-error --fail --header "PRIVATE-TOKEN: ${FLEETSHIFT_GITLAB_TOKEN}" "$@"
}

note_id=""
page=1
while [ -n "$page" ] && [ -z "$note_id" ]; do
  body=$(api --dump-header "$headers" "${notes}?per_page=100&page=${page}&sort=asc&order_by=created_at")
  note_id=$(printf '%s' "$body" | jq -r --arg marker "$marker" \
    '[.[] | select(.system == false and (.body | startswith($marker)))][0].id // empty')
  page=$(tr -d '\r' < "$headers" | awk 'tolower($1) == "x-next-page:" {print $2}')
done

payload=$(jq -Rs '{body: .}' < "$file")
if [ -n "$note_id" ]; then
  api --request PUT --header "Content-Type: application/json" --data "$payload" "${notes}/${note_id}" > /dev/null
  echo "updated the plan note ${note_id}"
else
  api --request POST --header "Content-Type: application/json" --data "$payload" "$notes" > /dev/null
  echo "posted the plan note"
fi
