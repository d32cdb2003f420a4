#!/bin/bash
# The A/B of README.md: one build, FUSEDRNN_CPU_GEMM=auto ("before": MKL on an Intel CPU)
# against brgemm ("now"), processes alternating, 4 of each; one JSON line per process.
#   bash run_ab.sh runs.jsonl lstm,gru,rnn    (PY: the Python with fusedrnn installed)
cd "$(dirname "$0")"
PY=${PY:-python}
out=${1:-runs.jsonl}; cells=${2:-lstm,gru,rnn}
for r in 1 2 3 4; do
  for b in before now; do
    if [ $b = now ]; then mode=brgemm; else mode=auto; fi
    d=$(FUSEDRNN_CPU_GEMM=$mode $PY modules.py $cells) || exit 1
    echo "{\"build\": \"$b\", \"gemm\": \"$mode\", \"round\": $r, \"load\": \"$(cut -d' ' -f1-3 /proc/loadavg)\", \"data\": $d}" >> $out
  done
done
