"""Peak memory and speed of `data_builders.build` on a generated Alpaca JSON array, to show memory stays flat.

    python bench/build_memory.py                        # 100k records (~30 MB of JSON)
    python bench/build_memory.py --records 10000 100000 # one row per size: peak RSS should not grow with size
    python bench/build_memory.py --json                 # one JSON object per size (used by the tests)

Each build runs in its own child process, the only child this script has while it runs, so
resource.getrusage(RUSAGE_CHILDREN).ru_maxrss is that build's peak RSS. The baseline is a 10-record build: the
floor every build pays for Python, torch (imported by webdataset and mmtune.data.shards), PIL and the writer.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The child leaves through os._exit: torch's teardown at interpreter exit briefly takes ~125 MB more than the
# whole build, which would hide what the build itself holds (e.g. the ~60 MB of a json.load of 30 MB).
CHILD = """
import json, os, sys
from data_builders import build
report = build("alpaca", sys.argv[1], sys.argv[2], shard_size=int(sys.argv[3]))
print(json.dumps({"records": report.records, "written": report.train + report.eval, "seconds": report.seconds}),
      flush=True)
os._exit(0)
"""
BASELINE_RECORDS = 10


def write_alpaca(path: Path, records: int) -> None:
    """A JSON array of `records` Alpaca records of about 300 bytes each, written as a stream."""
    with open(path, "w") as f:
        f.write("[\n")
        for i in range(records):
            record = {"instruction": f"Explain item {i} of the list in two sentences.",
                      "input": f"Item {i}: a short note about lists." if i % 3 == 0 else "",
                      "output": f"Item {i} is one entry of a long generated list. " * 4}
            f.write(("" if i == 0 else ",\n") + json.dumps(record, indent=1))
        f.write("\n]\n")


def peak_rss_mb(args: list[str]) -> tuple[float, str]:
    """Run `python -c ARGS...` as this process's only child; its peak RSS in MB and its stdout."""
    done = subprocess.run([sys.executable, "-c", *args], cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"child failed:\n{done.stderr}")
    kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # kB on Linux; max over children waited for
    return kb / 1024, done.stdout


def measure(records: int, shard_size: int, tmp: Path) -> dict:
    path, out = tmp / f"alpaca_{records}.json", tmp / f"shards_{records}"
    write_alpaca(path, records)
    rss, stdout = peak_rss_mb([CHILD, str(path), str(out), str(shard_size)])
    result = json.loads(stdout.strip().splitlines()[-1])
    return {"records": records, "json_mb": round(path.stat().st_size / 2**20, 1), "peak_rss_mb": round(rss, 1),
            "records_per_s": round(result["records"] / result["seconds"]), "written": result["written"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, nargs="+", default=[100_000])
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--json", action="store_true", help="print one JSON object per size")
    args = parser.parse_args()
    # Ascending sizes: RUSAGE_CHILDREN is a running maximum, so each row is the peak of that size or a smaller one.
    sizes = sorted(args.records)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        baseline = measure(BASELINE_RECORDS, args.shard_size, Path(tmp))["peak_rss_mb"]
        rows = [measure(n, args.shard_size, Path(tmp)) for n in sizes]
    if args.json:
        for row in rows:
            print(json.dumps({**row, "baseline_rss_mb": baseline}))
        return
    print(f"baseline ({BASELINE_RECORDS}-record build): peak RSS {baseline} MB")
    for row in rows:
        print(f"{row['records']:>9} records ({row['json_mb']} MB JSON): peak RSS {row['peak_rss_mb']} MB, "
              f"{row['records_per_s']} records/s, {row['written']} samples written")
    print(f"total {time.perf_counter() - start:.0f}s, Python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()
