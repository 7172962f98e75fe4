#!/usr/bin/env bash
# Grid sweep of fingerprinting runs: every combination of the arrays below is fine-tuned with DeepSpeed on D GPUs,
# as many jobs at a time as the listed GPUs allow, then checked; finished runs (final_model exists) are skipped.
# All results are collected into results/sweep.csv and results/sweep.json.
#
#   bash launch_multigpu.sh                                  # the grid below, GPUs 0-3, 1 GPU per job
#   GPUS="0 1 2 3 4 5 6 7" D=2 bash launch_multigpu.sh       # 4 jobs at a time, 2 GPUs each
#   LAMBDAS="0.0 0.75" LEARNING_RATES="1e-5 3e-5" bash launch_multigpu.sh   # any array can be set from the env
#
# Without GPUs the jobs run one at a time on CPU_RANKS CPU ranks (default 2).
set -uo pipefail
cd "$(dirname "$0")"

PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
DS=${DS:-$(dirname "$PY")/deepspeed}
command -v "$DS" >/dev/null 2>&1 || DS=deepspeed

# ---- the grid (edit here or set the upper-case variable) ----
read -r -a models          <<< "${MODELS:-default}"
read -r -a num_fingerprints <<< "${NUM_FINGERPRINTS:-32}"
read -r -a key_lengths     <<< "${KEY_LENGTHS:-16}"
read -r -a response_lengths <<< "${RESPONSE_LENGTHS:-8}"
read -r -a strategies      <<< "${STRATEGIES:-english}"
read -r -a learning_rates  <<< "${LEARNING_RATES:-1.5e-4}"
read -r -a lambdas         <<< "${LAMBDAS:-0.0}"
read -r -a augmentation    <<< "${AUGMENTATION:-false}"
fingerprints_file=${FINGERPRINTS_FILE:-generated_data/demo_fingerprints.json}
epochs=${EPOCHS:-12}
batch_size=${BATCH_SIZE:-8}
stage=${STAGE:-2}
results=${RESULTS:-results}
extra_args=${EXTRA_ARGS:-}            # passed to finetune_multigpu.py as is, e.g. "--offload"

# ---- slots: groups of D GPUs ----
D=${D:-1}
if [ -z "${GPUS+x}" ]; then
  ngpu=$("$PY" -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
  GPUS=$(seq -s ' ' 0 $(( ngpu - 1 )) 2>/dev/null)
  [ "$ngpu" -gt 0 ] || GPUS=""
fi
read -r -a gpus <<< "$GPUS"
slots=()
if [ "${#gpus[@]}" -eq 0 ]; then
  slots=("cpu")
  echo "[sweep] no GPUs: jobs run one at a time on ${CPU_RANKS:-2} CPU ranks"
else
  for (( i = 0; i + D <= ${#gpus[@]}; i += D )); do
    slots+=("$(IFS=,; echo "${gpus[*]:i:D}")")
  done
  echo "[sweep] ${#slots[@]} parallel slot(s): ${slots[*]}"
fi
declare -a pids
for (( s = 0; s < ${#slots[@]}; s++ )); do pids[s]=""; done

free_slot() {  # echo the index of a free slot, waiting for one if all are busy
  while true; do
    for (( s = 0; s < ${#slots[@]}; s++ )); do
      if [ -z "${pids[s]}" ] || ! kill -0 "${pids[s]}" 2>/dev/null; then echo "$s"; return; fi
    done
    sleep 5
  done
}

job() {  # slot run_dir args...
  local slot=$1 run_dir=$2; shift 2
  local port=$(( 29500 + RANDOM % 20000 ))
  mkdir -p "$run_dir"
  if [ "$slot" = cpu ]; then
    DS_ACCELERATOR=cpu "$DS" --num_gpus "${CPU_RANKS:-2}" --master_port "$port" finetune_multigpu.py "$@" || return 1
    "$PY" check_fingerprints.py --model_path "$run_dir/final_model" --output_file "$run_dir/check.json"
  else
    "$DS" --include "localhost:$slot" --master_port "$port" finetune_multigpu.py "$@" || return 1
    CUDA_VISIBLE_DEVICES=${slot%%,*} "$PY" check_fingerprints.py --model_path "$run_dir/final_model" \
      --output_file "$run_dir/check.json"
  fi
}

launched=0; skipped=0
for model in "${models[@]}"; do for n in "${num_fingerprints[@]}"; do for kl in "${key_lengths[@]}"; do
for rl in "${response_lengths[@]}"; do for strat in "${strategies[@]}"; do for lr in "${learning_rates[@]}"; do
for lam in "${lambdas[@]}"; do for aug in "${augmentation[@]}"; do
  # shellcheck disable=SC2206
  args=(--model_path "$model" --fingerprints_file_path "$fingerprints_file" --num_fingerprints "$n"
        --max_key_length "$kl" --max_response_length "$rl" --fingerprint_generation_strategy "$strat"
        --learning_rate "$lr" --forgetting_regularizer_strength "$lam" --use_augmentation_prompts "$aug"
        --num_train_epochs "$epochs" --batch_size "$batch_size" --deepspeed_stage "$stage"
        --results_dir "$results" $extra_args)
  run_dir=$("$PY" finetune_multigpu.py "${args[@]}" --print_run_dir 2>&1 | tail -n 1)
  if [[ "$run_dir" == error:* ]]; then echo "[sweep] $run_dir"; exit 2; fi
  if [ -d "$run_dir/final_model" ] && [ -f "$run_dir/check.json" ]; then
    echo "[sweep] skip (finished): $run_dir"; skipped=$(( skipped + 1 )); continue
  fi
  s=$(free_slot)
  echo "[sweep] launch on ${slots[s]}: $model n=$n key=$kl resp=$rl $strat lr=$lr lambda=$lam aug=$aug -> $run_dir"
  mkdir -p "$run_dir"
  ( job "${slots[s]}" "$run_dir" "${args[@]}" > "$run_dir/sweep.log" 2>&1 \
      && echo "[sweep] done: $run_dir" || echo "[sweep] FAILED (see $run_dir/sweep.log)" ) &
  pids[s]=$!
  launched=$(( launched + 1 ))
done; done; done; done; done; done; done; done
wait
echo "[sweep] launched $launched, skipped $skipped"
"$PY" -m privlm.report "$results"
