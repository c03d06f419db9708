"""A fleet feeding one learner: ``sym-mbrl up pendulum --robots N`` for N = 1, 2, 4, and two
namespaced graphs side by side on one DDS domain.

    python bench/fleet.py --seed 100                      # the table of the issue
    python bench/fleet.py --robots 1,2 --steps 100 --max-wall 60 --skip-pair   # smoke test

Fleet rows: one ``up`` per fleet size, one after the other, each in its own run folder and
ROS domain. The robots run lockstep at ``--speed`` control periods per period of wall time
(default 1: real time, as robots do, so what a fleet saves is robot time) and ``--sync``
(default 0: the trainer runs flat out, capped by its updates per transition). "Solved" is
``up``'s fleet rule: the mean return of the last max(3, N) episodes of all robots reaches the
task's target. Each row: solved, wall-clock seconds to the stop, real steps per robot and in
total, CPU seconds of every process of the graph and the mean number of cores busy, the last
policy version each robot's controller loaded over DDS (from its log; every robot should end
on the trainer's newest). The target: N = 4 solves in at most half the wall time of N = 1,
measured in this one invocation.

Pair row: two ``up`` runs at once on one domain, in namespaces ``g1`` and ``g2``; while they
run, a probe lists every topic each graph's nodes publish and subscribe to: a graph's nodes
may use their own namespace's topics and the domain-wide ``/diagnostics``, ``/rosout``,
``/parameter_events`` only. Each run must solve on its own.

Checks row (``--checks``): the DDS tests of the split-machine controller and of bad policy
messages (``test/test_nodes_fleet.py``, ``test/test_nodes_namespaces.py``) run with pytest.

Prints and writes ``bench/results/fleet.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))

from sym_mbrl_ros.envs import get_task  # noqa: E402
from sym_mbrl_ros.protocol import git_commit  # noqa: E402

SHARED = {"/diagnostics", "/rosout", "/parameter_events"}


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def up_command(out: Path, seed: int, domain: int, args, extra: list[str]) -> list[str]:
    """The ``sym-mbrl up pendulum`` command line of one run."""
    return [sys.executable, "-m", "sym_mbrl_ros.cli", "up", "pendulum", "--seed", str(seed),
            "--out", str(out), "--quiet", "--domain-id", str(domain), "--steps",
            str(args.steps), "--speed", str(args.speed), "--sync", str(args.sync),
            "--max-wall", str(args.max_wall), *(["--planner"] if args.planner else []), *extra]


def _fresh(out: Path) -> Path:
    if out.exists():
        shutil.rmtree(out)  # never resume: each invocation measures afresh
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def _summary(out: Path, proc: subprocess.CompletedProcess | None = None) -> dict:
    try:
        return json.loads((out / "summary.json").read_text())
    except (OSError, ValueError):
        code = None if proc is None else proc.returncode
        return {"solved": False, "reason": f"no summary (exit {code})", "steps": 0,
                "robot_steps": {}, "wall_s": None}


def loaded_versions(out: Path) -> dict[str, int | None]:
    """Per controller log, the newest policy version it loaded (None: none)."""
    found = {}
    for log in sorted((out / "logs").rglob("controller.log")):
        versions = [int(v) for v in re.findall(r"using policy weights v(\d+)",
                                                log.read_text(errors="replace"))]
        robot = log.parent.name if log.parent.name != "logs" else ""
        found[robot] = max(versions) if versions else None
    return found


DT = get_task("pendulum").dt
"""Pendulum's control period (s): a robot in real time takes 200 steps in 10 s."""


def run_fleet(n: int, seed: int, args, domain: int) -> dict:
    """``up pendulum --robots n``: its summary with wall, CPU and the controllers' policies."""
    out = _fresh(args.out_dir / f"fleet_s{seed}_{n}")
    cmd = up_command(out, seed, domain, args, ["--robots", str(n)])
    cpu0, t0 = _cpu(), time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - t0, _cpu() - cpu0
    s = _summary(out, proc)
    policies = sorted((out / "policies").glob("policy_*.pt"))
    per_robot = s.get("robot_steps", {})
    robot_time = max(per_robot.values(), default=0) * DT / args.speed
    episodes = {r: len(v) for r, v in s.get("robot_returns", {}).items()}
    row = {"seed": seed, "robots": n, "solved": s["solved"], "reason": s["reason"],
           "wall_s": s.get("wall_s"), "process_wall_s": round(wall, 1),
           "steps_total": s.get("steps", 0), "steps_per_robot": per_robot,
           "cpu_s": round(cpu, 1), "cores": round(cpu / wall, 2) if wall > 0 else None,
           "policies_published": len(policies), "policy_loaded": loaded_versions(out),
           "last_returns": [round(r, 1) for r in s.get("returns", [])[-max(3, n):]],
           "episodes_per_robot": episodes,
           "world_speed": (round(robot_time * args.speed / s["wall_s"], 2)
                           if s.get("wall_s") else None),
           "other_s": round(s["wall_s"] - robot_time, 1) if s.get("wall_s") else None,
           "exit_code": proc.returncode, "stderr_tail": proc.stderr[-400:]}
    print(f"  seed {seed}, {n} robot(s): {row['reason']} after {row['wall_s']} s, "
          f"{row['steps_total']} steps {row['steps_per_robot']}, {row['cpu_s']} CPU s "
          f"({row['cores']} cores); "
          f"loaded policy {row['policy_loaded']} of {row['policies_published']}", flush=True)
    return row


