#!/bin/bash
# Every `lab bench` with accelerator-sized settings, each one's JSON written to $OUT/NAME.json
# (and its log to $OUT/NAME.log), in under 8 minutes on one GPU (7.2 at most, each bounded). Run from the repository root on
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

# the RL and program benchmarks first (each bounded: a partial run still returns what finished);
# the scaling benchmark measures a host's CPU devices and processes, not the accelerator
bench rl 170 --population 64 --steps 200000 --repeats 2 --population-repeats 2
bench programs 110 --population 256 --steps 100 --repeats 3 --skip-search
bench population 70 --populations 64,256,1024 --steps 100 --repeats 3
bench lopt 80 --population 64 --repeats 3
echo "device check done: $(ls "$OUT"/*.json | wc -l) documents in $OUT"
