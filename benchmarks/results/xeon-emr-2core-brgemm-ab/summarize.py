"""Summarise an A/B jsonl: per cell/shape/mode, min over processes of each build, ratio now/before, and each build's ratio to torch.nn."""
import json, sys, collections
runs = [json.loads(l) for l in open(sys.argv[1])]
best = collections.defaultdict(lambda: float("inf"))
for run in runs:
    b = run["build"]
    for row in run["data"]["rows"]:
        key = (row["cell"], row["batch"], row["steps"], row["hidden"])
        for mode in ("inference", "training"):
            best[(b, key, mode, "f")] = min(best[(b, key, mode, "f")], row[f"fusedrnn {mode}"])
            best[(b, key, mode, "t")] = min(best[(b, key, mode, "t")], row[f"torch.nn {mode}"])
keys = list(dict.fromkeys(k[1] for k in best))  # in the order the runs measured them
print("| cell | batch x steps x hidden | mode | before ms | now ms | now / before | before / torch.nn | now / torch.nn |")
print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |")
for key in keys:
    for mode in ("inference", "training"):
        b, n = best[("before", key, mode, "f")], best[("now", key, mode, "f")]
        tb, tn = best[("before", key, mode, "t")], best[("now", key, mode, "t")]
        print(f"| {key[0].upper()} | {key[1]} x {key[2]} x {key[3]} | {mode} | {b:.3f} | {n:.3f} | {n/b:.2f} | {b/tb:.2f} | {n/tn:.2f} |")
