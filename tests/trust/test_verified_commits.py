"""`repository.verify` (issue 15, "trust chain", config side): only config commits signed by an allowed signer are
deployed, checked by git's own verification.

Real signed commits in real repositories: SSH keys from ssh-keygen (git's gpg.format=ssh) and OpenPGP keys from
gpg --batch --gen-key (no passphrase), each signer with its own GnuPG home. The environment's GNUPGHOME (the
"user's keyring") holds a key that is not allowed, trusted ultimately there: it must never count. Git is
configured per repository and per command only (GIT_CONFIG_GLOBAL=/dev/null keeps a developer's own config,
commit.gpgsign say, out).

Through `CommitVerifier` for the rules (head and strict modes, merges, force-pushes, rotation, revoked and altered
signatures), and through the real `reconcile` entry point for what a user sees: exit 9 with the commit, the
signer and the policy named, nothing written to the store, `plan` refusing too, `watch` refusing a commit and
taking the next good one, settings mistakes as exit 1 without a traceback.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
import structlog
from structlog.testing import capture_logs

from contract.keys import APPLIED_CONFIG_KEY
from contract.models import AppliedConfig, GroupState
from contract.signing import Signer as StoreSigner
from contract.store import open_store
from contract.store.docs import read_document, write_document
from contract.store.sealed import seal_store
from reconciler.cli.main import main
from reconciler.desired.verify import CommitVerifier, UnverifiedCommit
from reconciler.errors import SettingsError
from reconciler.settings import DeploySettings, VerifySettings
from reconciler.shell.applied import AppliedConfigLedger
from reconciler.shell.watch import Watcher
from tests.conftest import require_tool
from tests.gitrepo import ConfigRepo
from tests.reconciler.fleet import APPLICATION, ScriptedAgents, group_manifest, local_revision
from tests.reconciler.procs import wait_for


@dataclass(frozen=True)
class Signer:
    """Somebody who signs commits: an SSH key file, or an OpenPGP key in a GnuPG home of its own."""

    name: str
    kind: str  # "ssh" | "openpgp"
    signing_key: str  # the private key file (ssh) or the key's fingerprint (openpgp)
    public: str  # an allowed-signers line (ssh) or the armored public key (openpgp)
    home: Path | None = None

    def git_options(self) -> list[str]:
        return ["-c", f"gpg.format={self.kind}", "-c", f"user.signingkey={self.signing_key}"]

    def env(self) -> dict[str, str]:
        return {"GNUPGHOME": str(self.home)} if self.home is not None else {}


@dataclass(frozen=True)
class Keys:
    alice: Signer  # SSH, allowed
    carol: Signer  # SSH, allowed after a rotation
    mallory: Signer  # SSH, never allowed
    bob: Signer  # OpenPGP, allowed
    dave: Signer  # OpenPGP, allowed, later revoked
    eve: Signer  # OpenPGP, never allowed; her home is the environment's GNUPGHOME
    dave_revoked: str  # dave's public key with its revocation


def _run(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None, stdin: str | None = None) -> str:
    result = subprocess.run(args, env={**os.environ, **(env or {})}, cwd=cwd, input=stdin, capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, (args, result.stderr)
    return result.stdout


def _ssh_signer(folder: Path, name: str) -> Signer:
    key = folder / name
    _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(key))
    return Signer(name, "ssh", str(key), f"{name}@example.com {key.with_suffix('.pub').read_text().strip()}")


def _openpgp_signer(home: Path, name: str) -> Signer:
    home.mkdir(mode=0o700)
    params = (f"Key-Type: EDDSA\nKey-Curve: ed25519\nKey-Usage: sign\nName-Real: {name.title()}\n"
              f"Name-Email: {name}@example.com\nExpire-Date: 0\n%no-protection\n%commit\n")
    _run("gpg", "--batch", "--quiet", "--gen-key", env={"GNUPGHOME": str(home)}, stdin=params)
    listing = _run("gpg", "--batch", "--with-colons", "--list-secret-keys", env={"GNUPGHOME": str(home)})
    fingerprint = next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))
    public = _run("gpg", "--batch", "--armor", "--export", fingerprint, env={"GNUPGHOME": str(home)})
    return Signer(name, "openpgp", fingerprint, public, home)


@pytest.fixture(scope="module")
def keys() -> Iterator[Keys]:
    require_tool("ssh-keygen", "openssh-client")
    require_tool("gpg", "gnupg")
    # Short paths: gpg-agent (started by gpg to sign) puts its sockets in the GnuPG home, and a Unix socket
    # path has at most 107 characters.
    folder = Path(tempfile.mkdtemp(prefix="fs-keys-", dir="/tmp"))
    homes: list[Path] = []
    try:
        alice, carol, mallory = (_ssh_signer(folder, name) for name in ("alice", "carol", "mallory"))
        bob, dave, eve = (_openpgp_signer(folder / name, name) for name in ("bob", "dave", "eve"))
        homes = [folder / "bob", folder / "dave", folder / "eve", folder / "revoked"]
        # dave's key as it is after he revoked it, the way a keys file would be updated (signed commits first).
        assert dave.home is not None
        revocation = (dave.home / "openpgp-revocs.d" / f"{dave.signing_key}.rev").read_text()
        revoked_home = folder / "revoked"
        revoked_home.mkdir(mode=0o700)
        revoked_env = {"GNUPGHOME": str(revoked_home)}
        _run("gpg", "--batch", "--quiet", "--import", env=revoked_env, stdin=dave.public)
        _run("gpg", "--batch", "--quiet", "--import", env=revoked_env,
             stdin=revocation.replace(":-----BEGIN PGP PUBLIC KEY BLOCK-----", "-----BEGIN PGP PUBLIC KEY BLOCK-----"))
        dave_revoked = _run("gpg", "--batch", "--armor", "--export", dave.signing_key, env=revoked_env)
        yield Keys(alice, carol, mallory, bob, dave, eve, dave_revoked)
    finally:
        for home in homes:
            subprocess.run(["gpgconf", "--kill", "gpg-agent"], env={**os.environ, "GNUPGHOME": str(home)},
                           capture_output=True, timeout=30, check=False)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keys: Keys) -> Iterator[None]:
    """No developer git config, a cache folder of the test's own, and eve's keyring as the user's GNUPGHOME."""
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", os.devnull)
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("GNUPGHOME", str(keys.eve.home))
    for name in [name for name in os.environ if name.startswith("FLEETSHIFT_")]:
        monkeypatch.delenv(name)
    # `main` configures structlog for the stderr of the moment, which pytest closes after each test.
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


