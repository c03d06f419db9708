"""The hardware route against a fake robot: does `up --hardware` learn on a robot that is not
the learning simulator?

For each robot variant this starts ``sym-mbrl fake-hardware pendulum`` (the URDF with scaled
mass or added friction, 4096-count encoders, velocity noise, 5 ms actuator delay, 200 ms
command timeout, an extra passive joint, 100 Hz free-running) and
``sym-mbrl up pendulum --hardware --activate`` (the extra joint is not declared: the nodes
select the task's joints by name) on a DDS domain of its own, and watches the topics from this
process:

* solved: the mean return of the last 3 windows (200 steps each) >= -200 (`up`'s stop rule);
* real steps and wall time until it stopped (`summary.json` of the run);
* commands dropped: control periods (20 Hz, first to last command) in which no command reached
  the robot, and commands the robot rejected (its ``dropped/*`` counters on /diagnostics);
* state -> command latency: a command's DDS source timestamp minus the stamp (measurement
  time) of the newest state before it; p50 and p99. The controller acts on its timer, so this
  includes the age of the newest state (up to one 10 ms state period) as on a real robot.

Velocity noise "1 %": std 0.08 rad/s, 1 % of the 8 rad/s the swing-up reaches.

    python bench/hardware.py [--seeds 100] [--max-steps 3000] [--variants mass1.0,...]

Writes bench/results/hardware.md and .json (``--out-dir`` elsewhere, e.g. for a smoke run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
SOLVED_RETURN = -200.0
VELOCITY_NOISE = 0.08
FRICTION = {"--friction": "0.05", "--damping": "0.02"}
VARIANTS: dict[str, dict[str, str]] = {
    "mass1.0": {"--mass-scale": "1.0", **FRICTION},
    "mass1.2": {"--mass-scale": "1.2", **FRICTION},
    "mass1.5": {"--mass-scale": "1.5", **FRICTION},
    "mass1.2-nofriction": {"--mass-scale": "1.2"},
}
"""Robot variants: fake-hardware options over the common ones (``common_robot_options``).
Every mass variant has joint friction (0.05 N m Coulomb, 0.02 N m s/rad viscous), which the
learning simulator does not; the issue's target is the ×1.2 one."""


def common_robot_options(seed: int) -> list[str]:
    """What every variant shares: encoders, noise, delay, timeout, an extra joint."""
    return ["--counts-per-rev", "4096", "--velocity-noise", str(VELOCITY_NOISE),
            "--delay-ms", "5", "--timeout-ms", "200", "--extra-joints", "passive_joint",
            "--seed", str(seed)]


class _Watcher:
    """States, commands and diagnostics as seen on the robot's topics (own rclpy context)."""

    def __init__(self, domain: int):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node
        from sensor_msgs.msg import JointState
        from std_msgs.msg import Float64MultiArray

        from sym_mbrl_ros.nodes.common import QOS_RECORD

        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain)
        self.node = Node("bench_hardware", context=self.context)
        self.states: list[int] = []  # stamps (ns)
        self.commands: list[int] = []  # DDS source timestamps (ns)
        self.robot_dropped = 0
        self.node.create_subscription(
            JointState, "/joint_states",
            lambda m: self.states.append(m.header.stamp.sec * 10**9 + m.header.stamp.nanosec),
            QOS_RECORD)
        self.node.create_subscription(
            Float64MultiArray, "/effort_controller/commands",
            lambda m, info: self.commands.append(int(info["source_timestamp"])), QOS_RECORD)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._diag, 50)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._stop = False
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()

    def _diag(self, msg) -> None:
        for status in msg.status:
            if status.name == "sym_mbrl/fake_hardware":
                self.robot_dropped = sum(int(kv.value) for kv in status.values
                                         if kv.key.startswith("dropped/"))

    def _spin(self) -> None:
        while not self._stop:
            self.executor.spin_once(timeout_sec=0.05)

    def close(self) -> None:
        import rclpy

        self._stop = True
        self.thread.join(timeout=5)
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)

    def figures(self, dt: float) -> dict:
        states = np.sort(np.asarray(self.states, dtype=np.int64))
        commands = np.sort(np.asarray(self.commands, dtype=np.int64))
        if len(commands) < 2 or len(states) < 2:
            return {"commands": int(len(commands)), "missed_periods": None,
                    "latency_ms_p50": None, "latency_ms_p99": None}
        i = np.searchsorted(states, commands, side="right") - 1
        ok = i >= 0
        latency = (commands[ok] - states[i[ok]]) * 1e-6
        expected = int(round((commands[-1] - commands[0]) * 1e-9 / dt)) + 1
        return {"commands": int(len(commands)),
                "missed_periods": max(0, expected - len(commands)),
                "latency_ms_p50": float(np.percentile(latency, 50)),
                "latency_ms_p99": float(np.percentile(latency, 99))}


