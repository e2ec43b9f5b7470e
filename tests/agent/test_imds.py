"""The agent's identity on EC2 (issue 16): the IMDSv2 client against a local IMDSv2 server (tests/agent/
imds_server.py), off-EC2 failures that come fast and say what they mean, and which settings the instance
metadata fills in. The real `deploy-agent run` processes are in test_imds_agent.py."""

from __future__ import annotations

import http.client
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.daemon.ec2identity import (
    IdentityError,
    Platform,
    apply_metadata,
    metadata_plan,
    platform_from_dmi,
    resolve_identity,
)
from agent.daemon.imds import (
    DEFAULT_ENDPOINT,
    IPV6_ENDPOINT,
    ImdsClient,
    InstanceMetadata,
    MetadataInvalid,
    MetadataUnreachable,
    NotImdsV2,
)
from agent.settings import AgentSettings, SettingsError, default_host_id, load_settings
from tests.agent.imds_server import TOKEN_HEADER, TTL_HEADER, Imds, imds_server


@pytest.fixture
def imds() -> Iterator[Imds]:
    with imds_server() as server:
        yield server


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def blackhole() -> Iterator[str]:
    """An address whose connections never complete: a listening socket whose one-place accept queue is full,
    so the kernel drops further SYNs, as for an unrouted 169.254.169.254 off EC2."""
    with socket.socket() as server, socket.socket() as filler:
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        filler.connect(server.getsockname())
        yield f"http://127.0.0.1:{server.getsockname()[1]}"


