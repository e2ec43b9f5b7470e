"""The `Notification` kind: validated like every manifest (located errors, unknown fields refused, no literal
secret accepted), and its trigger rules (`triggers`, `wants`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from contract.events import from_deployment, from_fleet_log
from contract.models import EventType
from reconciler.desired.loader import load_files
from reconciler.desired.manifests import Desired, NotificationManifest
from reconciler.desired.notification_spec import NotificationSpec, fill
from reconciler.desired.sources import ManifestFile
from reconciler.errors import ManifestErrors
from tests.notify.records import deployment, fleet_log

BIN = Path(sys.executable).parent

HEADER = "apiVersion: deploy/v1\nkind: Notification\nmetadata:\n  name: {name}\nspec:\n"


def notification(spec: str, name: str = "n") -> str:
    return HEADER.format(name=name) + "".join(f"  {line}\n" for line in spec.strip("\n").splitlines())


def load(*documents: str) -> Desired:
    return load_files([ManifestFile("notify.yaml", "---\n".join(documents).encode())])


def errors(*documents: str) -> list[str]:
    with pytest.raises(ManifestErrors) as caught:
        load(*documents)
    return [str(error) for error in caught.value.errors]


def spec_of(text: str) -> NotificationSpec:
    return load(notification(text)).notifications["n"].spec


def test_a_valid_notification_is_loaded_with_its_defaults() -> None:
    desired = load(notification("""
events: ["deployment.failed", "rollback.*"]
minSeverity: warning
groups: ["shop/*"]
webhook:
  urlFrom: {env: HOOK_URL}
  secretFrom: {file: /etc/fleetshift/hook-secret}
  headers: {X-Tenant: acme, X-Api-Key: {env: HOOK_KEY}}
"""), notification("slack: {urlFrom: {env: SLACK_WEBHOOK_URL}}", name="oncall"))
    assert set(desired.notifications) == {"n", "oncall"}
    assert isinstance(desired.notifications["n"], NotificationManifest)
    spec = desired.notifications["n"].spec
    assert spec.provider == "webhook"
    assert spec.retry.attempts == 6 and spec.retry.backoff.total_seconds() == 2
    assert spec.retry.max_backoff.total_seconds() == 300 and spec.timeout.total_seconds() == 10
    assert spec.triggers() == {EventType.DEPLOYMENT_FAILED, EventType.ROLLBACK_STARTED,
                               EventType.ROLLBACK_SUCCEEDED, EventType.ROLLBACK_FAILED}
    assert desired.summary()["notifications"] == 2


def test_the_summary_of_a_repo_without_notifications_is_unchanged() -> None:
    assert "notifications" not in Desired(commit=None).summary()


@pytest.mark.parametrize(
    ("spec", "field", "words"),
    [
        ("slack: {url: https://hooks.slack.com/services/T0/B0/XXXXSECRET}", "spec.slack",
         "`url` would put the Slack webhook URL"),
        ("webhook: {url: 'https://hooks.example/x?token=SECRETVALUE'}", "spec.webhook.url", "use urlFrom"),
        ("webhook: {url: 'https://user:SECRETVALUE@hooks.example/x'}", "spec.webhook.url", "credentials"),
        ("webhook: {url: https://hooks.example/x, secret: SECRETVALUE}", "spec.webhook", "secretFrom"),
        ("webhook: {url: https://hooks.example/x, headers: {Authorization: Bearer SECRETVALUE}}",
         "spec.webhook.headers", "looks like a credential"),
        ("webhook: {url: https://hooks.example/x, headers: {X-Auth-Token: SECRETVALUE}}",
         "spec.webhook.headers", "looks like a credential"),
        ("githubStatus: {repository: o/r, token: SECRETVALUE}", "spec.githubStatus", "tokenFrom"),
        ("gitlabStatus: {project: g/r, token: SECRETVALUE}", "spec.gitlabStatus", "tokenFrom"),
    ],
)
def test_a_literal_secret_is_refused_without_being_repeated(spec: str, field: str, words: str) -> None:
    found = errors(notification(spec))
    assert len(found) == 1, found
    assert f"Notification/n: {field}:" in found[0]
    assert words in found[0].replace("`urlFrom: {env: NAME}`", "use urlFrom").replace("urlFrom:", "use urlFrom")
    assert "SECRETVALUE" not in found[0]
    assert found[0].startswith("notify.yaml:")


def test_errors_name_the_line_and_field_and_suggest_what_was_meant() -> None:
    found = errors(notification("""
