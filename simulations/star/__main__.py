"""``python -m simulations.star``: the star benchmark with bare clients on its own; prints JSON."""

from __future__ import annotations

import argparse
import json
import sys
import time

import anyio

from simulations.star.bench import run_star


async def _main(args: argparse.Namespace) -> list[dict]:
    results = []
    for n in args.terminals:
        began = time.perf_counter()
        results.append(
            await run_star(
                n,
                latency_samples=args.latency_samples,
                interval=args.interval,
                throughput_updates=args.throughput_updates,
                payload_bytes=args.payload_bytes,
                stock_provider=args.stock_provider,
            )
        )
        print(f"star: {n} terminals done in {time.perf_counter() - began:.1f} s", file=sys.stderr, flush=True)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m simulations.star",
                                     description="The star-relay baseline with bare pycrdt clients; prints JSON.")
    parser.add_argument("--terminals", type=int, nargs="+", default=[3, 5, 10], help="terminal counts to run")
    parser.add_argument("--latency-samples", type=int, default=300)
    parser.add_argument("--interval", type=float, default=0.005, help="seconds between latency-phase writes")
    parser.add_argument("--throughput-updates", type=int, default=2000, help="keys written by each terminal")
    parser.add_argument("--payload-bytes", type=int, default=200)
    parser.add_argument(
        "--stock-provider",
        action="store_true",
        help="use pycrdt's Provider as shipped (echoes every received update back to the relay)",
    )
    args = parser.parse_args(argv)
    results = anyio.run(_main, args, backend="asyncio")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
