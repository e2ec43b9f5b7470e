"""Loading manifests from a real Git repository: from commits (not the working tree), refs, sub-folders."""

from __future__ import annotations

from pathlib import Path

import pytest

from contract.gitmessages import git_reason
from reconciler.desired import gitcli, sources
from reconciler.desired.loader import load_folder, load_git
from reconciler.desired.sources import MAX_FILE_BYTES, GitSource, not_a_manifest, resolve_commit
from reconciler.errors import ManifestErrors, SourceError
from tests.gitrepo import ConfigRepo

APP = "apiVersion: deploy/v1\nkind: Application\nmetadata: {{name: {name}}}\n"
GROUP = """\
apiVersion: deploy/v1
kind: DeploymentGroup
metadata: {{name: web}}
spec:
  application: hello
  revision:
    git: {{repository: /srv/git/hello.git, commit: {commit}}}
  targets: {{tagSets: [[{{key: app, value: hello}}]]}}
"""
V1 = "a1" * 20
V2 = "b2" * 20


@pytest.fixture()
def config_repo(tmp_path: Path) -> ConfigRepo:
    return ConfigRepo(tmp_path / "config")


def test_two_commits_load_their_own_manifests(config_repo: ConfigRepo) -> None:
    config_repo.write("deploy/app.yaml", APP.format(name="hello"))
    config_repo.write("deploy/web.yml", GROUP.format(commit=V1))
    first = config_repo.commit("v1")
    config_repo.write("deploy/web.yml", GROUP.format(commit=V2))
    second = config_repo.commit("v2")

    at_first = load_git(GitSource(str(config_repo.path), first, "deploy"))
    at_second = load_git(GitSource(str(config_repo.path), "main", "deploy"))

    assert at_first.commit == first
    assert at_second.commit == second
    assert at_first.groups["web"].spec.revision is not None
    assert at_first.groups["web"].spec.revision.git is not None
    assert at_first.groups["web"].spec.revision.git.commit == V1
    assert at_second.desired_groups()["hello/web"].revision.git.commit == V2  # type: ignore[union-attr]
    assert resolve_commit(str(config_repo.path), "HEAD~1") == first


def test_working_tree_changes_are_not_read(config_repo: ConfigRepo) -> None:
    config_repo.write("app.yaml", APP.format(name="hello"))
    committed = config_repo.commit("app")
    config_repo.write("broken.yaml", "kind: [")  # uncommitted: must not affect loading the commit
    desired = load_git(GitSource(str(config_repo.path), "HEAD"))
    assert desired.commit == committed
    assert list(desired.applications) == ["hello"]


def test_invalid_commit_reports_errors_with_file_names_relative_to_the_folder(config_repo: ConfigRepo) -> None:
    config_repo.write("deploy/app.yaml", APP.format(name="hello"))
    config_repo.write("deploy/web.yaml", GROUP.format(commit="abc"))
    config_repo.commit("broken")
    with pytest.raises(ManifestErrors) as raised:
        load_git(GitSource(str(config_repo.path), "main", "deploy"))
    assert [str(e) for e in raised.value.errors] == [
        "web.yaml:7:43: DeploymentGroup/web: spec.revision.git.commit: 'abc' does not match the allowed pattern "
        "^[0-9a-f]{40}$"
    ]


