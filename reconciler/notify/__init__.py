"""Notifications: the event stream delivered to webhooks, Slack, SNS and Git forges' commit statuses.

Where it sits: beside the passes, never inside one. After each pass `Notifier.on_pass` (`deliver.py`) hands
the records as they are now to one background worker per `Notification` manifest, which works out the events
that notification has not sent yet (`feed.py`, filtered by its triggers in
`reconciler.desired.notification_spec`), sends them in stream order through its provider (`webhook.py`,
`slack.py`, `sns.py`, `github.py`, `gitlab.py`, over `http.py`), and records what it sent in a cursor document
in the store (`cursor.py`, `events/notifications/<name>.json`). A slow or failing provider therefore never
delays a pass; what is left goes out later, or after a restart, from the cursor. `health.py` reads the cursors
for `reconcile status`. docs/notifications.md is the user's side of all this.

Layering: with traffic, gates and fleet, under the shell and over the core (pyproject's import-linter
contract): the shell and the CLI start it, it never imports them.
"""
