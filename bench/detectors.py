"""Detector detection rate on variant spellings, false positives, and scan cost.

Detection: for each variant family of :mod:`enclave.testing.detector_variants`
(separators, Unicode spaces and dashes, zero-width characters, other digits,
IBAN case and look-alikes, a value split over two messages, base64, hex) and
each kind of value it applies to, ``--samples`` fresh valid values (seeded)
are spelled that way and scanned; the table prints how many were found.

False positives: the clean corpus (``CLEAN`` there and this script's own
request texts) is scanned as it is, with the same Unicode tricks applied
(``disguise``), and split in two messages, between two words or anywhere; the
count is of requests with any finding.

Cost: the scan cost per request, next to ``str.lower()`` over the same text.

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
- ``clean 2 KB, non-ASCII``: the clean request with curly quotes, an em dash,
  Swedish letters and a Russian sentence: the normalisation's slower path.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from enclave.gateway.detectors import DetectorSet
from enclave.testing.detector_variants import CLEAN, FAMILIES, KINDS, disguise, variant

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--repeat", type=int, default=2000, help="timed scans per input")
parser.add_argument("--samples", type=int, default=200, help="values per family and kind")
parser.add_argument("--seed", type=int, default=11)
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

NON_ASCII = [
    SYSTEM.replace("'", "\u2019"),
    QUESTION.replace(": we", " \u2014 we") + " Kvartalsrapporten för 2024 är klar, tack!",
    ANSWER + " Отчёт за квартал готов.",
    TOOL,
]

detectors = DetectorSet()
print(f"detectors: {', '.join(detectors.names)}")

# --- detection rate per variant family -----------------------------------------------------
rng = random.Random(args.seed)
print(f"\ndetection rate, {args.samples} values per family and kind (- : does not apply)")
print(f"{'family':<32}" + "".join(f"{kind:>14}" for kind in KINDS) + f"{'all':>9}")
found_all = total_all = 0
for family in FAMILIES:
    cells, found_family, total_family = [], 0, 0
    for kind in KINDS:
        found = total = 0
        for _ in range(args.samples):
            texts = variant(rng, family, kind)
            if texts is None:
                break
            total += 1
            found += any(finding.type == kind for finding in detectors.scan(texts))
        cells.append(f"{found / total:>14.1%}" if total else f"{'-':>14}")
        found_family, total_family = found_family + found, total_family + total
    found_all, total_all = found_all + found_family, total_all + total_family
    print(f"{family:<32}" + "".join(cells) + f"{found_family / total_family:>9.1%}")
print(f"{'all families':<32}{'':>{14 * len(KINDS)}}{found_all / total_all:>9.1%}")

# --- false positives on the clean corpus ---------------------------------------------------
corpus = [*CLEAN, SYSTEM, QUESTION, ANSWER, TOOL, CODE]
plain = sum(bool(detectors.scan([text])) for text in corpus)
disguised = between_words = anywhere = 0
for text in corpus:
    for _ in range(args.samples // 4):
        variant_text = disguise(rng, text)
        disguised += bool(detectors.scan([variant_text]))
        spaces = [i for i, char in enumerate(variant_text) if char.isspace()] or [0]
        for position, counter in (
            (rng.choice(spaces), "between_words"),
            (rng.randint(0, len(variant_text)), "anywhere"),
        ):
            hit = bool(detectors.scan([variant_text[:position], variant_text[position:]]))
            if counter == "between_words":
                between_words += hit
            else:
                anywhere += hit
tries = len(corpus) * (args.samples // 4)
print(f"\nfalse positives (requests with any finding), clean corpus of {len(corpus)} texts:")
print(f"  as written            {plain:>5} of {len(corpus)}")
print(f"  disguised             {disguised:>5} of {tries}")
print(f"  disguised, split      {between_words:>5} of {tries}  (two messages, between words)")
print(f"  disguised, split      {anywhere:>5} of {tries}  (anywhere, also inside a token)")

# --- scan cost -----------------------------------------------------------------------------
print()
print(f"{'input':<22} {'bytes':>7} {'scan µs':>9} {'lower() µs':>10} {'ratio':>7}  findings")
for label, texts in (
    ("clean 2 KB", clean),
    ("findings 2 KB", with_findings),
    ("document 100 KB", document),
    ("clean 2 KB, non-ASCII", NON_ASCII),
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
        f"{label:<22} {len(joined.encode()):>7} {scan_us:>9.1f} {lower_us:>10.2f} "
        f"{scan_us / lower_us:>6.1f}x  {summary}"
    )
