#!/usr/bin/env python3
"""Run scim2-tester's check_server against a live SCIM server and judge the result.

What it is for: the conformance step of .ci/run (and a developer's own check). It builds a
scim2-client over httpx2 with a bearer token, runs every check scim2-tester has, prints one line
per result, and exits 1 when any result is ERROR or CRITICAL (a MUST the server breaks), 0
otherwise. DEVIATION (a SHOULD) is printed and counted but does not fail the run.

What it is not: a test of deprovd's own behaviour; that lives in the Rust tests.

Usage: conformance.py URL --token TOKEN [--json-out FILE] [--timeout SECONDS]
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import traceback

try:
    import httpx2
    from scim2_client.engines.httpx2 import SyncSCIMClient
    from scim2_tester import Status, check_server
except ImportError as exc:  # pragma: no cover - environment problem, not a check result
    print(f"conformance.py: missing package ({exc}); install scim2-tester and "
          "'scim2-client[httpx2]'", file=sys.stderr)
    sys.exit(2)

FAILING = {Status.ERROR, Status.CRITICAL}


def _short(value: object, limit: int = 600) -> str:
    text = value if isinstance(value, str) else repr(value)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + " …"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="SCIM base URL, e.g. http://127.0.0.1:8080/scim/v2")
    parser.add_argument("--token", required=True, help="bearer token")
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--json-out", help="also write every result as JSON to this file")
    parser.add_argument("--verbose", action="store_true", help="print data of passing checks too")
    args = parser.parse_args()

    base = args.url.rstrip("/") + "/"
    http = httpx2.Client(
        base_url=base,
        headers={"Authorization": f"Bearer {args.token}"},
        timeout=args.timeout,
        trust_env=False,
    )
    client = SyncSCIMClient(http)

    try:
        results = check_server(client)
    except Exception:  # a crash of the checker itself is a failure to conform, shown in full
        traceback.print_exc()
        print("scim2-tester: check_server raised; treating as CRITICAL")
        return 1
    finally:
        http.close()

    counts: collections.Counter[str] = collections.Counter()
    failures = []
    for r in results:
        status = r.status.name
        counts[status] += 1
        where = f"[{r.resource_type}] " if r.resource_type else ""
        line = f"{status:<10} {where}{r.title or '?'}"
        if r.reason:
            line += f": {_short(r.reason)}"
        print(line)
        if r.status in FAILING or (args.verbose and r.data is not None):
            if r.data is not None:
                print(f"           data: {_short(r.data, 2000)}")
        if r.status in FAILING:
            failures.append(r)

    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as fh:
            json.dump(
                [
                    {
                        "status": r.status.name,
                        "title": r.title,
                        "resource_type": r.resource_type,
                        "reason": r.reason,
                        "data": r.data if isinstance(r.data, (str, int, float, list, dict))
                        else repr(r.data),
                        "tags": sorted(r.tags),
                    }
                    for r in results
                ],
                fh,
                indent=2,
                default=repr,
            )

    summary = ", ".join(f"{n} {name}" for name, n in sorted(counts.items()))
    print(f"scim2-tester: {len(results)} checks: {summary}")
    if failures:
        print(f"scim2-tester: FAILED: {len(failures)} ERROR/CRITICAL result(s)")
        return 1
    print("scim2-tester: OK (no ERROR or CRITICAL)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