def test_remote_url_is_mirrored_and_fetched(
    config_repo: ConfigRepo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    config_repo.write("app.yaml", APP.format(name="hello"))
    config_repo.commit("one")
    url = config_repo.path.as_uri()
    assert list(load_git(GitSource(url, "main")).applications) == ["hello"]
    config_repo.write("app2.yaml", APP.format(name="second"))
    newer = config_repo.commit("two")
    desired = load_git(GitSource(url, "main"))  # fetches into the existing mirror
    assert desired.commit == newer
    assert sorted(desired.applications) == ["hello", "second"]


@pytest.mark.parametrize(
    ("ref", "path", "message"),
    [
        ("no-such-branch", ".", "no commit named 'no-such-branch'"),
        ("main", "missing", "no folder 'missing'"),
        ("main", "app.yaml", "'app.yaml' is not a folder"),
    ],
)
def test_source_errors_are_clear(config_repo: ConfigRepo, ref: str, path: str, message: str) -> None:
    config_repo.write("app.yaml", APP.format(name="hello"))
    config_repo.commit("one")
    with pytest.raises(SourceError, match=message):
        load_git(GitSource(str(config_repo.path), ref, path))


def test_not_a_repository(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="not a Git repository"):
        load_git(GitSource(str(tmp_path), "main"))


def test_missing_local_path_is_not_mistaken_for_a_url(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no such folder"):
        load_git(GitSource(str(tmp_path / "nope"), "main"))


@pytest.mark.parametrize(
    ("stderr", "reason"),
    [
        # What GitHub answers over https for a private or missing repository without credentials.
        ("Cloning into bare repository '/c/m'...\nremote: Repository not found.\n"
         "fatal: repository 'https://github.com/acme/nope.git/' not found\n",
         "remote: Repository not found.; repository 'https://github.com/acme/nope.git/' not found"),
        ("Cloning into bare repository '/c/m'...\nremote: Invalid username or password.\n"
         "fatal: Authentication failed for 'https://git.example.com/ops/config.git/'\n",
         "remote: Invalid username or password.; Authentication failed for "
         "'https://git.example.com/ops/config.git/'"),
        ("fatal: 'ops/config.git' does not appear to be a git repository\nfatal: Could not read from remote "
         "repository.\n\nPlease make sure you have the correct access rights\nand the repository exists.\n",
         "'ops/config.git' does not appear to be a git repository"),
        ("fatal: Could not read from remote repository.\n", "Could not read from remote repository."),
        ("something unexpected\n", "something unexpected"),
    ],
)
def test_git_reason_keeps_the_lines_that_say_why(stderr: str, reason: str) -> None:
    import git

    error = git.exc.GitCommandError(["git", "clone", "--mirror", "https://x", "/c/m"], 128, stderr.encode())
    assert git_reason(error.stderr, error.status) == reason


DEPLOY_YAML = "store: file:///var/lib/fleetshift/store\nreconcile: {timeout: 10m}\n"
WORKFLOW = "name: ci\non: [push]\njobs:\n  test:\n    runs-on: ubuntu-latest\n    steps: [{run: make}]\n"
GITLAB_CI = "stages: [test]\ntest:\n  script: [make]\n"


def a_normal_repository(config_repo: ConfigRepo) -> None:
    """What a config repo usually holds besides manifests: its settings, CI for GitHub and GitLab."""
    config_repo.write("deploy.yaml", DEPLOY_YAML)
    config_repo.write(".github/workflows/ci.yml", WORKFLOW)
    config_repo.write(".gitlab-ci.yml", GITLAB_CI)
    config_repo.write("bitbucket-pipelines.yml", "pipelines: {default: [{step: {script: [make]}}]}\n")
    config_repo.write(".pre-commit-config.yaml", "repos: []\n")
    config_repo.write("manifests/app.yaml", APP.format(name="hello"))


def test_default_path_skips_settings_ci_and_hidden_files(config_repo: ConfigRepo, tmp_path: Path) -> None:
    a_normal_repository(config_repo)
    config_repo.commit("a normal layout")
    desired = load_git(GitSource(str(config_repo.path)))  # the defaults: ref HEAD, path "."
    assert list(desired.applications) == ["hello"]
    assert list(load_git(GitSource(str(config_repo.path), "HEAD", "manifests")).applications) == ["hello"]
    assert list(load_folder(config_repo.path).applications) == ["hello"]


def test_everything_else_is_still_reported(config_repo: ConfigRepo) -> None:
    """Skipping is by path only: a YAML file that is not a manifest anywhere else is still an error."""
    a_normal_repository(config_repo)
    config_repo.write("manifests/deploy.yaml", DEPLOY_YAML)  # not at the top: not the settings file
    config_repo.write("docker-compose.yml", "services: {web: {image: nginx}}\n")
    config_repo.commit("stray YAML")
    with pytest.raises(ManifestErrors) as raised:
        load_git(GitSource(str(config_repo.path)))
    assert [str(e) for e in raised.value.errors] == [
        "docker-compose.yml:1:1: document 1: apiVersion: must be 'deploy/v1' (missing)",
        "manifests/deploy.yaml:1:1: document 1: apiVersion: must be 'deploy/v1' (missing)",
    ]


def test_a_manifest_named_deploy_yaml_is_read(config_repo: ConfigRepo) -> None:
    config_repo.write("deploy.yaml", APP.format(name="named-deploy"))
    config_repo.commit("a manifest that happens to be called deploy.yaml")
    assert list(load_git(GitSource(str(config_repo.path))).applications) == ["named-deploy"]


def test_a_file_given_by_name_is_always_read(tmp_path: Path) -> None:
    hidden = tmp_path / ".app.yaml"
    hidden.write_text(APP.format(name="hello"))
    assert list(load_folder(hidden).applications) == ["hello"]


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        (".github/workflows/ci.yml", "hidden"),
        (".gitlab-ci.yml", "hidden"),
        ("apps/.drafts/web.yaml", "hidden"),
        ("azure-pipelines.yml", "a CI file"),
        ("deploy.yaml", "the reconciler's settings file"),
        ("team/deploy.yaml", None),
        ("team/azure-pipelines.yml", None),
        ("web.yaml", None),
    ],
)
def test_not_a_manifest(name: str, reason: str | None) -> None:
    assert not_a_manifest(name, DEPLOY_YAML.encode()) == reason


