#!/usr/bin/env bash
# colcon build of the package into a temporary workspace, then a check of the installed tree.
set -euo pipefail
cd "$(dirname "$0")/.."
ws=$(mktemp -d)
trap 'rm -rf "$ws"' EXIT
.venv/bin/colcon --log-base "$ws/log" build --paths . \
  --build-base "$ws/build" --install-base "$ws/install" >"$ws/colcon.out" 2>&1 \
  || { cat "$ws/colcon.out"; echo "colcon build FAILED"; exit 1; }
.venv/bin/python - "$ws/install" <<'PY'
import configparser, pathlib, re, sys
inst = pathlib.Path(sys.argv[1]) / "sym_mbrl_ros"
share = inst / "share" / "sym_mbrl_ros"
need = [share / "package.xml", share / "launch", share / "config", share / "urdf",
        inst / "share" / "ament_index" / "resource_index" / "packages" / "sym_mbrl_ros"]
# every console script declared in setup.py must be installed under lib/sym_mbrl_ros
src = pathlib.Path("setup.py").read_text()
scripts = re.findall(r'"([a-z0-9_-]+)\s*=\s*sym_mbrl_ros\.[\w.]+:\w+"', src)
need += [inst / "lib" / "sym_mbrl_ros" / s for s in scripts]
for sub, pattern in (("launch", "launch/*.launch.py"), ("config", "config/*"), ("urdf", "urdf/*.urdf")):
    for f in pathlib.Path(".").glob(pattern):
        need.append(share / sub / f.name)
missing = [str(p) for p in need if not p.exists()]
if missing:
    sys.exit("colcon install tree is missing:\n  " + "\n  ".join(missing))
print(f"colcon build OK: {len(need)} installed paths checked ({len(scripts)} executables)")
PY
