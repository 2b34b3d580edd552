"""Identity from the engine (fedbcs_fl/identity.py): a reply's site name is a claim."""

from fedbcs_fl.identity import Enrolment


def test_a_node_enrols_as_the_site_it_first_claims():
    enrolment = Enrolment()
    assert enrolment.name(7) == "node 7"
    assert enrolment.admit(7, "site-A") == ("site-A", None)
    assert enrolment.name(7) == "site-A"
    assert enrolment.admit(7, "site-A") == ("site-A", None)


def test_a_second_node_claiming_an_enrolled_site_is_rejected_under_its_own_id():
    enrolment = Enrolment()
    enrolment.admit(7, "site-A")
    assert enrolment.admit(9, "site-A") == (
        "node 9",
        "claims site-A, which another node enrolled as",
    )
    assert enrolment.name(9) == "node 9"  # it did not enrol
    assert enrolment.admit(9, "site-B") == ("site-B", None)


def test_an_enrolled_node_that_claims_another_site_is_rejected_under_its_site():
    enrolment = Enrolment({"site-B": "site-B"})  # as the simulator enrols its clients
    assert enrolment.admit("site-B", "site-A") == (
        "site-B",
        "claims to be site-A, but is enrolled as site-B",
    )
    assert enrolment.admit("site-B", None) == ("site-B", None)  # no claim: the engine's


def test_a_claim_that_is_no_name_is_rejected():
    enrolment = Enrolment()
    assert enrolment.admit(3, 7) == ("node 3", "its site name is a int, not a string")
    assert enrolment.admit(3, None) == ("node 3", "names no site")