events: [deploymnet.failed]
webhook: {urlFrom: {env: HOOK}}
retry: {attempts: 3, maxBakoff: 1s}
"""))
    assert found == [
        "notify.yaml:6:12: Notification/n: spec.events.0: 'deploymnet.failed' matches no event type; did you mean "
        "'deployment.failed'?",
        "notify.yaml:8:24: Notification/n: spec.retry.maxBakoff: unknown field; did you mean `maxBackoff`?",
    ]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("events: []\nwebhook: {urlFrom: {env: H}}", "events is empty"),
        ("groups: [shop]\nwebhook: {urlFrom: {env: H}}", "expected <application>/<deploymentGroup>"),
        ("minSeverity: loud\nwebhook: {urlFrom: {env: H}}", "should be 'info', 'warning'"),
        ("{}", "exactly one of webhook, slack, sns, githubStatus, gitlabStatus (found: none)"),
        ("webhook: {urlFrom: {env: H}}\nslack: {urlFrom: {env: S}}", "(found: webhook, slack)"),
        ("webhook: {url: https://a.example/h, urlFrom: {env: H}}", "exactly one of url or urlFrom"),
        ("webhook: {urlFrom: {env: H, file: /x}}", "exactly one of env"),
        ("webhook: {urlFrom: {file: relative/path}}", "absolute path"),
        ("webhook: {urlFrom: {env: 'NOT A NAME'}}", "environment variable name"),
        ("webhook: {url: ftp://a.example/h}", "http:// or https://"),
        ("webhook: {url: https://a.example/h, headers: {User-Agent: x}}", "set by fleetshift itself"),
        ("webhook: {url: https://a.example/h, headers: {X-Fleetshift-Delivery: x}}", "set by fleetshift itself"),
        ("sns: {topicArn: 'arn:aws:sqs:eu-west-1:123456789012:q'}", "SNS topic ARN"),
        ("sns: {topicArn: 'arn:aws:sns:eu-west-1:123456789012:t', region: us-east-1}", "differs from the topic's"),
        ("githubStatus: {repository: just-a-name, tokenFrom: {env: T}}", "expected owner/repo"),
        ("githubStatus: {repository: o/r, tokenFrom: {env: T}, context: 'x/{grp}'}", "unknown placeholder {grp}"),
        ("githubStatus: {repository: o/r, tokenFrom: {env: T}}\nevents: ['host.*']", "matches none of them"),
        ("gitlabStatus: {project: 'not a project', tokenFrom: {env: T}}", "project path"),
        ("retry: {backoff: 10s, maxBackoff: 1s}\nwebhook: {urlFrom: {env: H}}", "shorter than backoff"),
        ("timeout: 10m\nwebhook: {urlFrom: {env: H}}", "timeout must be between"),
    ],
)
def test_invalid_specs_are_refused_with_a_reason(spec: str, message: str) -> None:
    found = errors(notification(spec))
    assert any(message in error for error in found), found


def test_validate_cli_refuses_a_literal_slack_url_with_exit_1(tmp_path: Path) -> None:
    (tmp_path / "n.yaml").write_text(notification("slack: {url: https://hooks.slack.com/services/T/B/SECRETVALUE}"))
    result = subprocess.run([str(BIN / "reconcile"), "validate", str(tmp_path)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 1
    assert "n.yaml:6:3: Notification/n: spec.slack:" in result.stderr
    assert "SECRETVALUE" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


def test_default_triggers_per_provider() -> None:
    assert spec_of("webhook: {urlFrom: {env: H}}").triggers() == frozenset(EventType)
    assert spec_of("sns: {topicArn: 'arn:aws:sns:eu-west-1:123456789012:t'}").triggers() == frozenset(EventType)
    slack = spec_of("slack: {urlFrom: {env: S}}").triggers()
    assert EventType.DEPLOYMENT_FAILED in slack and EventType.ROLLBACK_FAILED in slack
    assert EventType.HOST_SUCCEEDED not in slack and EventType.BATCH_STARTED not in slack
    status = spec_of("githubStatus: {repository: o/r, tokenFrom: {env: T}}").triggers()
    assert status == {EventType.DEPLOYMENT_STARTED, EventType.BATCH_STARTED, EventType.DEPLOYMENT_BAKING,
                      EventType.DEPLOYMENT_SUCCEEDED, EventType.DEPLOYMENT_FAILED, EventType.DEPLOYMENT_STOPPED,
                      EventType.DEPLOYMENT_SUPERSEDED}
    # "*" on a status provider keeps only what a commit status can show.
    assert spec_of("events: ['*']\ngitlabStatus: {project: g/r, tokenFrom: {env: T}}").triggers() == status


def test_wants_filters_by_type_severity_group_and_creator() -> None:
    events = from_deployment(deployment("d-1", [EventType.DEPLOYMENT_STARTED, EventType.HOST_FAILED,
                                                EventType.DEPLOYMENT_FAILED], group="shop/web"))
    other = from_deployment(deployment("d-2", [EventType.DEPLOYMENT_FAILED], group="blog/web"))
    fleet = from_fleet_log(fleet_log(1, 1))
    warning = spec_of("minSeverity: warning\ngroups: ['shop/*']\nwebhook: {urlFrom: {env: H}}")
    assert [e.type for e in events if warning.wants(e)] == [EventType.HOST_FAILED, EventType.DEPLOYMENT_FAILED]
    assert not any(warning.wants(e) for e in other)
    assert not warning.wants(fleet[0]), "with groups, fleet events are not sent"
    everything = spec_of("webhook: {urlFrom: {env: H}}")
    assert everything.wants(fleet[0])
    status = spec_of("githubStatus: {repository: o/r, tokenFrom: {env: T}}")
    assert [e.type for e in events if status.wants(e)] == [EventType.DEPLOYMENT_STARTED, EventType.DEPLOYMENT_FAILED]
    rollback = from_deployment(deployment("d-3", [EventType.DEPLOYMENT_STARTED], creator="rollback"))
    no_commit = from_deployment(deployment("d-4", [EventType.DEPLOYMENT_STARTED], commit=None))
    assert not status.wants(rollback[0]) and not status.wants(no_commit[0])
    assert everything.wants(rollback[0])


def test_status_context_template_is_filled_from_the_event() -> None:
    event = from_deployment(deployment("d-1", [EventType.DEPLOYMENT_STARTED], group="shop/web"))[0]
    assert fill("fleetshift/{group}", event) == "fleetshift/shop/web"
    assert fill("{application}-{deploymentGroup}@{deploymentId}", event) == "shop-web@d-1"


def test_the_example_notifications_are_valid() -> None:
    from reconciler.desired.loader import load_folder

    desired = load_folder(Path(__file__).resolve().parents[2] / "examples" / "notifications")
    assert {name: m.spec.provider for name, m in desired.notifications.items()} == {
        "oncall-slack": "slack", "audit-webhook": "webhook", "github-status": "githubStatus",
        "gitlab-status": "gitlabStatus", "alerts-sns": "sns"}