def test_the_git_program_and_gitpython_read_a_commit_alike(config_repo: ConfigRepo, tmp_path: Path) -> None:
    """The fast path (reconciler/desired/gitcli.py, the git program) and the GitPython path it falls back to read
    the same files at the same commit, whatever the tree holds: nested and hidden folders, non-YAML files, a
    symlink, a file over the size limit, a sub-folder, refs of every kind. Where the fast path gives up (a ref
    naming both a branch and a tag, a missing folder, a folder that is not a repository) the GitPython path's
    error is what the user sees."""
    config_repo.write("deploy/app.yaml", APP.format(name="hello"))
    config_repo.write("deploy/nested/deeper/web.yml", GROUP.format(commit=V1))
    config_repo.write("deploy/.hidden/x.yaml", "not: read")
    config_repo.write("deploy/README.md", "# not yaml")
    config_repo.write("deploy/big.yaml", b"a: " + b"x" * (MAX_FILE_BYTES + 10))
    config_repo.write("deploy/same.yaml", APP.format(name="hello"))  # same blob as app.yaml
    (config_repo.path / "deploy/link.yaml").symlink_to("app.yaml")
    config_repo.write("deploy.yaml", "store: file:///tmp/x\n")
    first = config_repo.commit("v1")
    config_repo.repo.create_tag("v1", message="annotated")
    config_repo.write("deploy/app.yaml", APP.format(name="other"))
    config_repo.commit("v2")
    repository = str(config_repo.path)
    git_dir = gitcli.local_git_dir(repository)
    assert git_dir is not None
    for ref in ("main", "v1", "refs/tags/v1", first[:10], "HEAD~1", first):
        fast = sources.files_from_commit(repository, ref, "deploy")
        slow = sources._files_from_commit(repository, ref, "deploy", fetch=False)
        assert gitcli.resolve(git_dir, ref) == fast[0] == slow[0] == sources.resolve_commit(repository, ref)
        assert sorted(fast[1], key=lambda f: f.name) == sorted(slow[1], key=lambda f: f.name), ref
    names = {file.name: file for file in sources.files_from_commit(repository, "main", "deploy")[1]}
    assert set(names) == {"app.yaml", "nested/deeper/web.yml", "big.yaml", "same.yaml", "link.yaml"}
    assert names["big.yaml"].oversize == MAX_FILE_BYTES + 13 and names["big.yaml"].content == b""
    assert names["link.yaml"].content == b"app.yaml"  # a symlink is stored as its target, in both paths
    whole = sources.files_from_commit(repository, "main", ".")[1]
    assert {file.name for file in whole} == {f"deploy/{name}" for name in names}  # deploy.yaml: settings

    config_repo.repo.create_head("v1")  # now a branch and a tag
    assert gitcli.resolve(git_dir, "v1") is None
    with pytest.raises(SourceError, match="names both a branch and a tag"):
        sources.files_from_commit(repository, "v1", "deploy")
    assert gitcli.tree_files(git_dir, first, "nowhere", (".yaml",), MAX_FILE_BYTES) is None
    with pytest.raises(SourceError, match="no folder 'nowhere'"):
        sources.files_from_commit(repository, "main", "nowhere")
    assert gitcli.tree_files(git_dir, first, "deploy/../deploy", (".yaml",), MAX_FILE_BYTES) is None
    with pytest.raises(SourceError, match="no folder"):  # git would have normalised it; GitPython refuses it
        sources.files_from_commit(repository, "main", "deploy/nested/../nested")
    with pytest.raises(SourceError, match="no commit named 'nope'"):
        sources.resolve_commit(repository, "nope")
    plain = tmp_path / "plain"
    plain.mkdir()
    assert gitcli.local_git_dir(str(plain)) is None
    inside = config_repo.path / "deploy"  # a folder inside a repository is not that repository
    assert gitcli.local_git_dir(str(inside)) is None
    with pytest.raises(SourceError, match="not a Git repository"):
        sources.resolve_commit(str(inside), "main")
