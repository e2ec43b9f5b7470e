"""`repository.verify`: which config commits may be deployed, decided by git's own signature verification.

Where it sits: between resolving the configured ref to a commit and trusting that commit's manifests.
`reconcile --once`, `watch` and `plan` ask `CommitVerifier` before anything is applied or planned; the shell
(`reconciler.shell.applied`) supplies the last applied commit from `config/applied.json` and checks again under
the write lease. A refusal is `UnverifiedCommit` (exit 9), naming the commit, its signer, git's reason and the
policy. docs/trust.md, "Verified commits", is the user's side of this.

What counts as verified: git's `%G?` is `G` ("good signature, valid key") and nothing else. git itself does the
cryptography, with `-c` options that override whatever the user's or the repository's git config says:

- SSH signatures: `gpg.ssh.allowedSignersFile` is `repository.verify.allowedSignersFile` (or an empty file when
  unset, so no SSH signature passes). git asks ssh-keygen for the principal of the key that signed; a key not in
  the file comes back as `U` ("good signature, no principal matched"), which is refused.
- OpenPGP signatures: git runs gpg with `GNUPGHOME` set to a keyring of fleetshift's own (`_OpenPgpKeyring`),
  into which only the keys of `repository.verify.gpgKeysFile` are imported; never the user's keyring. Those keys
  are given ultimate ownertrust there, so git reports `G` for them. Why not accept `U` instead: for SSH, `U` is
  exactly "a key nobody allowed", so accepting it would let any key through; marking the imported keys trusted
  keeps one rule (`G` only) for both formats. Trusting them fully is right because the keyring holds nothing
  else: being in the file is the allowance. Expired (`X`, `Y`), revoked (`R`), bad (`B`), uncheckable (`E`, a
  key not in the file) and missing (`N`) signatures are all refused.

Modes: `head` checks the commit to deploy. `strict` checks every commit git lists for `applied..commit` (merge
commits included) and that the last applied commit is an ancestor of the new one, so a force-push that rewrites
history already applied is refused; with no applied commit yet (a first run) it checks the commit alone, and a
last applied commit the repository no longer has is a refusal too. A commit already applied under a mode at
least as strict is not checked again, so removing a signer later does not refuse what is already deployed.

Bounds: every git call is time-limited (`VERIFY_TIMEOUT_SECONDS`, killed with its process group) and subjects
are cut to `SUBJECT_CHARACTERS`; the keys file is read up to `MAX_KEYS_FILE_BYTES`.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import structlog

from contract import gitrun
from contract.gitmessages import GIT_NO_PROMPT, git_reason
from contract.models import AppliedConfig
from reconciler.desired.gitmirror import cache_dir
from reconciler.errors import ReconcilerError, SettingsError, SourceError

log = structlog.get_logger(__name__)

#: The longest a git or gpg call of the verification may run (a strict range of thousands of commits runs one
#: ssh-keygen or gpg per commit, a few milliseconds each). Killed after that, with its children.
VERIFY_TIMEOUT_SECONDS = 300.0
#: A commit subject is shown up to this many characters (the rest of a hostile one is never read).
SUBJECT_CHARACTERS = 100
#: The largest `gpgKeysFile` read: a keyring of a few dozen keys with their signatures is well under 1 MiB.
MAX_KEYS_FILE_BYTES = 8 * 1024 * 1024
#: How many passed checks a verifier remembers (`watch` needs the last one or two; this bounds a long run).
PASSED_REMEMBERED = 64
#: How strict each mode is: a commit recorded as applied under a mode at least this strict is not checked again.
MODE_RANK = {"none": 0, "head": 1, "strict": 2}
_OBJECT_ID = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")
#: git's `%G?` letters, in words.
_STATUS_WORDS = {
    "G": "a good signature by an allowed signer",
    "B": "a bad signature: the commit was changed after it was signed, or the signature is damaged",
    "U": "a good signature by a key that is not an allowed signer",
    "X": "a good signature that has expired",
    "Y": "a good signature by a key that has expired",
    "R": "a good signature by a key that has been revoked",
    "E": "a signature that cannot be checked: its key is not among the allowed signers (or git cannot check "
    "that kind of signature)",
    "N": "no signature",
}
#: git and gpg lines worth showing as the reason (gpg's framing, "Signature made ...", "using ... key", is not).
_REASON_LINE = re.compile(
    r"(good|bad|can't check|cannot|could not|no principal|revoked|expired|incorrect|no public key|not found|"
    r"error|fatal|invalid|unable|reason for revocation)",
    re.IGNORECASE,
)
#: The rule of head mode, and of strict mode's first run.
HEAD_RULE = "the commit to deploy must carry a good signature by an allowed signer"
_RECORD = "\x1e"
_FIELD = "\x00"
#: One line per commit: id, git's verdict, signer, key id, key fingerprint, subject (cut).
_LOG_FORMAT = f"%H%x00%G?%x00%GS%x00%GK%x00%GF%x00%<({SUBJECT_CHARACTERS},trunc)%s%x1e"


class UnverifiedCommit(ReconcilerError):
    """A config commit `repository.verify` refuses (exit 9): nothing from it is applied or planned.

    `commit` is the commit that failed (in strict mode possibly one in the middle of the range), `target` the
    commit that was to be deployed."""

    def __init__(self, *, commit: str, subject: str, problem: str, signer: str, reason: str, policy: str,
                 hint: str, target: str | None = None, signers: str | None = None) -> None:
        self.commit = commit
        self.subject = subject
        self.problem = problem
        self.signer = signer
        self.reason = reason
        self.policy = policy
        self.hint = hint
        self.target = target or commit
        self.signers = signers
        super().__init__(self.describe())

    def describe(self) -> str:
        subject = f' "{self.subject}"' if self.subject else ""
        lines = [
            f"config commit {short(self.commit)}{subject} refused: {self.problem}",
            f"signer: {self.signer}",
            f"git: {self.reason}",
            f"policy: {self.policy}",
        ]
        if self.signers is not None:
            lines.append(f"allowed signers: {self.signers}")
        if self.target != self.commit:
            lines.append(f"the commit to deploy, {short(self.target)}, includes it")
        lines.append(f"to fix: {self.hint}")
        return "\n  ".join(lines)


@dataclass(frozen=True)
class CommitSignature:
    """git's verdict on one commit's signature (`git log --format=%G?...`)."""

    commit: str
    status: str
    signer: str
    key: str
    fingerprint: str
    subject: str

    @property
    def good(self) -> bool:
        return self.status == "G"

    def describe_signer(self) -> str:
        """Who signed, as far as git could tell: principal or user id, and the key."""
        if self.status == "N":
            return "no signature"
        key = self.fingerprint or self.key
        kind = "SSH key" if key.startswith("SHA256:") else "OpenPGP key"
        if self.signer:
            return f"{self.signer} ({kind} {key})" if key else self.signer
        return f"{kind} {key}" if key else "unknown"


@dataclass(frozen=True)
class Verification:
    """A commit that passed: which mode, the applied commit its range started after, and what was checked."""

    commit: str
    mode: str
    since: str | None = None
    checked: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Signers:
    """The allowed signers as they are now: paths for git, a keyring for gpg, and a digest of both files."""

    allowed_signers: Path | None
    gnupg_home: Path
    digest: str


class VerifyPolicy(Protocol):
    """`repository.verify` as `reconciler.settings.VerifySettings` holds it (a protocol, so the desired-state
    package does not import the settings loader)."""

    @property
    def mode(self) -> str: ...
    @property
    def allowed_signers_file(self) -> Path | None: ...
    @property
    def gpg_keys_file(self) -> Path | None: ...


def short(commit: str) -> str:
    return commit[:12]


def _valid_object_id(value: str) -> bool:
    return bool(_OBJECT_ID.match(value))


class CommitVerifier:
    """Checks config commits against `repository.verify`. Creating one checks the settings (SettingsError, exit 1);
    the files are read again at every check, so a rotated signers file counts at once."""

    def __init__(self, settings: VerifyPolicy) -> None:
        self.settings = settings
        self.mode = settings.mode
        self._keyring = (
            _OpenPgpKeyring(_absolute(settings.gpg_keys_file)) if settings.gpg_keys_file is not None else None
        )
        #: Successful checks, by (commit, range start, signers digest): `--once` checks before taking the lease
        #: and again under it, `watch` before loading a commit and before its first pass; git runs once.
        self._passed: dict[tuple[str, str | None, str], Verification] = {}
        if self.mode != "none":
            self._signers()

    # ----------------------------------------------------------------------------------------------
    # Settings

    def _signers(self) -> _Signers:
        settings = self.settings
        if settings.allowed_signers_file is None and settings.gpg_keys_file is None:
            raise SettingsError(
                f"repository.verify.mode: {self.mode} needs the signers it allows: set "
                f"repository.verify.allowedSignersFile (SSH) or repository.verify.gpgKeysFile (OpenPGP), or "
                f"both (docs/trust.md, \"Verified commits\")")
        digest = hashlib.sha256(self.mode.encode())
        allowed: Path | None = None
        if settings.allowed_signers_file is not None:
            allowed = _absolute(settings.allowed_signers_file)
            if shutil.which("ssh-keygen") is None:
                raise SettingsError(f"repository.verify.allowedSignersFile ({allowed}): checking SSH signatures "
                                    f"needs ssh-keygen (OpenSSH's client, e.g. apt-get install openssh-client)")
            digest.update(b"ssh\0" + _read_bounded(allowed, "repository.verify.allowedSignersFile"))
        if self._keyring is not None:
            home = self._keyring.home()
            digest.update(b"gpg\0" + home.name.encode())
        else:
            home = _OpenPgpKeyring.empty_home()
        return _Signers(allowed, home, digest.hexdigest())

    def describe_signers(self) -> str:
        """Where the allowed signers come from, for messages."""
        parts = []
        if self.settings.allowed_signers_file is not None:
            parts.append(f"SSH: repository.verify.allowedSignersFile ({self.settings.allowed_signers_file})")
        if self.settings.gpg_keys_file is not None:
            parts.append(f"OpenPGP: repository.verify.gpgKeysFile ({self.settings.gpg_keys_file})")
        return "; ".join(parts) or "none configured"

    # ----------------------------------------------------------------------------------------------
    # Checks

    def verify(self, git_dir: Path, commit: str, applied: AppliedConfig | None) -> Verification:
        """Check `commit` before it is deployed, `applied` being what this store last applied (None: nothing yet).

        Raises UnverifiedCommit when the policy refuses it, SettingsError when the signers cannot be read,
        SourceError when git cannot run."""
        if self.mode == "none":
            return Verification(commit, "none")
        if not _valid_object_id(commit):
            raise SourceError(f"{commit!r} is not a commit id")
        # The commit to deploy is always checked, even when the store says it was applied already: the record is
        # only as trustworthy as the store, and a forged one must not wave a commit through (docs/trust.md).
        signers = self._signers()
        since = applied.commit if self.mode == "strict" and applied is not None else None
        if since == commit:
            since = None
        cache_key = (commit, since, signers.digest)
        if cache_key in self._passed:
            return self._passed[cache_key]
        git = _Git(git_dir, signers)
        if since is None:
            policy = (self._policy(HEAD_RULE) if self.mode == "head" else
                      self._policy("no config commit has been applied to this store yet, so the commit to deploy "
                                   "is checked alone; later runs check every commit since the last applied one"))
            signatures = git.signatures([commit], walk=False)
        else:
            signatures = self._strict_range(git, since, commit)
            policy = self._policy(f"every commit after the last applied one ({short(since)}) up to the commit to "
                                  f"deploy must carry a good signature by an allowed signer, and the commit to "
                                  f"deploy must descend from the last applied one; {len(signatures)} checked")
        self._refuse_bad(git, signatures, commit, policy, since=since)
        verification = Verification(commit, self.mode, since=since,
                                    checked=tuple(signature.commit for signature in signatures))
        if len(self._passed) >= PASSED_REMEMBERED:
            self._passed.clear()  # only the latest commits matter
        self._passed[cache_key] = verification
        log.info("verify.passed", commit=commit, mode=self.mode, since=since, checked=len(signatures))
        return verification

    def verify_change(self, git_dir: Path, head: str, base: str | None) -> Verification:
        """`reconcile plan`: the head of a change, and in strict mode every commit the change adds (`base..head`),
        which is what a merge would bring onto the deployed branch. The ancestry of the applied commit is
        `--once`'s check at merge time, not the plan's (a pull request need not contain the latest applied
        commit)."""
        if self.mode == "none":
            return Verification(head, "none")
        for commit in (head, base):
            if commit is not None and not _valid_object_id(commit):
                raise SourceError(f"{commit!r} is not a commit id")
        signers = self._signers()
        git = _Git(git_dir, signers)
        if self.mode == "strict" and base is not None and base != head:
            signatures = git.signatures([f"{base}..{head}"], walk=True)
            if head not in {signature.commit for signature in signatures}:
                signatures = [*signatures, *git.signatures([head], walk=False)]
            policy = self._policy(f"every commit the change adds, after the base ({short(base)}) up to the "
                                  f"head, must carry a good signature by an allowed signer; {len(signatures)} "
                                  f"checked")
        else:
            signatures = git.signatures([head], walk=False)
            policy = self._policy(HEAD_RULE)
        self._refuse_bad(git, signatures, head, policy, since=base if self.mode == "strict" else None)
        return Verification(head, self.mode, since=base, checked=tuple(s.commit for s in signatures))

    def _strict_range(self, git: _Git, since: str, commit: str) -> list[CommitSignature]:
        """Every commit after `since` up to `commit`; refusals when `since` is gone or not an ancestor."""
        found = git.signatures([commit], walk=False)
        subject, signer = (found[0].subject, found[0].describe_signer()) if found else ("", "unknown")
        policy = self._policy("the commit to deploy must descend from the last applied one, so that history "
                              "already applied cannot be rewritten")
        if not _valid_object_id(since):
            raise UnverifiedCommit(
                commit=commit, subject=subject, signer=signer, policy=policy, signers=self.describe_signers(),
                problem=f"the last applied commit recorded in the store ({since[:80]!r}) is not a commit id",
                reason="config/applied.json is damaged",
                hint="restore config/applied.json, or delete it to start again from this commit (docs/trust.md)")
        if not git.has_commit(since):
            raise UnverifiedCommit(
                commit=commit, subject=subject, signer=signer, policy=policy, signers=self.describe_signers(),
                problem=f"the last applied config commit {short(since)} is not in the repository, so nothing can "
                        f"show that {short(commit)} descends from it (history rewritten by a force-push, and the "
                        f"old commits garbage-collected?)",
                reason=f"{since} is unknown to git",
                hint=f"if the rewrite was intended, delete config/applied.json from the store (the next run then "
                     f"checks {short(commit)} alone, as a first run); otherwise restore the branch "
                     f"(docs/trust.md, \"Force-pushes\")")
        if not git.is_ancestor(since, commit):
            raise UnverifiedCommit(
                commit=commit, subject=subject, signer=signer, policy=policy, signers=self.describe_signers(),
                problem=f"it does not descend from the last applied config commit {short(since)}: the history "
                        f"that was applied has been rewritten (a force-push, a reset, or a different branch)",
                reason=f"git merge-base --is-ancestor {short(since)} {short(commit)}: no",
                hint=f"restore the branch so that it contains {short(since)}, or, if the rewrite was intended, "
                     f"delete config/applied.json from the store (the next run then checks {short(commit)} "
                     f"alone, as a first run; docs/trust.md, \"Force-pushes\")")
        signatures = git.signatures([f"{since}..{commit}"], walk=True)
        # The commit itself was applied before, under a weaker mode (none or head): check it now.
        return signatures or git.signatures([commit], walk=False)

    def _refuse_bad(self, git: _Git, signatures: list[CommitSignature], target: str, policy: str, *,
                    since: str | None) -> None:
        """Raise UnverifiedCommit for the oldest commit git did not call good, if any (git lists newest first,
        and the oldest is the one to fix first)."""
        bad = [signature for signature in signatures if not signature.good]
        if not bad:
            return
        first = bad[-1]
        problem = f"it has {_STATUS_WORDS.get(first.status, f'signature status {first.status!r}')}"
        if len(signatures) > 1:
            position = len(signatures) - signatures.index(first)
            others = f"; {len(bad) - 1} more of them refused too" if len(bad) > 1 else ""
            problem += f" (commit {position} of the {len(signatures)} checked{others})"
        raise UnverifiedCommit(commit=first.commit, subject=first.subject, problem=problem,
                               signer=first.describe_signer(), reason=git.reason(first.commit), policy=policy,
                               hint=self._hint(first, target=target, since=since), target=target,
                               signers=self.describe_signers())

    def _policy(self, rule: str) -> str:
        return f"repository.verify.mode: {self.mode}: {rule}"

    def _hint(self, signature: CommitSignature, *, target: str, since: str | None) -> str:
        if signature.status in ("U", "E"):
            allow = f"; or, if {signature.describe_signer()} should be allowed, add its key to the allowed signers"
        else:
            allow = ""
        if signature.commit == target:
            how = "git commit --amend --no-edit -S (then push; a pushed commit needs a force-push)"
        elif since is not None:
            how = f"git rebase --exec 'git commit --amend --no-edit -S' {short(since)} (then push)"
        else:
            how = "git commit -S"
        if signature.status == "B":
            return f"the commit was changed after it was signed: re-create it and sign it with an allowed key ({how})"
        return f"sign it with an allowed key: {how}{allow}"


# --------------------------------------------------------------------------------------------------
# git


class _Git:
    """git commands of the verification, in one repository, with the signers forced by `-c` options."""

    def __init__(self, git_dir: Path, signers: _Signers) -> None:
        self.git_dir = git_dir
        self.signers = signers

    def _run(self, args: list[str]) -> subprocess.CompletedProcess[str]:
        allowed = self.signers.allowed_signers or os.devnull
        command = [
            "git", f"--git-dir={self.git_dir}",
            # Whatever the user's or the repository's config says, these decide (docs/trust.md): git's `-c`
            # wins over every config file.
            "-c", f"gpg.ssh.allowedSignersFile={allowed}",
            "-c", "gpg.program=gpg", "-c", "gpg.openpgp.program=gpg", "-c", "gpg.ssh.program=ssh-keygen",
            "-c", "gpg.x509.program=gpgsm",
            "-c", "log.showSignature=false",
            *args,
        ]
        env = {**os.environ, **GIT_NO_PROMPT, "GNUPGHOME": str(self.signers.gnupg_home), "LC_ALL": "C"}
        return _run_bounded(command, env=env, what=f"git {args[0]}")

    def signatures(self, revisions: list[str], *, walk: bool) -> list[CommitSignature]:
        """git's verdict on each commit: the commits named (`walk=False`) or the range (`walk=True`, merge
        commits included), newest first."""
        options = [] if walk else ["--no-walk=unsorted"]
        result = self._run(["log", *options, f"--format={_LOG_FORMAT}", *revisions, "--"])
        if result.returncode != 0:
            raise SourceError(f"{self.git_dir}: git log failed: {git_reason(result.stderr)}")
        signatures = []
        for record in result.stdout.split(_RECORD):
            fields = record.strip("\n").split(_FIELD)
            if len(fields) != 6:
                continue
            commit, status, signer, key, fingerprint, subject = fields
            signatures.append(CommitSignature(commit, status, signer, key, fingerprint, subject.strip()))
        return signatures

    def has_commit(self, commit: str) -> bool:
        return self._run(["cat-file", "-e", f"{commit}^{{commit}}"]).returncode == 0

    def is_ancestor(self, ancestor: str, commit: str) -> bool:
        result = self._run(["merge-base", "--is-ancestor", ancestor, commit])
        if result.returncode not in (0, 1):
            raise SourceError(f"{self.git_dir}: git merge-base failed: {git_reason(result.stderr)}")
        return result.returncode == 0

    def reason(self, commit: str) -> str:
        """git's own words on a commit's signature (`git verify-commit`), trimmed to the lines that say why."""
        result = self._run(["verify-commit", commit])
        lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
        reasons = [line.removeprefix("gpg: ").strip() for line in lines if _REASON_LINE.search(line)]
        if reasons:
            return "; ".join(dict.fromkeys(reasons))[:500]
        if lines:
            return lines[-1][:500]
        return "git verify-commit found no signature on it" if result.returncode else "git verify-commit said nothing"


def _run_bounded(command: list[str], *, env: dict[str, str], what: str,
                 stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command with a time limit, killing its whole process group (gpg, ssh-keygen) when it runs over."""
    try:
        process = subprocess.Popen(command, env=env, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace",
                                   start_new_session=True)
    except OSError as exc:
        raise SourceError(f"{what}: cannot run {command[0]}: {exc.strerror or exc}") from None
    try:
        stdout, stderr = process.communicate(stdin, timeout=VERIFY_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        gitrun.end_process_group(process)  # type: ignore[arg-type]
        raise SourceError(f"{what} did not finish within {VERIFY_TIMEOUT_SECONDS:g}s and was killed") from None
    except BaseException:
        gitrun.end_process_group(process)  # type: ignore[arg-type]
        raise
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


# --------------------------------------------------------------------------------------------------
# Files and the OpenPGP keyring


def _absolute(path: Path) -> Path:
    """git runs in the repository, so a relative path from the settings is made absolute here (relative to the
    reconciler's working folder, like every other path in deploy.yaml)."""
    return path.expanduser().absolute()


def _read_bounded(path: Path, setting: str) -> bytes:
    try:
        size = path.stat().st_size
        if size > MAX_KEYS_FILE_BYTES:
            raise SettingsError(f"{setting}: {path} is {size:,} bytes; at most {MAX_KEYS_FILE_BYTES:,} are read")
        return path.read_bytes()
    except FileNotFoundError:
        raise SettingsError(f"{setting}: {path} does not exist") from None
    except IsADirectoryError:
        raise SettingsError(f"{setting}: {path} is a folder, not a file") from None
    except OSError as exc:
        raise SettingsError(f"{setting}: cannot read {path}: {exc.strerror or exc}") from None


def _gnupg_root() -> Path:
    """$XDG_CACHE_HOME/fleetshift/gnupg: fleetshift's own OpenPGP keyrings, one per content of gpgKeysFile. Mode
    0700, which gpg insists on for a home folder (and nobody else should be able to add a key to it)."""
    root = cache_dir().parent / "gnupg"
    try:
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        root.chmod(0o700)
    except OSError as exc:
        raise SettingsError(f"repository.verify: cannot create fleetshift's keyring folder {root}: "
                            f"{exc.strerror or exc} (point XDG_CACHE_HOME at a writable folder)") from None
    return root


class _OpenPgpKeyring:
    """A GnuPG home of fleetshift's own holding exactly the keys of `gpgKeysFile`, each with ultimate ownertrust.

    Named by the file's SHA-256, so a changed file (a rotation) gets a new keyring at the next check and an
    unchanged one is built once. Built in a temporary folder (mode 0700) and renamed into place when complete, so
    a process killed half-way, or two building at once, never leave a keyring with only some of the keys. gpg
    runs with `--no-autostart`: importing public keys and checking signatures need no gpg-agent, and none is left
    running."""

    def __init__(self, keys_file: Path) -> None:
        self.keys_file = keys_file

    @staticmethod
    def empty_home() -> Path:
        """A keyring with no keys, for when only SSH signers are configured: git's gpg then can check no
        OpenPGP signature (`E`), and the user's keyring is never consulted."""
        home = _gnupg_root() / "empty"
        try:
            home.mkdir(exist_ok=True, mode=0o700)
        except OSError as exc:
            raise SettingsError(f"repository.verify: cannot create {home}: {exc.strerror or exc}") from None
        return home

    def home(self) -> Path:
        setting = "repository.verify.gpgKeysFile"
        content = _read_bounded(self.keys_file, setting)
        if shutil.which("gpg") is None:
            raise SettingsError(f"{setting} ({self.keys_file}): checking OpenPGP signatures needs GnuPG "
                                f"(gpg, e.g. apt-get install gnupg)")
        root = _gnupg_root()
        home = root / hashlib.sha256(content).hexdigest()[:16]
        if (home / "fingerprints").is_file():
            return home
        try:
            partial = Path(tempfile.mkdtemp(prefix=f"{home.name}.", suffix=".partial", dir=root))
        except OSError as exc:
            raise SettingsError(f"{setting}: cannot create a keyring in {root}: {exc.strerror or exc}") from None
        try:
            fingerprints = self._build(partial, content)
            (partial / "fingerprints").write_text("".join(f"{fpr}\n" for fpr in fingerprints))
            try:
                partial.rename(home)
            except OSError:
                if not (home / "fingerprints").is_file():  # not "another process built it first"
                    raise
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        log.info("verify.keyring_built", keys_file=str(self.keys_file), keys=len(fingerprints), home=str(home))
        return home

    def _gpg(self, home: Path, args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        command = ["gpg", "--batch", "--no-tty", "--no-autostart", "--homedir", str(home), *args]
        return _run_bounded(command, env={**os.environ, "LC_ALL": "C"}, what="gpg", stdin=stdin)

    def _build(self, home: Path, content: bytes) -> list[str]:
        setting = f"repository.verify.gpgKeysFile ({self.keys_file})"
        keys_copy = home / "keys"
        keys_copy.write_bytes(content)  # what was hashed is what is imported, whatever happens to the file
        imported = self._gpg(home, ["--status-fd", "1", "--import", str(keys_copy)])
        keys_copy.unlink()
        listed = self._gpg(home, ["--with-colons", "--fixed-list-mode", "--list-keys"])
        fingerprints = _primary_fingerprints(listed.stdout)
        if not fingerprints:
            said = _gpg_reason(imported.stderr) or f"gpg exited with {imported.returncode}"
            raise SettingsError(f"{setting}: no OpenPGP public key could be imported from it: {said} (export "
                                f"the signers' keys with `gpg --export --armor KEY-ID > FILE`)")
        trust = self._gpg(home, ["--import-ownertrust"], stdin="".join(f"{fpr}:6:\n" for fpr in fingerprints))
        if trust.returncode != 0:
            raise SettingsError(f"{setting}: gpg could not mark its keys as trusted in {home}: "
                                f"{_gpg_reason(trust.stderr) or trust.returncode}")
        return fingerprints


def _primary_fingerprints(colons: str) -> list[str]:
    """The fingerprint of every primary key in `gpg --with-colons --list-keys` output (the `fpr` line that follows
    each `pub` line; subkeys have their own `sub` lines)."""
    fingerprints: list[str] = []
    after_pub = False
    for line in colons.splitlines():
        fields = line.split(":")
        if fields[0] == "pub":
            after_pub = True
        elif fields[0] == "fpr" and after_pub and len(fields) > 9:
            fingerprints.append(fields[9])
            after_pub = False
        elif fields[0] in ("sub", "ssb"):
            after_pub = False
    return fingerprints


def _gpg_reason(stderr: str) -> str:
    lines = [line.removeprefix("gpg: ").strip() for line in stderr.splitlines() if line.strip()]
    useful = [line for line in lines if "keybox" not in line and "trustdb created" not in line
              and "no gpg-agent" not in line and not line.startswith("Total number processed")]
    return "; ".join(useful[-3:])


__all__ = [
    "MODE_RANK",
    "CommitSignature",
    "CommitVerifier",
    "UnverifiedCommit",
    "Verification",
]
