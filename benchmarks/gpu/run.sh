#!/usr/bin/env bash
# Run, on the device machine, one group of GPU checks; logs and JSON go to $OUT.
# From here: device run, carry [".whl-GROUP"], command "bash benchmarks/gpu/run.sh GROUP".
set -uo pipefail
group=${1:?usage: run.sh score|embed}
out=${OUT:-/tmp/out}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site ".whl-$group"/*.whl || exit 1
export PYTHONPATH="$PWD:/tmp/site" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
# Name every missing import at once, so that one failed call says what to carry next time.
python3 - <<'PY' 2>&1 | tee -a "$out/gpu.txt"
import importlib
for name in ("torch", "triton", "numpy", "PIL", "open_clip", "faiss", "pyarrow", "typer", "rich",
             "matplotlib", "safetensors", "pytest"):
    try:
        module = importlib.import_module(name)
        print(name, getattr(module, "__version__", "?"))
    except Exception as error:  # noqa: BLE001 - report and go on
        print(name, "MISSING:", error)
PY
case "$group" in
    score)
        python3 -m pytest -m gpu -p no:cacheprovider tests/test_score_triton.py 2>&1 \
            | tee "$out/pytest-gpu.log"
        # ClipLoss in bf16 needs about half the 16 bytes per logit budgeted: let it try 65536.
        python3 benchmarks/bench_score.py --device cuda --dtype bf16 --sizes 65536 262144 \
            --memory-limit-gib 70 --keys 1000000 --json "$out/bench_score_cuda.json" 2>&1 \
            | tee "$out/bench_score.log"
        ;;
    embed)
        python3 -m pytest -m gpu -p no:cacheprovider tests/test_pixels.py 2>&1 \
            | tee "$out/pytest-gpu-pixels.log"
        python3 benchmarks/bench_embed.py --model ViT-B-32:random --device cuda \
            --images 20000 --workers 16 --batch-size 256 --repeats 1 --float-pixels \
            --json "$out/bench_embed_cuda.json" 2>&1 | tee "$out/bench_embed.log"
        python3 -m clipkit quickstart /tmp/qs --device cuda --workers 8 -f json \
            > "$out/quickstart.json" 2> "$out/quickstart.log"
        echo "quickstart exit $?" | tee -a "$out/quickstart.log"
        ;;
esac
