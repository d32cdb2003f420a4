#!/bin/bash
# The A/B of README.md: one build, FUSEDRNN_CPU_GEMM=auto ("before": MKL on an Intel CPU)
# against brgemm ("now"), processes alternating, 4 of each; one JSON line per process, from
# the Zen 5 A/B's script (../epyc-zen5-2core-brgemm-grads-ab/modules.py).
#   bash run_ab.sh runs.jsonl lstm,gru,rnn [DTYPE]   (PY: the Python with fusedrnn installed;
#                                                   DTYPE: float32 unless given)
#   python ../epyc-zen5-2core-brgemm-grads-ab/summarize.py runs.jsonl   # the table
cd "$(dirname "$0")"
PY=${PY:-python}
out=${1:-runs.jsonl}; cells=${2:-lstm,gru,rnn}; dtype=${3:-}
for r in 1 2 3 4; do
  for b in before now; do
    if [ $b = now ]; then mode=brgemm; else mode=auto; fi
    d=$(FUSEDRNN_CPU_GEMM=$mode $PY ../epyc-zen5-2core-brgemm-grads-ab/modules.py $cells $dtype) || exit 1
    echo "{\"build\": \"$b\", \"gemm\": \"$mode\", \"round\": $r, \"load\": \"$(cut -d' ' -f1-3 /proc/loadavg)\", \"data\": $d}" >> $out
  done
done
