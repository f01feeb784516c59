#!/bin/bash
# Every `lab bench` with accelerator-sized settings, each one's JSON written to $OUT/NAME.json
# (and its log to $OUT/NAME.log), in under 8 minutes on one GPU. Run from the repository root on
# a machine with an accelerator and the accelerator build of JAX:
#
#     OUT=/tmp/out bash benchmarks/device_check.sh
#
# Packages the machine lacks (evosax, gymnax, ...) can come as wheels in .whl/ (see the device
# tool's README): they are installed into /tmp/site first. The lab runs from this checkout.
set -u
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1 LAB_JAX_CACHE=
python3 -c "import jax; print('jax', jax.__version__, jax.devices())" 2>&1 | tee "$OUT/devices.log"

bench() {  # bench NAME SECONDS ARGS...: one benchmark, bounded
  local name=$1 limit=$2; shift 2
  local start=$(date +%s)
  timeout "$limit" python3 -m lab.cli bench "$name" --json "$@" > "$OUT/$name.json" 2> "$OUT/$name.log"
  local rc=$?
  echo "$name: rc $rc in $(( $(date +%s) - start )) s -> $OUT/$name.json"
  [ $rc = 0 ] || tail -3 "$OUT/$name.log"
}

bench population 90 --populations 64,256,1024 --steps 100 --repeats 3
bench programs 120 --population 256 --steps 100 --repeats 3 --skip-search
bench lopt 90 --population 64 --repeats 3
bench rl 90 --population 64 --repeats 3
bench scaling 90 --population 64 --steps 50 --repeats 3   # CPU devices of this host
echo "device check done: $(ls "$OUT"/*.json | wc -l) documents in $OUT"