class Repo:
    """A config repo whose commits are signed (or not) by the signer given."""

    def __init__(self, path: Path) -> None:
        self.config = ConfigRepo(path)
        self.path = path
        self.config.write("manifests/application.yaml", APPLICATION)
        self.count = 0

    @property
    def git_dir(self) -> Path:
        return self.path / ".git"

    def git(self, *args: str, signer: Signer | None = None) -> str:
        options = signer.git_options() if signer is not None else []
        return _run("git", *options, *args, cwd=self.path, env=signer.env() if signer else None).strip()

    def commit(self, message: str, signer: Signer | None = None, *, note: str | None = None) -> str:
        """A new commit changing the group's revision (so each one would deploy something), or with `note`, a
        file outside the manifests (commits on two branches that merge cleanly)."""
        self.count += 1
        if note is not None:
            self.config.write(f"notes/{note}.txt", f"{self.count}\n")
        else:
            self.config.write("manifests/web.yaml", group_manifest(revision=local_revision(self.count)))
        self.git("add", "-A")
        self.git("commit", "-q", *(["-S"] if signer else []), "-m", message, signer=signer)
        return self.git("rev-parse", "HEAD")

    def merge(self, branch: str, message: str, signer: Signer | None = None) -> str:
        self.git("merge", "-q", "--no-ff", *(["-S"] if signer else []), "-m", message, branch, signer=signer)
        return self.git("rev-parse", "HEAD")


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    return Repo(tmp_path / "config")


def allowed_signers(path: Path, *signers: Signer) -> Path:
    path.write_text("".join(f"{signer.public}\n" for signer in signers))
    return path


def keys_file(path: Path, *armored: str) -> Path:
    path.write_text("".join(armored))
    return path


def verifier(mode: str, *, ssh: Path | None = None, gpg: Path | None = None) -> CommitVerifier:
    return CommitVerifier(VerifySettings(mode=mode, allowed_signers_file=ssh, gpg_keys_file=gpg))  # type: ignore[arg-type]


