"""Sustained transitions per second into the transition store, with zero loss.

Two measurements:

1. **Store**: ``TransitionStore.append`` (one SQLite transaction per transition, WAL,
   ``synchronous=NORMAL``), alone and with a reader in another process polling
   ``read(since_id=...)`` every 10 ms the way the learner and trainer do.
2. **Recorder node over DDS**: the recorder runs as its own process; this script plays a
   lockstep bridge and a controller (a JointState, then the command that answers it) at a
   fixed rate for ``--seconds``, then counts what reached the store. Loss = commands sent that
   should have made a transition minus transitions stored. The sustained rate is the highest
   offered rate with zero loss.

    python bench/recorder.py [--seed 0] [--seconds 4] [--rates 500,1000,2000,3000]

Writes bench/results/recorder.md and bench/results/recorder.json. Target: >= 2,000
transitions/s with zero loss.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from sym_mbrl_ros.data.store import TransitionStore

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]
TARGET = 2000.0

READER = """
import sys, time
from sym_mbrl_ros.data.store import TransitionStore
st = TransitionStore(sys.argv[1], readonly=True)
last, reads, end = 0, 0, time.time() + float(sys.argv[2])
while time.time() < end:
    b = st.read(since_id=last)
    if len(b):
        last = int(b.ids[-1])
    reads += 1
    time.sleep(0.01)
