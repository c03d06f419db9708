"""sym-mbrl tasks: list the shipped tasks."""

from __future__ import annotations

HELP = "list the tasks, with their state and action coordinates"


def add_arguments(parser) -> None:
    parser.add_argument("--verbose", "-v", action="store_true", help="also print each description")


def run(args) -> int:
    from ..envs import TASKS

    for name, task in TASKS.items():
        print(
            f"{name:<10} {task.env_id:<22} dt={task.dt:g}s  steps={task.max_episode_steps:<4} "
            f"state=({', '.join(task.state_names)})  action=({', '.join(task.action_names)})"
        )
        if args.verbose and task.description:
            print(f"           {task.description}")
    return 0