def applied(commit: str, verified: str = "strict") -> AppliedConfig:
    return AppliedConfig(commit=commit, ref="main", applied_at=datetime.now(UTC), verified=verified)


@pytest.fixture
def signers_files(tmp_path: Path, keys: Keys) -> tuple[Path, Path]:
    """alice may sign with SSH, bob with OpenPGP."""
    return (allowed_signers(tmp_path / "allowed_signers", keys.alice),
            keys_file(tmp_path / "signers.asc", keys.bob.public))


# --------------------------------------------------------------------------------------------------
# The rules


def test_head_mode_accepts_a_commit_signed_by_an_allowed_ssh_key(repo: Repo, keys: Keys,
                                                                 signers_files: tuple[Path, Path]) -> None:
    ssh, gpg = signers_files
    commit = repo.commit("signed by alice", keys.alice)
    verification = verifier("head", ssh=ssh, gpg=gpg).verify(repo.git_dir, commit, None)
    assert verification.checked == (commit,) and verification.mode == "head"


def test_head_mode_accepts_a_commit_signed_by_an_allowed_openpgp_key(repo: Repo, keys: Keys,
                                                                     signers_files: tuple[Path, Path]) -> None:
    ssh, gpg = signers_files
    commit = repo.commit("signed by bob", keys.bob)
    assert verifier("head", ssh=ssh, gpg=gpg).verify(repo.git_dir, commit, None).checked == (commit,)
    # Only the OpenPGP keys file counts: with SSH signers alone, bob's signature cannot be checked at all.
    with pytest.raises(UnverifiedCommit) as refused:
        verifier("head", ssh=ssh).verify(repo.git_dir, commit, None)
    assert refused.value.signer.startswith("OpenPGP key ")


@pytest.mark.parametrize("mode", ["head", "strict"])
@pytest.mark.parametrize("who", ["unsigned", "ssh key not allowed", "openpgp key not allowed"])
def test_unsigned_and_not_allowed_signatures_are_refused(repo: Repo, keys: Keys, signers_files: tuple[Path, Path],
                                                         mode: str, who: str) -> None:
    ssh, gpg = signers_files
    base = repo.commit("signed by alice", keys.alice)
    signer = {"unsigned": None, "ssh key not allowed": keys.mallory, "openpgp key not allowed": keys.eve}[who]
    commit = repo.commit(f"the change ({who})", signer)
    with pytest.raises(UnverifiedCommit) as refused:
        verifier(mode, ssh=ssh, gpg=gpg).verify(repo.git_dir, commit, applied(base, mode))
    error = refused.value
    assert error.commit == commit and error.subject == f"the change ({who})"
    assert f"repository.verify.mode: {mode}" in error.policy
    message = str(error)
    assert f'config commit {commit[:12]} "the change ({who})" refused' in message
    if who == "unsigned":
        assert error.signer == "no signature" and "it has no signature" in message
    elif who == "ssh key not allowed":
        fingerprint = _run("ssh-keygen", "-l", "-f", f"{keys.mallory.signing_key}.pub").split()[1]
        assert error.signer == f"SSH key {fingerprint}"
        assert "No principal matched" in error.reason  # git's (ssh-keygen's) own words
    else:
        # eve's key is in the user's keyring (GNUPGHOME), trusted ultimately there, and still does not count.
        assert error.signer.startswith("OpenPGP key ") and keys.eve.signing_key.endswith(error.signer.split()[-1])
        assert "No public key" in error.reason


def test_revoked_keys_and_altered_commits_are_refused(repo: Repo, keys: Keys, tmp_path: Path) -> None:
    by_dave = repo.commit("signed by dave before he revoked his key", keys.dave)
    gpg = keys_file(tmp_path / "signers.asc", keys.dave_revoked)
    with pytest.raises(UnverifiedCommit) as refused:
        verifier("head", gpg=gpg).verify(repo.git_dir, by_dave, None)
    assert "revoked" in refused.value.problem and "revoked" in refused.value.reason
    assert refused.value.signer.startswith("Dave <dave@example.com> (OpenPGP key ")

    by_alice = repo.commit("signed by alice", keys.alice)
    altered = repo.git("cat-file", "commit", by_alice).replace("signed by alice", "changed after signing")
    forged = _run("git", "hash-object", "-t", "commit", "-w", "--stdin", cwd=repo.path, stdin=altered + "\n").strip()
    ssh = allowed_signers(tmp_path / "allowed_signers", keys.alice)
    with pytest.raises(UnverifiedCommit) as refused:
        verifier("head", ssh=ssh).verify(repo.git_dir, forged, None)
    assert "bad signature" in refused.value.problem and "changed after it was signed" in refused.value.hint