print(reads, last)
"""


def bench_store(n: int, seed: int, with_reader: bool) -> dict:
    rng = np.random.default_rng(seed)
    x, u = rng.normal(size=(n, 2)), rng.normal(size=(n, 1))
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "t.sqlite"
        store = TransitionStore(path, ("theta", "theta_dot"), ("torque",), dt=0.05)
        store.start_episode()
        reader = None
        if with_reader:
            reader = subprocess.Popen([sys.executable, "-c", READER, str(path), "60"],
                                      stdout=subprocess.PIPE, text=True)
            time.sleep(1.0)
        t0 = time.perf_counter()
        for i in range(n):
            store.append(x[i], u[i], x[i], reward=-1.0)
        rate = n / (time.perf_counter() - t0)
        stored = store.count()
        if reader is not None:
            reader.terminate()
            reader.wait()
        store.close()
    return {"test": "store.append" + (" + reader process" if with_reader else ""),
            "offered_per_s": None, "transitions_per_s": round(rate), "sent": n,
            "stored": stored, "lost": n - stored}


def bench_node(rates: list[float], seconds: float, seed: int) -> list[dict]:
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.node import Node
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Float64MultiArray, String

    from sym_mbrl_ros.nodes.common import EPISODE_TOPIC, QOS_EVENTS, QOS_STREAM

    domain = random.Random(seed).randint(100, 200)
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain))
    rclpy.init(domain_id=domain)
    node = Node("bench_recorder_feeder")
    js = node.create_publisher(JointState, "/joint_states", QOS_STREAM)
    cmd = node.create_publisher(Float64MultiArray, "/effort_controller/commands", QOS_STREAM)
    ev = node.create_publisher(String, EPISODE_TOPIC, QOS_EVENTS)
    diag: dict[str, str] = {}

    def on_diag(msg):
        for st in msg.status:
            if st.name == "sym_mbrl/recorder":
                diag.clear()
                diag.update({kv.key: kv.value for kv in st.values})

    node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 10)
    rng = np.random.default_rng(seed)
    rows = []
    for rate in rates:
        with tempfile.TemporaryDirectory() as d:
            params = Path(d) / "run.yaml"
            # one episode for the whole run: no episode boundary inside the measurement
            params.write_text(f"recorder:\n  ros__parameters:\n    run_dir: {d}\n"
                              f"    episode_steps: 100000000\n")
            proc = subprocess.Popen(
                [sys.executable, "-m", "sym_mbrl_ros.nodes.recorder", "--ros-args",
                 "--params-file", str(ROOT / "config" / "pendulum.yaml"),
                 "--params-file", str(params)],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            end = time.monotonic() + 60
            while min(js.get_subscription_count(), cmd.get_subscription_count(),
                      ev.get_subscription_count()) == 0 and time.monotonic() < end:
                time.sleep(0.05)
            time.sleep(0.5)
            ev.publish(String(data=json.dumps({"episode": 1, "boundary_ns": time.time_ns(),
                                               "mode": "lockstep", "reason": "bench"})))
            time.sleep(0.3)
            n = int(rate * seconds)
            values = rng.uniform(-1, 1, (n + 1, 3))
            msg = JointState(name=["hinge"], position=[0.0], velocity=[0.0])
            out = Float64MultiArray(data=[0.0])
            t0 = time.perf_counter()
            for i in range(n + 1):
                ns = time.time_ns()
                msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(ns, 1_000_000_000)
                msg.position[0], msg.velocity[0] = values[i, 0], values[i, 1]
                js.publish(msg)
                if i < n:
                    out.data[0] = values[i, 2]
                    cmd.publish(out)
                ahead = t0 + (i + 1) / rate - time.perf_counter()
                if ahead > 0:
                    time.sleep(ahead)
            sent_s = time.perf_counter() - t0
            path = Path(d) / "transitions.sqlite"
            stored, last, stable = 0, -1, time.monotonic()
            while time.monotonic() - stable < 2.0:  # until the store stops growing for 2 s
                time.sleep(0.2)
                if path.exists():
                    with TransitionStore(path, readonly=True) as st:
                        stored = st.count()
                if stored != last:
                    last, stable = stored, time.monotonic()
            end = time.monotonic() + 1.5
            while time.monotonic() < end:  # the recorder's own account of what it dropped
                rclpy.spin_once(node, timeout_sec=0.1)
            drops = {k: v for k, v in diag.items() if k.startswith(("dropped/", "skipped/"))}
            proc.terminate()
            proc.wait(20)
            rows.append({"test": "recorder node over DDS", "offered_per_s": rate,
                         "transitions_per_s": round(stored / sent_s), "sent": n,
                         "stored": stored, "lost": n - stored,
                         "recorder_drops": drops, "received": {k: diag.get(k) for k in
                                                               ("states", "commands")}})
            print(f"  offered {rate:6.0f}/s: stored {stored}/{n} {drops}", flush=True)
    node.destroy_node()
    rclpy.shutdown()
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--store-n", type=int, default=5000)
    parser.add_argument("--rates", default="500,1000,2000,3000")
    args = parser.parse_args(argv)
    rates = [float(r) for r in args.rates.split(",")]
    rows = [bench_store(args.store_n, args.seed, False), bench_store(args.store_n, args.seed, True)]
    rows += bench_node(rates, args.seconds, args.seed)
    lossless = [r["offered_per_s"] for r in rows if r["offered_per_s"] and r["lost"] == 0]
    sustained = max(lossless) if lossless else 0.0
    config = {"seed": args.seed, "seconds": args.seconds, "store_n": args.store_n,
              "rates": rates, "python": platform.python_version(), "cpu_count": os.cpu_count(),
              "load_average": list(os.getloadavg()), "machine": platform.machine()}
    lines = [
        "# Recorder throughput", "",
        f"`python bench/recorder.py --seed {args.seed} --seconds {args.seconds:g} --rates "
        f"{args.rates}`; {os.cpu_count()} CPUs shared with other work (load average "
        f"{os.getloadavg()[0]:.1f} at the end). One SQLite transaction per transition.", "",
        f"- {'PASS' if sustained >= TARGET else 'MISS'}: sustained rate with zero loss through "
        f"the recorder node >= {TARGET:.0f}/s (measured {sustained:.0f}/s offered, lossless)",
        f"- {'PASS' if rows[0]['transitions_per_s'] >= TARGET else 'MISS'}: store.append >= "
        f"{TARGET:.0f}/s (measured {rows[0]['transitions_per_s']}/s; "
        f"{rows[1]['transitions_per_s']}/s with a reader polling)", "",
        "| test | offered /s | stored /s | sent | stored | lost | recorder's drop counters |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        offered = ("as fast as possible" if r["offered_per_s"] is None
                   else f"{r['offered_per_s']:.0f}")
        drops = ", ".join(f"{k} {v}" for k, v in r.get("recorder_drops", {}).items()) or "-"
        lines.append(f"| {r['test']} | {offered} | {r['transitions_per_s']} | {r['sent']} | "
                     f"{r['stored']} | {r['lost']} | {drops} |")
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "recorder.md").write_text(text)
    (RESULTS / "recorder.json").write_text(json.dumps({"config": config, "rows": rows,
                                                       "sustained_lossless_per_s": sustained},
                                                      indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
