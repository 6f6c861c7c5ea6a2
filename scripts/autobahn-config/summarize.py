# Summarizes an Autobahn|Testsuite fuzzingclient report (reports/servers/index.json).
#
#   python summarize.py INDEX_JSON AGENT
#
# Prints the number of cases per `behavior` (OK, NON-STRICT, INFORMATIONAL,
# UNIMPLEMENTED, FAILED) and per `behaviorClose`, then every case that is not
# OK/INFORMATIONAL with its description and what the testee did. Exits 1 if any
# case FAILED, any behaviorClose is not OK/INFORMATIONAL, or the report is empty.
# Runs under Python 2.7 (the testsuite's venv) and Python 3 alike.
from __future__ import print_function

import json
import os
import sys

BEHAVIORS = ["OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED"]
GOOD_CLOSE = ("OK", "INFORMATIONAL")


def case_key(case_id):
    return [int(p) if p.isdigit() else p for p in case_id.split(".")]


def counts(cases, field):
    out = {}
    for c in cases.values():
        out[c.get(field, "?")] = out.get(c.get(field, "?"), 0) + 1
    return out


def line(label, tally):
    names = BEHAVIORS + sorted(k for k in tally if k not in BEHAVIORS)
    return label + "  ".join("%s=%d" % (n, tally.get(n, 0)) for n in names)


def strip_html(text):
    return (text or "").replace("<br>", " ").replace("\n", " ").strip()


def detail(report_dir, case_id, case):
    print("  %s  behavior=%s behaviorClose=%s remoteCloseCode=%s duration=%sms"
          % (case_id, case.get("behavior"), case.get("behaviorClose"),
             case.get("remoteCloseCode"), case.get("duration")))
    path = os.path.join(report_dir, case.get("reportfile", ""))
    try:
        with open(path) as f:
            full = json.load(f)
    except (IOError, OSError, ValueError):
        return
    print("      description: %s" % strip_html(full.get("description"))[:400])
    print("      expectation: %s" % strip_html(full.get("expectation"))[:400])
    print("      result:      %s" % strip_html(full.get("result"))[:400])
    print("      close:       %s" % strip_html(full.get("resultClose"))[:300])
    print("      expected:    %s" % str(full.get("expected"))[:400])
    print("      received:    %s" % str(full.get("received"))[:400])


def main():
    index_path, agent = sys.argv[1], sys.argv[2]
    with open(index_path) as f:
        index = json.load(f)
    cases = index.get(agent) or {}
    if not cases:
        print("autobahn: FAILED: the report has no cases for agent %r (%s)" % (agent, index_path))
        return 1
    behavior = counts(cases, "behavior")
    close = counts(cases, "behaviorClose")
    print("autobahn: %d cases for agent %s" % (len(cases), agent))
    print(line("  behavior:      ", behavior))
    print(line("  behaviorClose: ", close))
    failed = sorted((k for k, c in cases.items() if c.get("behavior") == "FAILED"), key=case_key)
    bad_close = sorted((k for k, c in cases.items() if c.get("behaviorClose") not in GOOD_CLOSE), key=case_key)
    notable = sorted((k for k, c in cases.items()
                      if c.get("behavior") not in ("OK", "INFORMATIONAL") or k in bad_close), key=case_key)
    report_dir = os.path.dirname(index_path)
    if notable:
        print("cases not OK/INFORMATIONAL:")
        for k in notable:
            detail(report_dir, k, cases[k])
    info = sorted((k for k, c in cases.items() if c.get("behavior") == "INFORMATIONAL"), key=case_key)
    print("INFORMATIONAL cases: %s" % (", ".join(info) if info else "none"))
    print("FAILED cases: %s" % (", ".join(failed) if failed else "none"))
    print("behaviorClose not OK/INFORMATIONAL: %s" % (", ".join(bad_close) if bad_close else "none"))
    if failed or bad_close:
        print("autobahn: FAILED")
        return 1
    print("autobahn: passed (0 FAILED, every behaviorClose OK/INFORMATIONAL)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