def test_strict_refuses_an_unsigned_commit_in_the_middle_of_a_signed_range(
        repo: Repo, keys: Keys, signers_files: tuple[Path, Path]) -> None:
    ssh, gpg = signers_files
    base = repo.commit("applied", keys.alice)
    repo.commit("signed", keys.bob)
    middle = repo.commit("slipped in unsigned")
    head = repo.commit("signed head", keys.alice)
    check = verifier("strict", ssh=ssh, gpg=gpg)
    # head mode looks at the head alone and lets it through; strict does not.
    assert verifier("head", ssh=ssh, gpg=gpg).verify(repo.git_dir, head, applied(base, "head")).checked == (head,)
    with pytest.raises(UnverifiedCommit) as refused:
        check.verify(repo.git_dir, head, applied(base))
    error = refused.value
    assert (error.commit, error.target) == (middle, head)
    assert "commit 2 of the 3 checked" in error.problem and error.signer == "no signature"
    assert f"the commit to deploy, {head[:12]}, includes it" in str(error)
    assert f"git rebase --exec 'git commit --amend --no-edit -S' {base[:12]}" in error.hint
    # Applied up to the middle already (say by a run without strict), only what follows counts.
    assert check.verify(repo.git_dir, head, applied(middle)).checked == (head,)

    # Merge commits are in the range too: a branch of signed commits merged by an unsigned merge is refused.
    repo.git("checkout", "-q", "-b", "topic")
    repo.commit("on the topic branch", keys.alice, note="topic")
    repo.git("checkout", "-q", "main")
    repo.commit("on main", keys.alice)
    merge = repo.merge("topic", "unsigned merge")
    with pytest.raises(UnverifiedCommit) as refused:
        check.verify(repo.git_dir, merge, applied(head))
    assert refused.value.commit == merge and refused.value.subject == "unsigned merge"
    repo.git("reset", "-q", "--hard", "HEAD~1")
    signed_merge = repo.merge("topic", "signed merge", keys.alice)
    assert len(check.verify(repo.git_dir, signed_merge, applied(head)).checked) == 3


def test_strict_refuses_a_force_push_that_rewrites_applied_history(repo: Repo, keys: Keys,
                                                                   signers_files: tuple[Path, Path]) -> None:
    ssh, gpg = signers_files
    repo.commit("one", keys.alice)
    two = repo.commit("two", keys.alice)
    # Somebody rewrites "two" (applied) and force-pushes; the new commit is signed, by an allowed key even.
    repo.git("reset", "-q", "--hard", "HEAD~1")
    rewritten = repo.commit("two, rewritten", keys.alice)
    check = verifier("strict", ssh=ssh, gpg=gpg)
    with pytest.raises(UnverifiedCommit) as refused:
        check.verify(repo.git_dir, rewritten, applied(two))
    assert f"does not descend from the last applied config commit {two[:12]}" in refused.value.problem
    assert "config/applied.json" in refused.value.hint
    assert refused.value.signer.startswith("alice@example.com (SSH key SHA256:")  # signed well, and still refused
    # head mode only asks for the signature.
    assert verifier("head", ssh=ssh, gpg=gpg).verify(repo.git_dir, rewritten, applied(two, "head")).checked

    # The old commits garbage-collected: the applied commit is unknown to the repository.
    repo.git("reflog", "expire", "--expire=now", "--all")
    repo.git("gc", "-q", "--prune=now")
    assert repo.git("cat-file", "-t", rewritten) == "commit"
    with pytest.raises(UnverifiedCommit) as refused:
        check.verify(repo.git_dir, rewritten, applied(two))
    assert f"the last applied config commit {two[:12]} is not in the repository" in refused.value.problem


