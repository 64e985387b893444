#!/usr/bin/env bash
# Fetch, here, the wheels that the device machine (Python 3.12, PyTorch and Triton installed,
# no network) lacks for one group of GPU checks, into .whl-GROUP/ (git-ignored via
# .git/info/exclude). A device call carries at most 64 MiB, so the checks come in two groups:
#   score: pytest -m gpu and bench_score.py (faiss, open_clip's ClipLoss)
#   embed: bench_embed.py and a `clipkit train` smoke run (pyarrow, open_clip, the CLI)
# Usage: benchmarks/gpu/wheels.sh score|embed   (then see benchmarks/gpu/run.sh)
set -euo pipefail
cd "$(dirname "$0")/../.."
group=${1:?usage: wheels.sh score|embed}
common=(open_clip_torch ftfy wcwidth timm regex pytest iniconfig pluggy packaging pygments)
case "$group" in
    score) wanted=("${common[@]}" faiss-cpu) ;;
    # pyarrow 17 is 40 MB, against 55 MB for the newest; 15 is smaller but needs NumPy 1.
    embed) wanted=("${common[@]}" "pyarrow==17.0.0" typer rich shellingham annotated-doc
                   pydantic pydantic-core typing-inspection markdown-it-py mdurl) ;;
    *) echo "unknown group: $group" >&2; exit 2 ;;
esac
folder=.whl-$group
grep -qx "/$folder/" .git/info/exclude 2>/dev/null || echo "/$folder/" >> .git/info/exclude
mkdir -p "$folder"
for name in "${wanted[@]}"; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$folder" "$name"
done
du -sh "$folder"
