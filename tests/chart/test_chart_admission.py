"""The admission policy as rendered: on by default, bound to deny, off with the opt-out.

tests/integration/test_admission.py shows what it refuses on the real API server.
"""

from __future__ import annotations

from chart_helpers import Render, by_kind, one

POLICY_KINDS = {"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}


def test_the_policy_is_rendered_and_bound_to_deny_by_default(render: Render) -> None:
    objects = render()
    policy = one(objects, "ValidatingAdmissionPolicy")
    binding = one(objects, "ValidatingAdmissionPolicyBinding")
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    assert binding["spec"]["validationActions"] == ["Deny"]
    assert "matchResources" not in binding["spec"], "every namespace"
    spec = policy["spec"]
    assert spec["failurePolicy"] == "Fail"
    assert spec["matchConstraints"]["resourceRules"] == [
        {
            "apiGroups": ["lparkube.io"],
            "apiVersions": ["*"],
            "operations": ["CREATE", "UPDATE"],
            "resources": ["partitions"],  # not partitions/status: the operator's status writes
        }
    ]
    for validation in spec["validations"]:
        assert validation["reason"] == "Forbidden"
        assert validation["message"], "shown when the message expression fails"
        assert validation["messageExpression"]


def test_each_release_has_its_own_cluster_scoped_policy(render: Render) -> None:
    names = {
        release: {
            o["metadata"]["name"] for o in render(release=release) if o["kind"] in POLICY_KINDS
        }
        for release in ("lparkube", "other")
    }
    assert names == {
        "lparkube": {"lparkube-partition-rights"},
        "other": {"other-lparkube-partition-rights"},
    }


def test_the_opt_out_renders_no_policy(render: Render) -> None:
    objects = render("--set", "admissionPolicy.enabled=false")
    assert not POLICY_KINDS & by_kind(objects).keys()
    assert one(objects, "Deployment")
