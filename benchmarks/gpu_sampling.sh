#!/usr/bin/env bash
# The sampler on a GPU machine (device tool): RaggedEngine (eager and compiled) vs generate on cuda, the rollout and
# evaluation tests there (the CUDA ones included), and `ra3 evaluate` on cuda with each ragged engine.
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
timeout 280 python benchmarks/sampling.py --model "$M" --prompts "$P" --device "$DEVICE" --repeats 3 --threads 8 \
  --batch 64 --limit "$LIMIT" > "$OUT/sampling_${DEVICE}_b64.txt" 2>&1
grep -E "model:|lengths|/s |median|same|steps|Error" "$OUT/sampling_${DEVICE}_b64.txt"
for E in ragged ragged_compiled; do
  TIMEFORMAT="ra3 evaluate --engine $E on $DEVICE: %R s"
  time timeout 90 python -m ra3.cli evaluate --model "$M" --benchmark skillworld \
    --source skillworld="$P" --output_dir "$OUT/eval_${DEVICE}_$E" --n_samples 2 --temperature 0.8 --k 1 2 \
    --max_new_tokens 200 --batch_size 128 --limit "$LIMIT" --device "$DEVICE" --engine $E > "$OUT/evaluate_${DEVICE}_$E.txt" 2>&1
  tail -3 "$OUT/evaluate_${DEVICE}_$E.txt"
done
timeout 150 python -m pytest -q -x tests/rollout tests/evaluation/test_passk.py -k "not logs_during_fit" > "$OUT/pytest.txt" 2>&1
tail -3 "$OUT/pytest.txt"
