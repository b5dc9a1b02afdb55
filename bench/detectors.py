"""Detector scan cost per request, next to ``str.lower()`` over the same text.

The gateway scans every chat request's messages before routing it, so the scan
sits on the request path (budget: the whole gateway adds < 2 ms p50; a clean
1-4 KB request should scan in well under 100 µs). Three inputs, all detectors
enabled, each timed with ``time.perf_counter_ns`` over many repetitions; the
median per scan is printed with the median of ``str.lower()`` over the same
joined text measured in the same run, as a machine-speed baseline:

    .venv/bin/python bench/detectors.py
    .venv/bin/python bench/detectors.py --repeat 5000

- ``clean 2 KB``: a system prompt, a business question with dates, amounts and
  a version number, an assistant answer and a JSON tool result; nothing to find.
- ``findings 2 KB``: the same with an e-mail, a phone number, an IBAN, a card,
  a personnummer and an API key spread over the messages.
- ``document 100 KB``: ordinary prose and code pasted as one user message.
"""

from __future__ import annotations

import argparse
import statistics
import time

from enclave.gateway.detectors import DetectorSet

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--repeat", type=int, default=2000, help="timed scans per input")
args = parser.parse_args()

SYSTEM = (
    "You are a helpful assistant for the finance team at Northwind Traders. Answer briefly, "
    "cite the policy section you rely on, and never invent numbers. If a question is about "
    "a customer, look the customer up with the lookup tool before you answer."
)
QUESTION = (
    "Hi! Following up on yesterday's meeting (2024-01-15) about the quarterly budget review: "
    "we agreed to move the vendor evaluation to next week and to share the draft proposal with "
    "finance before Friday. Revenue was 1 234 567 SEK in Q4, up 12.5% on Q3, and support "
    "tickets are down compared with last year. Release 2.14.3 shipped on 2024-01-12 at 10:30. "
    "Could you summarise the open hiring positions, including expected start dates and the "
    "interview panel for each role, and draft a short note to the team about the new travel "
    "policy? Thanks, and have a great weekend!"
)
ANSWER = (
    "Here is a summary of the open positions. Two engineering roles (backend and data) start "
    "in March; the panel is the platform lead, one senior engineer and a recruiter. The "
    "finance analyst role starts in April with the controller and the CFO on the panel. For "
    "the travel note I suggest three points: book through the portal, economy for flights "
    "under six hours, and receipts within 30 days. Shall I also prepare the agenda for the "
    "next review meeting and a checklist for onboarding the new hires?"
)
TOOL = (
    '{"customer": {"id": 48213, "name": "Northwind Traders AB", "segment": "enterprise", '
    '"created": "2019-03-04T09:15:00Z", "open_orders": 7, "credit_limit": 250000.0, '
    '"account_manager": "team-nordics", "last_invoice": {"number": "INV-2024-0117", '
    '"amount": 18450.75, "currency": "SEK", "due": "2024-02-14"}, "tags": ["priority", '
    '"annual-contract"], "homepage": "https://northwind.example/about/company-history"}}'
)
FINDINGS = (
    "Please update the supplier record: contact anna.lindqvist@northwind.example or call "
    "+46 70 123 45 67. Pay invoice INV-2024-0117 to SE45 5000 0000 0583 9825 7466; the "
    "corporate card is 4111 1111 1111 1111. The contact's personnummer is 811228-9874. Use the "
    "key sk-proj-Q7dLm2ZpX9vR4tK8wN3bY6cF1hJ5sA0e for the export script."
)
clean = [SYSTEM, QUESTION, ANSWER, TOOL]
with_findings = [SYSTEM, QUESTION + " " + FINDINGS, ANSWER, TOOL]
CODE = '''
def route_request(request, providers):
    """Pick the first provider cleared for the request's classification."""
    for provider in providers:
        if provider.clearance >= request.classification:
            return provider
    raise NoEligibleProvider(request.classification)
'''
document = [(QUESTION + "\n" + ANSWER + "\n" + CODE + "\n") * 1]
while len(document[0]) < 100_000:
    document[0] += QUESTION + "\n" + ANSWER + "\n" + CODE + "\n"
document[0] = document[0][:100_000]

detectors = DetectorSet()
print(f"detectors: {', '.join(detectors.names)}")
print(f"{'input':<16} {'bytes':>7} {'scan µs':>9} {'lower() µs':>10} {'ratio':>7}  findings")
for label, texts in (
    ("clean 2 KB", clean),
    ("findings 2 KB", with_findings),
    ("document 100 KB", document),
):
    joined = "\n".join(texts)
    repeat = args.repeat if len(joined) < 10_000 else max(20, args.repeat // 20)
    findings = detectors.scan(texts)
    for _ in range(min(repeat, 50)):  # warm-up: caches, branch predictors
        detectors.scan(texts)
        joined.lower()
    scan_ns, lower_ns = [], []
    for _ in range(repeat):  # interleaved so both see the same machine state
        start = time.perf_counter_ns()
        detectors.scan(texts)
        middle = time.perf_counter_ns()
        joined.lower()
        end = time.perf_counter_ns()
        scan_ns.append(middle - start)
        lower_ns.append(end - middle)
    scan_us = statistics.median(scan_ns) / 1000
    lower_us = statistics.median(lower_ns) / 1000
    summary = ", ".join(f"{f.type} x{f.count}" for f in findings) or "none"
    print(
        f"{label:<16} {len(joined.encode()):>7} {scan_us:>9.1f} {lower_us:>10.2f} "
        f"{scan_us / lower_us:>6.1f}x  {summary}"
    )
