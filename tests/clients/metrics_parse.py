"""Parses /metrics text with the Prometheus Python client's own parsers.
Driven by tests/metrics_format.rs.

    python3 tests/clients/metrics_parse.py classic|openmetrics < TEXT

classic: prometheus_client.parser (the text format 0.0.4);
openmetrics: prometheus_client.openmetrics.parser (strict OpenMetrics 1.0).
Prints one JSON object: {family: {"type": type, "samples": [[name, labels,
value], ...]}}; a parse error exits 1 with it on stderr.
"""

import json
import sys


def main():
    if len(sys.argv) != 2 or sys.argv[1] not in ("classic", "openmetrics"):
        print(__doc__, file=sys.stderr)
        return 2
    text = sys.stdin.read()
    if sys.argv[1] == "classic":
        from prometheus_client.parser import text_string_to_metric_families
    else:
        from prometheus_client.openmetrics.parser import text_string_to_metric_families
    out = {}
    for fam in text_string_to_metric_families(text):
        if fam.name in out:
            raise SystemExit(f"family {fam.name} twice")
        out[fam.name] = {
            "type": fam.type,
            "samples": [[s.name, s.labels, s.value] for s in fam.samples],
        }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