def _graph_topics(node, namespaces: list[str]) -> dict[str, list[str]]:
    """Per namespace, the topics its nodes use that are neither its own nor domain-wide."""
    foreign: dict[str, set[str]] = {ns: set() for ns in namespaces}
    for name, ns in node.get_node_names_and_namespaces():
        if ns not in foreign:
            continue
        topics = [t for t, _ in node.get_publisher_names_and_types_by_node(name, ns)]
        topics += [t for t, _ in node.get_subscriber_names_and_types_by_node(name, ns)]
        foreign[ns] |= {t for t in topics if not t.startswith(ns + "/") and t not in SHARED}
    return {ns: sorted(t) for ns, t in foreign.items()}


def run_pair(args, domain: int) -> dict:
    """Two namespaced graphs at once on one domain; each must solve and keep to itself."""
    import rclpy

    outs = {ns: _fresh(args.out_dir / f"pair_{ns}") for ns in ("g1", "g2")}
    cpu0, t0 = _cpu(), time.perf_counter()
    procs = {ns: subprocess.Popen(up_command(out, args.seed + k, domain, args,
                                             ["--namespace", ns]),
                                  cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True)
             for k, (ns, out) in enumerate(outs.items())}
    rclpy.init(domain_id=domain)
    node = rclpy.create_node("fleet_bench_probe")
    foreign: dict[str, set[str]] = {"/g1": set(), "/g2": set()}
    nodes_seen: set[str] = set()
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            for ns, topics in _graph_topics(node, list(foreign)).items():
                foreign[ns] |= set(topics)
            nodes_seen.update(f"{ns}/{n}" for n, ns in node.get_node_names_and_namespaces())
            stop.wait(1.0)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        outputs = {ns: p.communicate() for ns, p in procs.items()}
    finally:
        stop.set()
        watcher.join(timeout=5)
        node.destroy_node()
        rclpy.shutdown()
    wall, cpu = time.perf_counter() - t0, _cpu() - cpu0
    runs = {}
    for ns, out in outs.items():
        s = _summary(out)
        runs[ns] = {"solved": s["solved"], "reason": s["reason"], "wall_s": s.get("wall_s"),
                    "steps": s.get("steps", 0), "stderr_tail": outputs[ns][1][-400:]}
    row = {"runs": runs, "process_wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
           "foreign_topics": {ns: sorted(t) for ns, t in foreign.items()},
           "graph_nodes_seen": sorted(n for n in nodes_seen if n.startswith(("/g1/", "/g2/")))}
    print(f"  pair: g1 {runs['g1']['reason']} ({runs['g1']['steps']} steps), g2 "
          f"{runs['g2']['reason']} ({runs['g2']['steps']} steps); foreign topics "
          f"{row['foreign_topics']}", flush=True)
    return row


def run_checks() -> dict:
    """The split-machine and bad-message DDS tests."""
    tests = ["test/test_nodes_fleet.py", "test/test_nodes_namespaces.py"]
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), MUJOCO_GL="osmesa")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", *tests], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    tail = proc.stdout.strip().splitlines()[-1:] or [""]
    print(f"  checks: {tail[0]}", flush=True)
    return {"tests": tests, "passed": proc.returncode == 0, "result": tail[0]}


def _controller(args) -> str:
    return ("sym-mpc planner in each controller, no policy trainer (up --planner)" if args.planner
            else "the MBPO trainer's policy in each controller")


def ratios(rows: list[dict]) -> dict[int, float | None]:
    """Per seed, 4-robot wall time over 1-robot wall time (None unless both solved)."""
    out: dict[int, float | None] = {}
    for seed in dict.fromkeys(r["seed"] for r in rows):
        one = next((r for r in rows if r["seed"] == seed and r["robots"] == 1), None)
        four = next((r for r in rows if r["seed"] == seed and r["robots"] == 4), None)
        if one is None or four is None:
            continue
        out[seed] = (round(four["wall_s"] / one["wall_s"], 2)
                     if one["solved"] and four["solved"] else None)
    return out


