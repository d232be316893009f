"""The report of `scripts/bench_serve.py`: per-round medians, ratios and the issue's targets.

    python scripts/bench_serve_report.py [RESULTS_JSON]   # re-print a saved run (default: the last)

Every ratio is taken within a round (a server against the raw onnxruntime sweep of its own
round, or against a peer measured minutes apart) and then the median over rounds is shown: on
a shared machine whose speed drifts by 25% within minutes, ratios of numbers measured a quarter
of an hour apart say more about the machine than about the servers.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

DEFAULT_RESULTS = Path.home() / ".cache" / "vit-bench" / "bench_serve.json"


def per_round(rounds: list[dict[str, Any]], value: Any) -> float | None:
    """Median over rounds of ``value(round)``; rounds where it is None (a system missing) are left out."""
    values = [v for v in (value(r) for r in rounds) if v is not None]
    return statistics.median(values) if values else None


def report(results: dict[str, Any]) -> None:
    rounds = [  # concurrency keys as ints (JSON made them strings)
        {**r, "servers": {n: {int(c): m for c, m in by_c.items()} for n, by_c in r["servers"].items()}}
        for r in results["rounds"]
    ]

    def run(name: str, c: int) -> Any:
        return lambda r: r["servers"].get(name, {}).get(c)

    def stat(name: str, c: int, key: Callable[[dict[str, Any], dict[str, Any]], float]) -> float | None:
        return per_round(rounds, lambda r: key(run(name, c)(r), r) if run(name, c)(r) else None)

    for when in ("raw_before", "raw_after"):
        raw = results[when]
        print(
            f"\n{when}: img/s by batch { ({b: round(v, 1) for b, v in raw['sweep'].items()}) }; "
            f"two calls at a time { ({b: round(v, 1) for b, v in raw['two_callers'].items()}) }"
        )
    print("best raw ORT img/s by round:", [round(r["raw"]["best"], 1) for r in rounds])
    print("vit serve run_batch_size (measured at warm-up):", results.get("run_batch_size"))
    print("vit serve instances:", results.get("instances"))
    before = results["raw_before"]
    print(
        "b1 latency / decode+preprocess ms by round:",
        [
            f"{r['raw'].get('b1_ms', before['b1_ms']):.1f} / {r['raw'].get('decode_ms', before['decode_ms']):.1f}"
            for r in rounds
        ],
    )
    print(f"\nmedians over {len(rounds)} round(s); x raw ORT: against the best raw ORT of the same round")
    print(
        "\n| system | c | req/s | x raw ORT | p50 ms | p95 ms | p99 ms | p99/p50 |\n|---|---|---|---|---|---|---|---|"
    )
    systems = list(rounds[0]["servers"])
    concurrencies = sorted({c for r in rounds for by_c in r["servers"].values() for c in by_c})
    for name in systems:
        for c in concurrencies:
            cells = [
                stat(name, c, lambda m, r: m["rps"]),
                stat(name, c, lambda m, r: m["rps"] / r["raw"]["best"]),
                *(stat(name, c, lambda m, r, k=k: m[k] / 1e3) for k in ("p50_us", "p95_us", "p99_us")),
                stat(name, c, lambda m, r: m["p99_us"] / max(m["p50_us"], 1)),
            ]
            if cells[0] is not None:
                rps, ratio, p50, p95, p99, tail = cells
                print(
                    f"| {name} | {c} | {rps:.1f} | {ratio:.2f} | {p50:.1f} | {p95:.1f} | {p99:.1f} | {tail:.2f} |"
                )
    if "vit serve" in systems:
        top = concurrencies[-1]

        def versus(ours: str, other: str) -> float | None:
            """Median over rounds of ``ours``' req/s over ``other``'s at the top concurrency."""
            a, b = run(ours, top), run(other, top)
            return per_round(rounds, lambda r: a(r)["rps"] / b(r)["rps"] if a(r) and b(r) else None)

        peers = {n: versus("vit serve", n) for n in systems if not n.startswith(("vit serve", "floor"))}
        print(
            f"\ntargets at c={top} (medians of per-round ratios): throughput "
            f"{stat('vit serve', top, lambda m, r: m['rps'] / r['raw']['best']):.2f}x raw ORT (>= 0.95); "
            f"vs peers {', '.join(f'{n} {v:.2f}x' for n, v in peers.items())} (>= 1); "
            f"p99/p50 {stat('vit serve', top, lambda m, r: m['p99_us'] / m['p50_us']):.2f} (<= 1.3)"
        )

        def faster_at_c1(other: str) -> float | None:
            """Median over rounds of how many ms lower `vit serve`'s c=1 p50 is than ``other``'s."""
            a, b = run("vit serve", 1), run(other, 1)
            return per_round(
                rounds, lambda r: (b(r)["p50_us"] - a(r)["p50_us"]) / 1e3 if a(r) and b(r) else None
            )

        floors = {n: versus("vit serve", n) for n in systems if n.startswith("floor")}
        if floors:  # what share of the HTTP-only rate the whole server keeps
            print("vs the HTTP floors (no model): " + ", ".join(f"{n} {v:.2f}x" for n, v in floors.items()))

        for baseline in (n for n in systems if n.startswith("vit serve@")):
            line = f"vs {baseline}: {versus('vit serve', baseline):.2f}x req/s at c={top}"
            if 1 in concurrencies:
                line += f"; c=1 p50 {faster_at_c1(baseline):+.1f} ms faster"
            print(line)
        if "FastAPI+torch eager" in systems and "vit serve int8" in systems:
            print(f"int8 vs torch eager: {versus('vit serve int8', 'FastAPI+torch eager'):.2f}x (>= 4)")
        if "FastAPI+ORT naive" in systems and "vit serve int8" in systems:
            print(
                f"int8 vs naive FastAPI+ORT on {Path(results.get('peer_model', results['model'])).name}: "
                f"{versus('vit serve int8', 'FastAPI+ORT naive'):.2f}x (>= 1.2)"
            )
        if 1 in concurrencies:
            # Against the batch-1 latency and decode time of the same round (runs from before
            # rounds measured them once: the first round's for all).
            def budget(r: dict[str, Any]) -> float:
                raw = r["raw"] if "b1_ms" in r["raw"] else before
                return raw["b1_ms"] + raw["decode_ms"]

            p50 = stat("vit serve", 1, lambda m, r: m["p50_us"] / 1e3)
            over = stat("vit serve", 1, lambda m, r: m["p50_us"] / 1e3 - budget(r))
            print(
                f"c=1 p50 {p50:.1f} ms vs ORT b1 + decode {per_round(rounds, budget):.1f} ms: "
                f"{over:+.1f} ms (median of per-round differences; target <= 3)"
            )
    if "memory" in results:
        rss = results["memory"]["rss_mb"]
        print(
            f"RSS over {results['memory']['requests']} requests ({results['memory']['non_2xx']} malformed): "
            f"first {rss[0]:.0f} MB, last {rss[-1]:.0f} MB, min {min(rss):.0f}, max {max(rss):.0f} (< 500, flat +-50)"
        )
    if "install_mb" in results:
        print(f"serving-only install: {results['install_mb']:.0f} MB (< 300)")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    results = json.loads(Path(args[0] if args else DEFAULT_RESULTS).read_text())
    if "rounds" not in results:  # a run from before rounds existed: one round
        results["rounds"] = [{"raw": results["raw_before"], "servers": results["servers"]}]
    report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