KILLED = ("recorder", "dynamics_learner", "policy_trainer")
"""The nodes ``--kill-at`` kills (``up`` restarts them; the controller runs on)."""


def _children(pid: int) -> dict[str, int]:
    """``{node name: pid}`` of the node processes ``pid`` started (read from /proc)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid != pid:
            continue
        for arg in cmd:
            if arg.startswith(b"__node:="):
                found[arg.decode()[len("__node:="):]] = int(entry.name)
    return found


def _stored(path: Path) -> tuple[int, int]:
    """``(rows, largest id)`` committed in a transition store (0, 0 when there is none)."""
    import sqlite3

    if not path.exists():
        return 0, 0
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        n, top = con.execute("SELECT COUNT(*), COALESCE(MAX(id), 0) FROM transitions").fetchone()
    finally:
        con.close()
    return int(n), int(top)


def _kill_later(up: subprocess.Popen, at_s: float, store: Path, record: dict) -> threading.Thread:
    """At ``at_s`` seconds, kill -9 the recorder, learner and trainer of ``up``'s graph and
    note the store's committed rows just before (every one must survive)."""
    def kill() -> None:
        deadline = time.monotonic() + at_s
        while time.monotonic() < deadline:
            if up.poll() is not None:
                return
            time.sleep(0.2)
        record["rows_before_kill"], record["top_id_before_kill"] = _stored(store)
        victims = {n: p for n, p in _children(up.pid).items() if n in KILLED}
        for pid in victims.values():
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        record["killed"] = sorted(victims)

    thread = threading.Thread(target=kill, daemon=True)
    thread.start()
    return thread


