"""Print the ratio table (tritri vs reference vs naive) of a pytest-benchmark JSON as markdown.

    python perf/report.py RUN.json

Benchmarks are matched by ``group``; ``extra_info["impl"]`` names the implementation. Ratios are
median(other) / median(tritri): above 1 means tritri is faster.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict

ORDER = ["tritri", "reference", "naive"]


def ratio_table(data: dict) -> str:
    groups: dict[str, dict[str, float]] = defaultdict(dict)
    for bench in data["benchmarks"]:
        impl = bench.get("extra_info", {}).get("impl", bench["name"])
        groups[bench["group"]][impl] = bench["stats"]["median"]
    impls = [i for i in ORDER if any(i in g for g in groups.values())]
    impls += sorted({i for g in groups.values() for i in g} - set(impls))
    head = ["case"] + [f"{i} median (ms)" for i in impls]
    head += [f"{i} / tritri" for i in impls if i != "tritri"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for group in sorted(groups):
        times = groups[group]
        row = [group] + [f"{times[i] * 1e3:.3f}" if i in times else "-" for i in impls]
        for i in impls:
            if i == "tritri":
                continue
            ok = i in times and "tritri" in times
            row.append(f"{times[i] / times['tritri']:.2f}x" if ok else "-")
        lines.append("| " + " | ".join(row) + " |")
    machine = data.get("machine_info", {})
    where = machine.get("gpu") or machine.get("cpu", {}).get("brand_raw", "cpu")
    return f"Machine: {where}\n\n" + "\n".join(lines)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__)
        return 2
    with open(argv[0]) as f:
        print(ratio_table(json.load(f)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