def test_signers_rotate_and_applied_history_stays_valid(repo: Repo, keys: Keys, tmp_path: Path) -> None:
    ssh = allowed_signers(tmp_path / "allowed_signers", keys.alice)
    check = verifier("strict", ssh=ssh)
    by_alice = repo.commit("by alice", keys.alice)
    assert check.verify(repo.git_dir, by_alice, None).checked == (by_alice,)  # first run: the head alone

    # carol joins: her commits count at once (the file is read at every check, no restart).
    allowed_signers(ssh, keys.alice, keys.carol)
    by_carol = repo.commit("by carol", keys.carol)
    assert check.verify(repo.git_dir, by_carol, applied(by_alice)).checked == (by_carol,)

    # alice leaves: a new commit of hers is refused...
    allowed_signers(ssh, keys.carol)
    late_alice = repo.commit("by alice, after she left", keys.alice)
    with pytest.raises(UnverifiedCommit) as refused:
        check.verify(repo.git_dir, late_alice, applied(by_carol))
    assert refused.value.commit == late_alice and "No principal matched" in refused.value.reason
    # ... while what she signed before and was applied stays fine: a range never reaches back past the last
    # applied commit. The commit to deploy itself is always checked, even when the store records it as applied
    # (a forged record must not wave it through), so re-deploying her last commit after she left is refused.
    repo.git("reset", "-q", "--hard", by_carol)
    assert check.verify(repo.git_dir, by_carol, applied(by_carol)).checked == (by_carol,)
    with pytest.raises(UnverifiedCommit):
        verifier("head", ssh=ssh).verify(repo.git_dir, by_alice, applied(by_alice))
    next_by_carol = repo.commit("by carol, next", keys.carol)
    assert check.verify(repo.git_dir, next_by_carol, applied(by_carol)).checked == (next_by_carol,)

    # The same for OpenPGP: the keys file is read at every check, and a new content builds a new keyring.
    gpg = keys_file(tmp_path / "signers.asc", keys.bob.public)
    check = verifier("head", gpg=gpg)
    by_bob = repo.commit("by bob", keys.bob)
    assert check.verify(repo.git_dir, by_bob, None).checked == (by_bob,)
    keys_file(gpg, keys.dave.public)
    with pytest.raises(UnverifiedCommit):
        check.verify(repo.git_dir, repo.commit("by bob, after he left", keys.bob), None)
    assert check.verify(repo.git_dir, repo.commit("by dave", keys.dave), None).checked


def test_the_openpgp_keyring_is_fleetshifts_own(repo: Repo, keys: Keys, tmp_path: Path) -> None:
    gpg = keys_file(tmp_path / "signers.asc", keys.bob.public)
    verifier("head", gpg=gpg).verify(repo.git_dir, repo.commit("by bob", keys.bob), None)
    homes = [path for path in (tmp_path / "cache" / "fleetshift" / "gnupg").iterdir() if path.name != "empty"]
    assert len(homes) == 1
    assert (homes[0].stat().st_mode & 0o777) == 0o700 and ((tmp_path / "cache" / "fleetshift" / "gnupg").stat()
                                                          .st_mode & 0o777) == 0o700
    assert (homes[0] / "fingerprints").read_text().split() == [keys.bob.signing_key]
    assert not list(homes[0].glob("S.gpg-agent*"))  # no agent was started for it


def test_the_applied_record_is_written_by_compare_and_swap(tmp_path: Path, repo: Repo, keys: Keys) -> None:
    store = open_store(f"file://{tmp_path / 'store'}")
    first = repo.commit("one", keys.alice)
    second = repo.commit("two", keys.alice)
    ledger = AppliedConfigLedger(store, verifier("none"), repository=str(repo.path), ref="main")
    ledger.record(first)
    record = read_document(store, APPLIED_CONFIG_KEY, AppliedConfig)
    assert record is not None and record.document.commit == first and record.document.verified == "none"
    # Somebody else (a reconciler that held the lease before) wrote it meanwhile: not overwritten.
    write_document(store, APPLIED_CONFIG_KEY, applied(second, "head"))
    ledger.record(second.replace(second[:4], "0000"))
    record = read_document(store, APPLIED_CONFIG_KEY, AppliedConfig)
    assert record is not None and record.document.commit == second


# --------------------------------------------------------------------------------------------------
# What a user sees: the reconcile command