def table(rows: list[dict], pair: dict | None, checks: dict | None, args) -> str:
    """The markdown report."""
    seeds = ", ".join(str(s) for s in dict.fromkeys(r["seed"] for r in rows))
    code = getattr(args, "code", None) or "unknown"
    lines = [f"# Fleet: `sym-mbrl up pendulum --robots N` (lockstep, speed {args.speed:g}, "
             f"sync {args.sync:g}, {_controller(args)}; seeds {seeds}; budget {args.steps} "
             "steps per robot)", "",
             f"Command: `{getattr(args, 'command', 'python bench/fleet.py')}` (code {code})", "",
             "World speed: simulated seconds per wall second (1 = real time; below the set "
             "speed when the CPU cannot keep up). Other s: wall time not spent in the robots' "
             "episodes at the set speed (start-up, and the world waiting for CPU).", "",
             "| seed | robots | solved | wall s | episodes per robot | steps per robot | "
             "steps total | world speed | other s | CPU s | cores | "
             "policy loaded (of published) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        per = ", ".join(str(v) for v in r["steps_per_robot"].values()) or "-"
        eps = ", ".join(str(v) for v in r.get("episodes_per_robot", {}).values()) or "-"
        loaded = sorted({v for v in r["policy_loaded"].values()}, key=lambda v: v or -1)
        lines.append(f"| {r['seed']} | {r['robots']} | "
                     f"{'yes' if r['solved'] else 'no: ' + r['reason']} | "
                     f"{r['wall_s']} | {eps} | {per} | {r['steps_total']} | "
                     f"{r.get('world_speed')} | {r.get('other_s')} | {r['cpu_s']} | "
                     f"{r['cores']} | {loaded} ({r['policies_published']}) |")
    by_seed = ratios(rows)
    if by_seed:
        known = [v for v in by_seed.values() if v is not None]
        median = round(statistics.median(known), 2) if known else None
        per = ", ".join(f"seed {k}: {'-' if v is None else f'{v:.2f}'}"
                        for k, v in by_seed.items())
        verdict = ("not met" if median is None or median > 0.5 or None in by_seed.values()
                   else "met")
        lines += ["", f"4 robots / 1 robot wall-clock: {per}; median **{median}** "
                      f"(target ≤ 0.5: {verdict})"]
    if pair is not None:
        lines += ["", "## Two namespaced graphs on one domain", "",
                  "| graph | solved | wall s | steps | topics of the other graph used |",
                  "|---|---|---|---|---|"]
        for ns, r in pair["runs"].items():
            lines.append(f"| /{ns} | {'yes' if r['solved'] else 'no: ' + r['reason']} | "
                         f"{r['wall_s']} | {r['steps']} | "
                         f"{pair['foreign_topics'].get('/' + ns) or 'none'} |")
    if checks is not None:
        tests = ", ".join(checks["tests"])
        lines += ["", f"Split-machine controller and bad policy messages ({tests}): "
                      f"{checks['result']}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the fleet sizes, the pair and the checks; print and write the report."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--robots", default="1,2,4", help="fleet sizes, comma-separated")
    p.add_argument("--seed", type=int, default=100,
                   help="seed of every run (report seeds); the pair runs seed and seed + 1")
    p.add_argument("--seeds", default="",
                   help="comma-separated seeds of the fleet rows (default: --seed)")
    p.add_argument("--steps", type=int, default=3000, help="budget of real steps per robot")
    p.add_argument("--speed", type=float, default=1.0,
                   help="control periods per period of wall time (1: real-time robots)")
    p.add_argument("--sync", type=float, default=0.0,
                   help="SAC updates per step of each robot the lockstep world waits for")
    p.add_argument("--max-wall", type=float, default=900.0, help="seconds per run at most")
    p.add_argument("--planner", action="store_true",
                   help="up --planner: the controllers plan with the learner's model (sym-mpc) "
                        "and no policy trainer runs (sync must be 0)")
    p.add_argument("--skip-pair", action="store_true", help="no two-graph run")
    p.add_argument("--checks", action="store_true", help="also run the DDS tests")
    p.add_argument("--out-dir", type=Path, default=Path("/tmp/sym_mbrl_fleet_bench"),
                   help="run folders (default /tmp/sym_mbrl_fleet_bench)")
    p.add_argument("--results", type=Path, default=HERE / "results" / "fleet",
                   help="report path without suffix (default bench/results/fleet)")
    args = p.parse_args(argv)
    commit, dirty = git_commit()
    args.code = (commit or "unknown")[:7] + (" with uncommitted changes" if dirty else "")
    args.command = "python bench/fleet.py " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.planner and args.sync:
        p.error("--planner runs no policy trainer: --sync must be 0")
    domain = 120 + args.seed % 60
    sizes = [int(n) for n in args.robots.split(",") if n.strip()]
    seeds = [int(v) for v in args.seeds.split(",") if v.strip()] or [args.seed]
    print(f"fleet bench: robots {sizes}, seeds {seeds}, domain {domain}", flush=True)
    rows = [run_fleet(n, seed, args, domain) for seed in seeds for n in sizes]
    pair = None if args.skip_pair else run_pair(args, domain)
    checks = run_checks() if args.checks else None
    report = table(rows, pair, checks, args)
    print(report)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.with_suffix(".md").write_text(report)
    args.results.with_suffix(".json").write_text(json.dumps(
        {"args": {k: str(v) for k, v in vars(args).items()}, "fleet": rows, "pair": pair,
         "checks": checks}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
