"""`python -m mailgate doctor`: does the deployment work from the outside, and if not,
what exactly to fix.

The doctor reads the stack's settings and the deployed values (the public address and
the gateway's tailnet address, from `pulumi stack output --json` or options), then checks
from wherever it runs, as a sender or a mail client would see it: DNS, every public port,
banners, certificates, that the server is no open relay. With `--ssh` it also looks from
the inside: that its own connections reached Postfix and Dovecot with its real address,
the tunnel, the home filter, the relay's login and Postfix's queue.

Every check ends ok, warn, FAIL or skipped (with why); a check that cannot run never
passes. Nothing is sent: the open-relay probe stops at RCPT, the relay login at AUTH.
"""

from __future__ import annotations

# The DNS blocklists the gateway's address is looked up in (warn only). Answers in
# 127.255.255.0/24 mean the list refused the query (e.g. through a public resolver).
BLOCKLISTS = ("zen.spamhaus.org", "bl.spamcop.net", "b.barracudacentral.org")