class World:
    """A config repo, a file store with four hosts that answer instantly, and verification settings."""

    def __init__(self, tmp_path: Path, repo: Repo, monkeypatch: pytest.MonkeyPatch) -> None:
        self.repo = repo
        self.store_dir = tmp_path / "store"
        self.store_url = f"file://{self.store_dir}"
        self.monkeypatch = monkeypatch
        monkeypatch.setenv("FLEETSHIFT_RECONCILE_POLL_INTERVAL", "20ms")
        monkeypatch.setenv("FLEETSHIFT_RECONCILE_TIMEOUT", "30s")
        monkeypatch.setenv("FLEETSHIFT_LOGGING_FORMAT", "json")
        monkeypatch.setenv("FLEETSHIFT_LOGGING_LEVEL", "warning")
        # Strict mode trusts the store's record of the last applied commit only when it is signed.
        self.signer = StoreSigner.generate()
        key_file = tmp_path / "signing.pem"
        key_file.write_bytes(self.signer.private_pem())
        key_file.chmod(0o600)
        monkeypatch.setenv("FLEETSHIFT_SIGNING_KEY_FILE", str(key_file))

    def verify(self, mode: str, ssh: Path | None = None, gpg: Path | None = None) -> None:
        self.monkeypatch.setenv("FLEETSHIFT_REPOSITORY_VERIFY_MODE", mode)
        for name, path in (("ALLOWED_SIGNERS_FILE", ssh), ("GPG_KEYS_FILE", gpg)):
            if path is not None:
                self.monkeypatch.setenv(f"FLEETSHIFT_REPOSITORY_VERIFY_{name}", str(path))

    def run(self, *args: str) -> int:
        return main(["--repo", str(self.repo.path), "--ref", "main", "--path", "manifests", "--store",
                     self.store_url, *args])

    def store_keys(self) -> dict[str, str]:
        """Every key in the store with its version (what a refusal must leave as it is)."""
        if not self.store_dir.exists():
            return {}
        return {item.key: item.version for item in open_store(self.store_url).list("")}

    def applied(self) -> AppliedConfig | None:
        record = read_document(seal_store(open_store(self.store_url)), APPLIED_CONFIG_KEY, AppliedConfig)
        return record.document if record is not None else None


@pytest.fixture
def world(tmp_path: Path, repo: Repo, monkeypatch: pytest.MonkeyPatch) -> World:
    return World(tmp_path, repo, monkeypatch)


