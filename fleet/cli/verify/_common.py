"""What the `fleet verify` subcommands share."""
import json
from xml.sax.saxutils import escape


def junit(path, checks, rep):
    fails = sum(1 for _, ok, _ in checks if not ok)
    cases = []
    for name, ok, detail in checks:
        body = "" if ok else f'<failure message="{escape(detail, {chr(34): "&quot;"})}"/>'
        cases.append(f'  <testcase classname="verify.throughput" name="{name}">{body}</testcase>')
    xml = (f'<?xml version="1.0" encoding="utf-8"?>\n<testsuite name="fleet-verify-throughput" tests="{len(checks)}" '
           f'failures="{fails}" time="{rep.get("wall_s", 0)}">\n' + "\n".join(cases)
           + f'\n  <system-out>{escape(json.dumps(rep))}</system-out>\n</testsuite>\n')
    with open(path, "w") as f:
        f.write(xml)