@pytest.fixture
def silent() -> Iterator[str]:
    """Connections complete but nothing is ever answered: what a token PUT from a container sees when the
    instance's HttpPutResponseHopLimit is 1 (the answer is dropped on its way back)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        yield f"http://127.0.0.1:{server.getsockname()[1]}"


def settings(tmp_path: Path, yaml: str = "", **environ: str) -> AgentSettings:
    path = tmp_path / "agent.yaml"
    path.write_text(yaml)
    return load_settings(path, environ=environ)


# --------------------------------------------------------------------------------------------------
# The test server keeps IMDSv2's token rules


def test_the_test_server_keeps_the_token_rules(imds: Imds) -> None:
    host, port = imds.url.removeprefix("http://").split(":")

    def call(method: str, path: str, headers: dict[str, str]) -> tuple[int, str]:
        connection = http.client.HTTPConnection(host, int(port), timeout=5)
        try:
            connection.request(method, path, headers=headers)
            response = connection.getresponse()
            return response.status, response.read().decode()
        finally:
            connection.close()

    assert call("PUT", "/latest/api/token", {})[0] == 400  # the TTL header is required
    assert call("PUT", "/latest/api/token", {TTL_HEADER: "0"})[0] == 400
    assert call("GET", "/latest/meta-data/instance-id", {})[0] == 401  # no token
    assert call("GET", "/latest/meta-data/instance-id", {TOKEN_HEADER: "made-up"})[0] == 401
    status, token = call("PUT", "/latest/api/token", {TTL_HEADER: "60"})
    assert status == 200 and token
    assert call("GET", "/latest/meta-data/instance-id", {TOKEN_HEADER: token}) == (200, imds.instance_id)
    imds.tokens[token] = 0  # expired
    assert call("GET", "/latest/meta-data/instance-id", {TOKEN_HEADER: token})[0] == 401


# --------------------------------------------------------------------------------------------------
# The client


def test_reads_id_zone_region_address_and_tags_with_a_token(imds: Imds) -> None:
    metadata = ImdsClient(imds.url).read()
    assert metadata == InstanceMetadata(instance_id="i-0123456789abcdef0", availability_zone="eu-west-1b",
                                        region="eu-west-1", local_ipv4="10.0.1.17",
                                        tags={"app": "hello", "Name": "web a/b", "env": "from-ec2"})
    assert imds.token_requests() == 1 and imds.tokenless_gets() == []


def test_tags_not_enabled_is_no_tags_not_an_error(imds: Imds) -> None:
    imds.tags_enabled = False
    metadata = ImdsClient(imds.url).read()
    assert metadata.tags is None and metadata.availability_zone == "eu-west-1b"


def test_an_ipv6_only_instance_has_no_private_ipv4(imds: Imds) -> None:
    imds.local_ipv4 = None
    assert ImdsClient(imds.url).read().local_ipv4 is None


@pytest.mark.parametrize("status", [403, 404, 405])
def test_an_imdsv1_only_service_is_refused_without_a_tokenless_request(imds: Imds, status: int) -> None:
    imds.v1_only = status
    with pytest.raises(NotImdsV2) as refused:
        ImdsClient(imds.url).read()
    message = str(refused.value)
    assert f"HTTP {status}" in message and "IMDSv1" in message and "never falls back" in message
    assert imds.tokenless_gets() == [] and [method for method, _, _ in imds.requests] == ["PUT"]


def test_an_expired_token_is_replaced_once(imds: Imds) -> None:
    imds.reject_first_token = True
    assert ImdsClient(imds.url).read().instance_id == "i-0123456789abcdef0"
    assert imds.token_requests() == 2


@pytest.mark.parametrize(("field", "value"), [("instance_id", "../../etc"), ("zone", "eu west 1a"),
                                               ("local_ipv4", "not-an-ip")])
def test_values_not_shaped_like_ec2_answers_are_refused(imds: Imds, field: str, value: str) -> None:
    setattr(imds, field, value)
    with pytest.raises(MetadataInvalid, match="not what EC2 answers"):
        ImdsClient(imds.url).read()


def test_nothing_listening_fails_at_once() -> None:
    endpoint = f"http://127.0.0.1:{closed_port()}"
    started = time.monotonic()
    with pytest.raises(MetadataUnreachable) as failed:
        ImdsClient(endpoint).read()
    assert time.monotonic() - started < 1
    assert f"no instance metadata service at {endpoint}" in str(failed.value)
    assert "not an EC2 instance" in str(failed.value)


def test_a_blackhole_fails_within_the_connect_timeout(blackhole: str) -> None:
    started = time.monotonic()
    with pytest.raises(MetadataUnreachable) as failed:
        ImdsClient(blackhole).read()
    assert time.monotonic() - started < 2.5  # one second, not retried
    assert "timed out" in str(failed.value) and "HttpPutResponseHopLimit" in str(failed.value)


def test_a_token_that_never_comes_names_the_hop_limit(silent: str) -> None:
    started = time.monotonic()
    with pytest.raises(MetadataUnreachable) as failed:
        ImdsClient(silent).read()
    assert time.monotonic() - started < 5  # three one-second attempts and small pauses
    message = str(failed.value)
    assert "sent no session token" in message and "3 attempts" in message
    assert "HttpPutResponseHopLimit" in message and "--http-put-response-hop-limit 2" in message


# --------------------------------------------------------------------------------------------------
# Whether to ask


@pytest.mark.parametrize(("facts", "platform"), [
    ({"sys_vendor": "Amazon EC2\n"}, Platform.EC2),
    ({"sys_vendor": "Xen\n", "bios_version": "4.11.amazon\n"}, Platform.EC2),
    ({"sys_vendor": None, "hypervisor_uuid": "ec2e1916-9099-7caf-fd21-012345abcdef\n"}, Platform.EC2),
    ({"sys_vendor": "QEMU\n", "bios_version": "1.16.3"}, Platform.OTHER),
    ({"sys_vendor": "Xen\n"}, Platform.UNKNOWN),
    ({"sys_vendor": None, "bios_version": None}, Platform.UNKNOWN),
])
def test_the_platform_from_firmware_facts(facts: dict[str, str | None], platform: Platform) -> None:
    assert platform_from_dmi(facts) is platform


def test_which_endpoint(tmp_path: Path) -> None:
    unset = settings(tmp_path)
    assert metadata_plan(unset, {}, Platform.EC2).endpoint == DEFAULT_ENDPOINT
    sdk = {"AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://127.0.0.1:9"}
    assert metadata_plan(unset, sdk, Platform.EC2).endpoint == "http://127.0.0.1:9"
    ipv6 = {"AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE": "IPv6"}
    assert metadata_plan(unset, ipv6, Platform.EC2).endpoint == IPV6_ENDPOINT
    ours = settings(tmp_path, "ec2:\n  endpoint: http://127.0.0.1:8\n")
    assert metadata_plan(ours, sdk, Platform.EC2).endpoint == "http://127.0.0.1:8"  # our setting wins
    with pytest.raises(IdentityError, match="AWS_EC2_METADATA_SERVICE_ENDPOINT: 'https://x' is not an http"):
        metadata_plan(unset, {"AWS_EC2_METADATA_SERVICE_ENDPOINT": "https://x"}, Platform.EC2)


def test_a_bad_endpoint_setting_names_its_line(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as invalid:
        settings(tmp_path, "ec2:\n  endpoint: 169.254.169.254\n")
    assert invalid.value.problems == [f"{tmp_path / 'agent.yaml'}:2:3: ec2.endpoint: '169.254.169.254' is not an "
                                      "http:// URL (the metadata service speaks plain HTTP, e.g. "
                                      "http://169.254.169.254)"]


def test_when_to_ask(tmp_path: Path) -> None:
    auto = settings(tmp_path)
    assert metadata_plan(auto, {}, Platform.EC2).ask
    assert metadata_plan(auto, {}, Platform.UNKNOWN).ask
    # Firmware of another vendor: an on-premises host makes no AWS call at all...
    assert not metadata_plan(auto, {}, Platform.OTHER).ask
    # ...unless an endpoint was given on purpose.
    assert metadata_plan(auto, {"AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://127.0.0.1:9"}, Platform.OTHER).ask
    assert not metadata_plan(settings(tmp_path, "ec2: {metadata: disabled}\n"), {}, Platform.EC2).ask
    required = settings(tmp_path, "ec2: {metadata: required}\n")
    assert metadata_plan(required, {}, Platform.OTHER).must_answer
    # hostId: auto on an EC2 instance must not quietly become the host name.
    assert metadata_plan(settings(tmp_path, "hostId: auto\n"), {}, Platform.EC2).must_answer
    assert not metadata_plan(settings(tmp_path, "hostId: auto\n"), {}, Platform.UNKNOWN).must_answer


def test_aws_ec2_metadata_disabled_is_respected(tmp_path: Path, imds: Imds) -> None:
    disabled = {"AWS_EC2_METADATA_DISABLED": "true", "AWS_EC2_METADATA_SERVICE_ENDPOINT": imds.url}
    resolved = resolve_identity(settings(tmp_path), disabled, Platform.UNKNOWN)
    assert resolved.zone is None and imds.requests == []
    with pytest.raises(IdentityError, match="AWS_EC2_METADATA_DISABLED=true turns the instance metadata"):
        resolve_identity(settings(tmp_path, "ec2: {metadata: required}\n"), disabled, Platform.UNKNOWN)
    # Off EC2, hostId: auto is the host name; on an EC2 instance it cannot be decided without the metadata.
    assert resolve_identity(settings(tmp_path, "hostId: auto\n"), disabled, Platform.OTHER).host_id == \
        default_host_id()
    with pytest.raises(IdentityError, match="hostId is auto, which is the instance id on EC2"):
        resolve_identity(settings(tmp_path, "hostId: auto\n"), disabled, Platform.EC2)
    assert imds.requests == []


def test_required_off_ec2_stops_with_the_reason(tmp_path: Path) -> None:
    environ = {"AWS_EC2_METADATA_SERVICE_ENDPOINT": f"http://127.0.0.1:{closed_port()}"}
    with pytest.raises(IdentityError) as refused:
        resolve_identity(settings(tmp_path, "ec2: {metadata: required}\n"), environ, Platform.UNKNOWN)
    assert "ec2.metadata is required, but it could not be read: no instance metadata service at" in str(refused.value)


def test_auto_off_ec2_carries_on_with_the_defaults(tmp_path: Path) -> None:
    environ = {"AWS_EC2_METADATA_SERVICE_ENDPOINT": f"http://127.0.0.1:{closed_port()}"}
    resolved = resolve_identity(settings(tmp_path, "hostId: auto\n"), environ, Platform.UNKNOWN)
    assert resolved.host_id == default_host_id() and resolved.zone is None and resolved.instance_id is None
    with pytest.raises(IdentityError, match="hostId is auto on an EC2 instance"):
        resolve_identity(settings(tmp_path, "hostId: auto\n"), environ, Platform.EC2)


# --------------------------------------------------------------------------------------------------
# What the answer fills in


METADATA = InstanceMetadata(instance_id="i-0123456789abcdef0", availability_zone="eu-west-1b", region="eu-west-1",
                            local_ipv4="10.0.1.17", tags={"app": "from-ec2", "Name": "web"})


def test_the_metadata_fills_what_is_unset(tmp_path: Path) -> None:
    resolved = apply_metadata(settings(tmp_path, "hostId: auto\n"), METADATA, hostname="web-1")
    assert (resolved.host_id, resolved.zone, resolved.instance_id, resolved.address, resolved.region) == (
        "i-0123456789abcdef0", "eu-west-1b", "i-0123456789abcdef0", "10.0.1.17", "eu-west-1")
    assert resolved.tags == {"app": "from-ec2", "Name": "web"}


def test_explicit_settings_win_and_tags_merge_key_by_key(tmp_path: Path) -> None:
    configured = settings(tmp_path, "hostId: web-1\nzone: null\naddress: 192.0.2.10\ntags: {app: hello, env: prod}\n",
                          FLEETSHIFT_AGENT_REGION="us-east-2")
    resolved = apply_metadata(configured, METADATA, hostname="ignored")
    assert resolved.host_id == "web-1" and resolved.address == "192.0.2.10" and resolved.region == "us-east-2"
    assert resolved.zone is None  # set to null on purpose: kept
    assert resolved.instance_id == "i-0123456789abcdef0"  # unset: filled
    assert resolved.tags == {"app": "hello", "env": "prod", "Name": "web"}


def test_an_unset_host_id_stays_the_host_name_on_ec2(tmp_path: Path) -> None:
    resolved = apply_metadata(settings(tmp_path), METADATA, hostname="ignored")
    assert resolved.host_id == default_host_id() and resolved.zone == "eu-west-1b"


def test_without_metadata_auto_is_the_host_name(tmp_path: Path) -> None:
    resolved = apply_metadata(settings(tmp_path, "hostId: auto\n"), None, hostname="web-1")
    assert resolved.host_id == "web-1" and resolved.zone is None and resolved.tags == {}
