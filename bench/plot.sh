#!/usr/bin/env bash
# The plot example (examples/plot: pandas + matplotlib into a PNG) as a whole `pyexec`
# process on a warm, preloaded science container, against the same script under
# `docker run --rm` on the same image. Prints one line per run and the medians.
#
#   bench/plot.sh [RUNS]          # default 10 runs of each, interleaved
#
# Needs the science image (pyexecd build-image --packages
# python3-numpy,python3-pandas,python3-matplotlib --tag pyexec/sandbox:science) and the
# binaries in $BIN (default target/release, else target/debug). Starts its own pyexecd on
# a free loopback port (instance bench-plot-<pid>), stopped at the end. Before each pyexec
# run it waits until the science spare is ready again (a preloading spare counts as ready
# only once its bootstrap has imported its modules), then $SETTLE seconds (default 0)
# more.
#
# Both sides run the README's command on the same files: pyexec sends data.csv and brings
# plot.png back (`--file`, `--get`), `docker run` gets them through a bind mount; each
# run checks that a PNG came out.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-10}
settle=${SETTLE:-0}
image=pyexec/sandbox:science
bin=${BIN:-target/release}
[ -x "$bin/pyexecd" ] || bin=target/debug
work=$(mktemp -d)
instance=bench-plot-$$
daemon=""
cleanup() {
  [ -n "$daemon" ] && kill -TERM "$daemon" 2>/dev/null && wait "$daemon" 2>/dev/null
  docker ps -aq --filter "label=pyexec.instance=$instance" | xargs -r docker rm -f -v >/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

docker image inspect "$image" >/dev/null
mkdir -p "$work/saved" "$work/mount"
cp examples/plot/plot.py examples/plot/data.csv "$work/mount/"
# A PNG's signature and size, or a failure.
png() { [ "$(head -c 8 "$1" | od -An -tx1 | tr -d ' \n')" = 89504e470d0a1a0a ] && stat -c %s "$1"; }

"$bin/pyexecd" gen-certs --dir "$work/certs" >/dev/null
"$bin/pyexecd" --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 --instance "$instance" \
  --cert "$work/certs/server.pem" --key "$work/certs/server.key" \
  --warm 1 --extra-image science=$image --image-warm science=1 \
  --preload science=pandas,matplotlib.pyplot >"$work/out" 2>"$work/log" &
daemon=$!
for _ in $(seq 600); do grep -q '^listening on' "$work/out" && break; sleep 0.1; done
addr=$(sed -n 's/^listening on //p' "$work/out")
metrics=$(sed -n 's|.*metrics at http://\([^/]*\)/.*|\1|p' "$work/log" | head -1)
[ -n "$addr" ] && [ -n "$metrics" ] || { cat "$work/log" >&2; exit 1; }

ms() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }
# Until both pools (default and science) hold a ready spare; how long that took, in ms.
pool_ready() {
  local t0; t0=$(date +%s%N)
  until [ "$(curl -s "http://$metrics/metrics" | awk '$1 == "pyexec_warm_pool_size" {print $2}')" = 2 ]; do
    sleep 0.05
  done
  ms "$t0"
}

pyexec_ms=(); docker_ms=()
for i in $(seq "$runs"); do
  ready=$(pool_ready)
  sleep "$settle"
  rm -f "$work/saved/plot.png" "$work/mount/plot.png"
  t0=$(date +%s%N)
  out=$("$bin/pyexec" --server "$addr" --ca "$work/certs/ca.pem" --image science \
    --file examples/plot/data.csv --get plot.png --out-dir "$work/saved" examples/plot/plot.py 2>&1)
  p=$(ms "$t0")
  t0=$(date +%s%N)
  dout=$(docker run --rm --network none --log-driver none --label "pyexec.instance=$instance" \
    -v "$work/mount:/w" -w /w "$image" python3 -u plot.py 2>&1)
  d=$(ms "$t0")
  pp=$(png "$work/saved/plot.png") || { echo "pyexec made no PNG: $out" >&2; exit 1; }
  dp=$(png "$work/mount/plot.png") || { echo "docker run made no PNG: $dout" >&2; exit 1; }
  pyexec_ms+=("$p"); docker_ms+=("$d")
  echo "run $i: pyexec ${p} ms (PNG ${pp} bytes; spare ready after ${ready} ms), docker run ${d} ms (PNG ${dp} bytes)"
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
p=$(median "${pyexec_ms[@]}"); d=$(median "${docker_ms[@]}")
echo "median of $runs: pyexec ${p} ms, docker run ${d} ms, ratio $(awk -v p="$p" -v d="$d" 'BEGIN {printf "%.3f", p / d}')"