def run_one(variant: str, seed: int, max_steps: int, max_wall: float, out: Path,
            kill_at: float | None = None) -> dict:
    """One fake robot and one `up --hardware` run; the row of the table. With ``kill_at``,
    recorder, learner and trainer are killed (-9) that many seconds into the run."""
    from sym_mbrl_ros.envs import get_task

    domain = random.SystemRandom().randint(100, 200)
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain), PYTHONUNBUFFERED="1",
               PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cli = [sys.executable, "-m", "sym_mbrl_ros.cli"]
    robot_args = common_robot_options(seed) + [a for kv in VARIANTS[variant].items() for a in kv]
    run_dir = out / "runs" / "hardware" / f"{variant}-s{seed}{'-kill' if kill_at else ''}"
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    watcher = _Watcher(domain)
    robot = subprocess.Popen(cli + ["fake-hardware", "pendulum", *robot_args], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    kills: dict = {}
    try:
        up = subprocess.Popen(
            cli + ["up", "pendulum", "--hardware", "--activate",
                   "--seed", str(seed), "--steps", str(max_steps),
                   "--max-wall", str(max_wall), "--out", str(run_dir), "--quiet"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if kill_at:
            _kill_later(up, kill_at, run_dir / "transitions.sqlite", kills)
        up.communicate(timeout=max_wall + 120)
    finally:
        robot.terminate()
        try:
            robot.wait(timeout=10)
        except subprocess.TimeoutExpired:
            robot.kill()
            robot.wait()
        time.sleep(0.5)  # the last diagnostics
        watcher.close()
    summary = json.loads((run_dir / "summary.json").read_text())
    returns = summary["returns"]
    last3 = float(np.mean(returns[-3:])) if len(returns) >= 3 else None
    row = {"variant": variant, "seed": seed, "robot_options": robot_args,
           "solved": bool(last3 is not None and last3 >= SOLVED_RETURN),
           "mean_last3": last3, "steps": summary["steps"], "wall_s": summary["wall_s"],
           "reason": summary["reason"], "returns": returns, "up_exit": up.returncode,
           "robot_dropped": watcher.robot_dropped, "run_dir": str(run_dir),
           "restarts": summary.get("restarts", {})}
    if kill_at:
        import sqlite3

        con = sqlite3.connect(f"file:{run_dir / 'transitions.sqlite'}?mode=ro", uri=True)
        kept = con.execute("SELECT COUNT(*) FROM transitions WHERE id <= ?",
                           (kills.get("top_id_before_kill", 0),)).fetchone()[0]
        con.close()
        after = _stored(run_dir / "transitions.sqlite")[0]
        row.update(kills, rows_kept=int(kept), rows_after=after)
    row.update(watcher.figures(get_task("pendulum").dt))
    return row


def _fmt(x, spec: str) -> str:
    return "—" if x is None else format(x, spec)


def table(rows: list[dict]) -> str:
    lines = ["| robot | seed | solved | mean of last 3 | real steps | wall s | commands | "
             "missed periods | robot dropped | latency p50 ms | p99 ms |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['seed']} | {'yes' if r['solved'] else 'no'} | "
            f"{_fmt(r['mean_last3'], '.1f')} | {r['steps']} | {r['wall_s']:.0f} | "
            f"{r['commands']} | {_fmt(r['missed_periods'], 'd')} | {r['robot_dropped']} | "
            f"{_fmt(r['latency_ms_p50'], '.2f')} | {_fmt(r['latency_ms_p99'], '.2f')} |")
    return "\n".join(lines)


def kill_table(rows: list[dict], at_s: float) -> str:
    """Rows committed before the kill and kept after it, restarts, and the outcome."""
    lines = [f"kill -9 of {', '.join(KILLED)} {at_s:g} s into the run:", "",
             "| robot | seed | killed | rows committed before | of those kept | rows at the end | "
             "restarts | solved |", "|---|---:|---|---:|---:|---:|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['seed']} | {', '.join(r.get('killed', [])) or '—'} | "
                     f"{r.get('rows_before_kill', '—')} | {r.get('rows_kept', '—')} | "
                     f"{r.get('rows_after', '—')} | {r.get('restarts') or '—'} | "
                     f"{'yes' if r['solved'] else 'no'} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", default="100", help="comma-separated seeds (default 100)")
    ap.add_argument("--variants", default=",".join(VARIANTS),
                    help=f"comma-separated robot variants of {list(VARIANTS)}")
    ap.add_argument("--max-steps", type=int, default=3000, help="real-step budget per run")
    ap.add_argument("--max-wall", type=float, default=900.0, help="wall-clock limit per run (s)")
    ap.add_argument("--out-dir", default=str(RESULTS),
                    help="where hardware.md/.json and the runs go (default bench/results)")
    ap.add_argument("--kill-at", type=float, default=None, metavar="S",
                    help="kill -9 recorder, learner and trainer S seconds into each run; "
                         "writes hardware_kill.md/.json (rows committed before the kill, "
                         "restarts, solved)")
    args = ap.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    out = Path(args.out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        for variant in variants:
            row = run_one(variant, seed, args.max_steps, args.max_wall, out, args.kill_at)
            rows.append(row)
            print(table([row]).split("\n")[-1], flush=True)
    text = table(rows)
    stem = "hardware_kill" if args.kill_at else "hardware"
    if args.kill_at:
        text += "\n\n" + kill_table(rows, args.kill_at)
    command = "python bench/hardware.py " + " ".join(argv if argv is not None else sys.argv[1:])
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    (out / f"{stem}.md").write_text(
        f"# `sym-mbrl up pendulum --hardware` against `sym-mbrl fake-hardware`\n\n"
        f"`{command.strip()}`; velocity noise std {VELOCITY_NOISE} rad/s, 4096-count "
        f"encoders, 5 ms actuator delay, 200 ms command timeout; solved = mean return of the "
        f"last 3 windows >= {SOLVED_RETURN:g}. Load average at the end: "
        f"{_fmt(load, '.1f')}.\n\n{text}\n")
    (out / f"{stem}.json").write_text(json.dumps({
        "command": command.strip(), "rows": rows, "machine": platform.platform(),
        "python": sys.version, "load_average_1min": load,
        "git": _git_commit()}, indent=2) + "\n")
    print("\n" + text)
    return 0


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip() or None
    except OSError:
        return None


if __name__ == "__main__":
    raise SystemExit(main())
