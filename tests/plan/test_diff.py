"""The semantic diff: what counts as a change in a manifest, and how a change is named."""

from __future__ import annotations

from reconciler.desired.loader import load_files
from reconciler.desired.manifests import Desired
from reconciler.desired.sources import ManifestFile
from reconciler.plan.diff import diff_manifests, diff_values, manifests_digest
from reconciler.plan.model import FieldChange
from tests.plan.scenarios import APPLICATION, CONFIGS, WEB, WEB_A, WEB_B, WEB_REFORMATTED, WORKER


def desired(**files: str) -> Desired:
    return load_files([ManifestFile(f"{name}.yaml", text.encode()) for name, text in files.items()], commit="0" * 40)


BASE = {"application": APPLICATION, "configs": CONFIGS, "web": WEB, "worker": WORKER}


def test_formatting_comments_order_and_explicit_defaults_are_no_change() -> None:
    before = desired(**BASE)
    after = desired(**{**BASE, "web": WEB_REFORMATTED})
    assert diff_manifests(before, after) == []
    assert manifests_digest(before) == manifests_digest(after)


def test_moving_a_document_to_another_file_is_no_change() -> None:
    before = desired(**BASE)
    after = desired(application=APPLICATION, configs=CONFIGS, everything=WEB + "---\n" + WORKER)
    assert diff_manifests(before, after) == []


def test_a_changed_field_is_named_by_its_dotted_path() -> None:
    before = desired(**BASE)
    after = desired(**{**BASE, "web": WEB.replace(WEB_A, WEB_B).replace("canary-half",
                                                                          "CodeDeployDefault.HalfAtATime")})
    [change] = diff_manifests(before, after)
    assert (change.kind, change.name, change.change) == ("DeploymentGroup", "web", "changed")
    assert change.fields == [
        FieldChange(path="deploymentConfig", before="canary-half", after="CodeDeployDefault.HalfAtATime"),
        FieldChange(path="revision.git.commit", before=WEB_A, after=WEB_B),
    ]
    assert change.source == "web.yaml:1"


def test_a_list_item_changed_in_place_is_named_by_index() -> None:
    before = {"tagSets": [[{"key": "app", "value": "web"}], [{"key": "env", "value": "prod"}]]}
    after = {"tagSets": [[{"key": "app", "value": "web"}], [{"key": "env", "value": "staging"}]]}
    assert diff_values(before, after) == [FieldChange(path="tagSets.1.0.value", before="prod", after="staging")]


def test_a_list_that_grows_is_shown_whole() -> None:
    assert diff_values({"hosts": ["a", "b"]}, {"hosts": ["b", "c", "a"]}) == [
        FieldChange(path="hosts", before=["a", "b"], after=["b", "c", "a"])
    ]
    assert diff_values({"hosts": ["a", "b"]}, {"hosts": ["b", "a"]}) == []


def test_a_new_subtree_is_one_change() -> None:
    assert diff_values({"x": 1}, {"x": 1, "canary": {"hosts": 1, "bakeTime": "5m"}}) == [
        FieldChange(path="canary", before=None, after={"hosts": 1, "bakeTime": "5m"})
    ]


def test_added_and_removed_objects_list_their_fields() -> None:
    before = desired(**BASE)
    after = desired(application=APPLICATION, configs=CONFIGS, web=WEB)
    [removed] = diff_manifests(before, after)
    assert (removed.kind, removed.name, removed.change) == ("DeploymentGroup", "worker", "removed")
    assert {f.path for f in removed.fields} >= {"application", "revision", "targets", "deploymentConfig"}
    assert all(f.after is None for f in removed.fields)

    [added] = diff_manifests(after, before)
    assert added.change == "added" and all(f.before is None for f in added.fields)


def test_labels_are_fields_but_the_name_is_the_identity() -> None:
    before = desired(**BASE)
    after = desired(**{**BASE, "web": WEB.replace("team: storefront", "team: platform")})
    [change] = diff_manifests(before, after)
    assert change.fields == [FieldChange(path="metadata.labels.team", before="storefront", after="platform")]
    renamed = desired(**{**BASE, "web": WEB.replace("name: web", "name: shopfront")})
    assert [(c.name, c.change) for c in diff_manifests(before, renamed)] == [
        ("shopfront", "added"), ("web", "removed")]


def test_objects_are_ordered_applications_configs_groups() -> None:
    after = desired(application=APPLICATION.replace("The shop", "A shop"),
                    configs=CONFIGS.replace("2m", "3m"), web=WEB.replace(WEB_A, WEB_B), worker=WORKER)
    assert [c.kind for c in diff_manifests(desired(**BASE), after)] == [
        "Application", "DeploymentConfig", "DeploymentGroup"]