def test_once_refuses_with_exit_9_names_commit_signer_and_policy_and_writes_nothing(
        world: World, keys: Keys, signers_files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    ssh, gpg = signers_files
    world.verify("strict", ssh=ssh, gpg=gpg)
    unsigned = world.repo.commit("deploy v1, unsigned")
    assert world.run("--once") == 9
    err = capsys.readouterr().err
    assert f'reconcile: config commit {unsigned[:12]} "deploy v1, unsigned" refused: it has no signature' in err
    assert "signer: no signature" in err and "repository.verify.mode: strict" in err
    assert str(ssh) in err and "nothing was applied (exit 9)" in err and "Traceback" not in err
    assert world.store_keys() == {}  # not even the store's folder: refused before the lease

    # Signed by bob (OpenPGP), on a fleet: applied, and recorded as the start of the next range.
    agents = ScriptedAgents(seal_store(open_store(world.store_url)), ["h1", "h2", "h3", "h4"])
    agents.register()
    good = world.repo.commit("deploy v2", keys.bob)
    assert world.run("--once", "--no-wait") == 0
    record = world.applied()
    assert record is not None and (record.commit, record.ref, record.verified) == (good, "main", "strict")
    assert any(key.startswith("commands/") for key in world.store_keys())
    capsys.readouterr()

    # Signed, but by mallory: exit 9, her key named, and nothing in the store changes.
    before = world.store_keys()
    bad = world.repo.commit("deploy v3", keys.mallory)
    assert world.run("--once") == 9
    err = capsys.readouterr().err
    assert f'config commit {bad[:12]} "deploy v3" refused: it has a good signature by a key that is not an ' \
           f"allowed signer" in err
    assert "signer: SSH key SHA256:" in err and "No principal matched" in err
    assert f"every commit after the last applied one ({good[:12]})" in err
    assert world.store_keys() == before

    # Crash safety: applied, then killed before the record moved (the record put back to the earlier commit):
    # the next run checks a range that starts earlier, which is still all signed, and goes on.
    world.repo.git("reset", "-q", "--hard", good)
    world.repo.commit("deploy v4", keys.alice)
    assert world.run("--once", "--no-wait") == 0
    write_document(seal_store(open_store(world.store_url), signer=world.signer), APPLIED_CONFIG_KEY, applied(good))
    latest = world.repo.commit("deploy v5", keys.bob)
    assert world.run("--once", "--no-wait") == 0
    record = world.applied()
    assert record is not None and record.commit == latest


def test_plan_refuses_an_unverified_change_with_exit_9(world: World, keys: Keys, signers_files: tuple[Path, Path],
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    ssh, gpg = signers_files
    world.verify("strict", ssh=ssh, gpg=gpg)
    base = world.repo.commit("deployed", keys.alice)
    world.repo.git("checkout", "-q", "-b", "change")
    middle = world.repo.commit("unsigned step")
    world.repo.commit("signed head", keys.bob)
    assert world.run("plan", "--base", "main", "--head", "change", "--offline") == 9
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f'reconcile plan: config commit {middle[:12]} "unsigned step" refused' in captured.err
    assert f"after the base ({base[:12]})" in captured.err and "nothing was planned (exit 9)" in captured.err
    # head mode: the head is signed, so the plan goes ahead (exit 2: there are changes).
    world.verify("head", ssh=ssh, gpg=gpg)
    assert world.run("plan", "--base", "main", "--head", "change", "--offline") == 2


@pytest.mark.parametrize("command", [["--once"], ["watch"], ["plan", "--offline"]])
@pytest.mark.parametrize("mistake", ["no signers", "missing allowed signers file", "keys gpg cannot import"])
def test_settings_mistakes_exit_1_with_the_setting_and_file_named(
        world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str], mistake: str) -> None:
    world.repo.commit("anything")
    if mistake == "no signers":
        world.verify("strict")
        expected = ["repository.verify.mode: strict needs the signers it allows",
                    "repository.verify.allowedSignersFile", "repository.verify.gpgKeysFile"]
    elif mistake == "missing allowed signers file":
        world.verify("head", ssh=tmp_path / "nowhere" / "allowed_signers")
        expected = ["repository.verify.allowedSignersFile", f"{tmp_path / 'nowhere' / 'allowed_signers'} does not "
                                                            f"exist"]
    else:
        gpg = keys_file(tmp_path / "signers.asc", "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nnot a key\n")
        world.verify("head", gpg=gpg)
        expected = [f"repository.verify.gpgKeysFile ({gpg})", "no OpenPGP public key could be imported"]
    assert world.run(*command) == 1
    err = capsys.readouterr().err
    assert all(text in err for text in expected), err
    assert "Traceback" not in err
    assert world.store_keys() == {}


def test_watch_refuses_a_commit_once_and_takes_the_next_good_one(world: World, keys: Keys, tmp_path: Path) -> None:
    ssh = allowed_signers(tmp_path / "allowed_signers", keys.alice)
    first = world.repo.commit("v1", keys.alice)
    settings = DeploySettings.model_validate({
        "repository": {"url": str(world.repo.path), "ref": "main", "path": "manifests",
                       "verify": {"mode": "head", "allowedSignersFile": str(ssh)}},
        "store": world.store_url,
        "reconcile": {"pollInterval": "20ms", "resyncInterval": "50ms", "leaseDuration": "5s"},
    })
    stop = threading.Event()
    watcher = Watcher(open_store(settings.store), settings, stop=stop)
    thread = threading.Thread(target=watcher.run, daemon=True)
    with capture_logs() as logs:
        thread.start()
        try:
            wait_for(lambda: (world.applied() or applied("0" * 40)).commit == first, 20, "v1 applied")
            unsigned = world.repo.commit("v2, unsigned")
            wait_for(lambda: watcher.invalid_commit == unsigned, 20, "v2 refused")
            passes = watcher.runner.passes
            wait_for(lambda: watcher.runner.passes >= passes + 3, 20, "three more passes (resyncs)")
            assert thread.is_alive()
            assert watcher.desired is not None and watcher.desired.commit == first  # v1 stays in force
            assert (world.applied() or applied("0" * 40)).commit == first
            signed = world.repo.commit("v3, signed", keys.alice)
            wait_for(lambda: (world.applied() or applied("0" * 40)).commit == signed, 20, "v3 applied")
        finally:
            stop.set()
            watcher.wake.set()
            thread.join(timeout=15)
    assert not thread.is_alive()
    refusals = [log for log in logs if log["event"] == "watch.commit_unverified"]
    assert len(refusals) == 1, refusals  # once per commit, however many passes and resyncs follow
    assert refusals[0]["commit"] == unsigned and refusals[0]["signer"] == "no signature"
    assert refusals[0]["applying"] == first and "repository.verify.mode: head" in refusals[0]["policy"]


def test_a_settings_error_is_raised_before_watch_starts(tmp_path: Path, repo: Repo) -> None:
    repo.commit("anything")
    settings = DeploySettings.model_validate({
        "repository": {"url": str(repo.path), "verify": {"mode": "head"}},
        "store": f"file://{tmp_path / 'store'}",
    })
    with pytest.raises(SettingsError, match=r"repository\.verify\.mode: head needs"):
        Watcher(open_store(settings.store), settings, stop=threading.Event())


# --------------------------------------------------------------------------------------------------
# Bypasses a review found, each closed


def test_a_forged_applied_record_does_not_wave_an_unsigned_commit_through(
        world: World, keys: Keys, signers_files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    """The store's record says the commit was applied already: head mode still checks the commit itself, and so
    does strict (whose range would be empty)."""
    ssh, gpg = signers_files
    unsigned = world.repo.commit("deploy, unsigned")
    forged = AppliedConfig(commit=unsigned, ref="main", applied_at=datetime.now(UTC), verified="strict")
    write_document(seal_store(open_store(world.store_url), signer=world.signer), APPLIED_CONFIG_KEY, forged)
    for mode in ("head", "strict"):
        world.verify(mode, ssh=ssh, gpg=gpg)
        assert world.run("--once") == 9, mode
        assert "it has no signature" in capsys.readouterr().err


def test_strict_mode_needs_signed_records(world: World, keys: Keys, signers_files: tuple[Path, Path],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """Without a signing key the record strict mode starts from could be moved by anyone who writes the store."""
    ssh, gpg = signers_files
    world.verify("strict", ssh=ssh, gpg=gpg)
    world.monkeypatch.delenv("FLEETSHIFT_SIGNING_KEY_FILE")
    world.repo.commit("deploy", keys.alice)
    assert world.run("--once") == 1
    err = capsys.readouterr().err
    assert "repository.verify.mode: strict needs a signing key" in err and "Traceback" not in err


def test_a_replace_ref_cannot_change_what_a_verified_commit_deploys(
        world: World, keys: Keys, signers_files: tuple[Path, Path], tmp_path: Path) -> None:
    """`git replace` substitutes an object wherever git reads it; git verifies the signed commit object, so a
    replaced tree would deploy manifests nobody signed. fleetshift runs git with GIT_NO_REPLACE_OBJECTS."""
    ssh, gpg = signers_files
    world.verify("head", ssh=ssh, gpg=gpg)
    signed = world.repo.commit("deploy, signed", keys.alice)
    signed_tree = world.repo.git("rev-parse", f"{signed}^{{tree}}")
    world.repo.config.write("manifests/web.yaml", group_manifest(revision=local_revision(999)))
    world.repo.git("add", "-A")
    evil_tree = world.repo.git("write-tree")
    world.repo.git("checkout", "-q", "--", ".")
    world.repo.git("reset", "-q", "--hard", signed)
    world.repo.git("replace", signed_tree, evil_tree)
    agents = ScriptedAgents(seal_store(open_store(world.store_url)), ["h1"])
    agents.register()
    assert world.run("--once", "--no-wait") == 0
    group = read_document(seal_store(open_store(world.store_url)), "groups/hello/web.json", GroupState)
    assert group is not None
    desired = group.document.desired_revision
    assert desired is not None and desired.local is not None and "999" not in desired.local.path


def test_a_tag_named_like_the_branch_is_refused_as_ambiguous(
        world: World, keys: Keys, signers_files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    """git prefers a tag to a branch of the same name: whoever may push tags would pick what is deployed."""
    ssh, gpg = signers_files
    world.verify("head", ssh=ssh, gpg=gpg)
    world.repo.commit("deploy", keys.alice)
    world.repo.git("checkout", "-q", "-b", "experiment")
    experiment = world.repo.commit("an unreviewed experiment", keys.alice)
    world.repo.git("checkout", "-q", "main")
    world.repo.git("tag", "main", experiment)
    assert world.run("--once") == 1
    err = capsys.readouterr().err
    assert "'main' names both a branch and a tag" in err and "refs/heads/main" in err
