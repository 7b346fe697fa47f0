#!/usr/bin/env bash
# The sampler on a GPU machine (device tool): RaggedEngine vs generate on cuda, the rollout/evaluation tests there,
# and `ra3 evaluate` on cuda (sandbox overlapped with sampling) vs on the same machine's CPU.
# Carries in .whl/: transformers 5.24 (+ jsonargparse, docstring_parser, typeshed_client) wheels, a skill-world
# base (.whl/ntp) and its eval split (.whl/eval.jsonl). Rehearse on CPU: DEVICE=cpu LIMIT=10 OUT=/tmp/x bash ...
cd "$(dirname "$0")/.." || exit 1
DEVICE=${DEVICE:-cuda}; LIMIT=${LIMIT:-200}; M=${MODEL:-.whl/ntp}; P=${PROMPTS:-.whl/eval.jsonl}
if [ "$DEVICE" = cuda ]; then
  pip install --no-deps -q .whl/transformers-5.24.0-py3-none-any.whl .whl/jsonargparse-4.53.0-py3-none-any.whl \
    .whl/docstring_parser-0.18.0-py3-none-any.whl .whl/typeshed_client-2.15.0-py3-none-any.whl 2>&1 | tail -2
  nvidia-smi --query-gpu=name,memory.total --format=csv
fi
export PYTHONPATH=$PWD WANDB_MODE=disabled
python -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'cpus', __import__('os').cpu_count())"
for B in 64 400; do
  timeout 200 python benchmarks/sampling.py --model "$M" --prompts "$P" --device "$DEVICE" --repeats 3 --threads 8 \
    --batch $B --limit "$LIMIT" > "$OUT/sampling_${DEVICE}_b$B.txt" 2>&1
  grep -E "model:|lengths|/s |median|same|steps" "$OUT/sampling_${DEVICE}_b$B.txt"
done
for D in "$DEVICE" cpu; do
  TIMEFORMAT="ra3 evaluate on $D: %R s"
  time python -m ra3.cli evaluate --model "$M" --benchmark skillworld \
    --source skillworld="$P" --output_dir "$OUT/eval_$D" --n_samples 2 --temperature 0.8 --k 1 2 \
    --max_new_tokens 200 --batch_size 128 --limit "$LIMIT" --device "$D" > "$OUT/evaluate_$D.txt" 2>&1
  tail -3 "$OUT/evaluate_$D.txt"
done
timeout 240 python -m pytest -q -x tests/rollout tests/test_evaluation.py > "$OUT/pytest.txt" 2>&1
tail -3 "$OUT/pytest.txt"
