"""mailgate's policy pack; the rules themselves are in mailgate_policies.py.

Constructing the PolicyPack starts the analyzer the Pulumi CLI talks to, so this file
does nothing else and the tests import mailgate_policies instead.
"""

from pulumi_policy import EnforcementLevel, PolicyPack

from mailgate_policies import POLICIES

PolicyPack(
    name="mailgate",
    enforcement_level=EnforcementLevel.MANDATORY,
    policies=POLICIES,
)
