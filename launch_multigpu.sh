#!/usr/bin/env bash
# Grid sweep of fingerprinting runs: every combination of the arrays below is fine-tuned with DeepSpeed on D GPUs,
# as many jobs at a time as the listed GPUs allow, then checked; finished runs (final_model exists) are skipped.
# All results are collected into results/sweep.csv and results/sweep.json.
#
#   bash launch_multigpu.sh                                  # the grid below, GPUs 0-3, 1 GPU per job
#   GPUS="0 1 2 3 4 5 6 7" D=2 bash launch_multigpu.sh       # 4 jobs at a time, 2 GPUs each
#   LAMBDAS="0.0 0.75" LEARNING_RATES="1e-5 3e-5" bash launch_multigpu.sh   # any array can be set from the env
#   DRY_RUN=1 bash launch_multigpu.sh                        # print the grid's run folders, train nothing
#
# The grid is the arrays below, under the seed's names: edit them as in the seed (e.g. model_families=("mistral")
# with model_sizes=("7B"), which pass --model_family/--model_size instead of --model_path), or set the upper-case
# environment variable named next to each, which wins. Without GPUs the jobs run one at a time on CPU_RANKS CPU
# ranks (default 2).
set -uo pipefail
cd "$(dirname "$0")"

PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
DS=${DS:-$(dirname "$PY")/deepspeed}
command -v "$DS" >/dev/null 2>&1 || DS=deepspeed

# ---- the grid: edit the arrays (the seed's names) or set the upper-case variable ----
model_families=()                           # MODEL_FAMILIES; with model_sizes instead of models
model_sizes=()                              # MODEL_SIZES
models=("default")                          # MODELS: paths or hub ids (used when model_families is empty)
max_num_fingerprints=("32")                 # NUM_FINGERPRINTS
max_key_lengths=("16")                      # KEY_LENGTHS
max_response_lengths=("8")                  # RESPONSE_LENGTHS
fingerprint_generation_strategies=("english")   # STRATEGIES
learning_rates=("1.5e-4")                   # LEARNING_RATES
forgetting_regularizer_strengths=("0.0")    # LAMBDAS
use_prompt_augmentation=("false")           # AUGMENTATION

from_env() {  # array-name ENV_NAME: the environment variable, when set, replaces the array
  [ -n "${!2+x}" ] && read -r -a "$1" <<< "${!2}"
  return 0
}
from_env model_families MODEL_FAMILIES; from_env model_sizes MODEL_SIZES; from_env models MODELS
from_env max_num_fingerprints NUM_FINGERPRINTS; from_env max_key_lengths KEY_LENGTHS
from_env max_response_lengths RESPONSE_LENGTHS; from_env fingerprint_generation_strategies STRATEGIES
from_env learning_rates LEARNING_RATES; from_env forgetting_regularizer_strengths LAMBDAS
from_env use_prompt_augmentation AUGMENTATION
model_specs=()                              # one "--model_path X" or "--model_family F --model_size S" per model
if [ "${#model_families[@]}" -gt 0 ]; then
  [ "${#model_sizes[@]}" -gt 0 ] || { echo "error: model_families needs model_sizes"; exit 2; }
  for f in "${model_families[@]}"; do for z in "${model_sizes[@]}"; do
    model_specs+=("--model_family $f --model_size $z"); done; done
else
  for m in "${models[@]}"; do model_specs+=("--model_path $m"); done
fi
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
for model in "${model_specs[@]}"; do for n in "${max_num_fingerprints[@]}"; do for kl in "${max_key_lengths[@]}"; do
for rl in "${max_response_lengths[@]}"; do for strat in "${fingerprint_generation_strategies[@]}"; do
for lr in "${learning_rates[@]}"; do for lam in "${forgetting_regularizer_strengths[@]}"; do
for aug in "${use_prompt_augmentation[@]}"; do
  # shellcheck disable=SC2206
  args=($model --fingerprints_file_path "$fingerprints_file" --num_fingerprints "$n"
        --max_key_length "$kl" --max_response_length "$rl" --fingerprint_generation_strategy "$strat"
        --learning_rate "$lr" --forgetting_regularizer_strength "$lam" --use_augmentation_prompts "$aug"
        --num_train_epochs "$epochs" --batch_size "$batch_size" --deepspeed_stage "$stage"
        --results_dir "$results" $extra_args)
  run_dir=$("$PY" finetune_multigpu.py "${args[@]}" --print_run_dir 2>&1 | tail -n 1)
  if [[ "$run_dir" == error:* ]]; then echo "[sweep] $run_dir"; exit 2; fi
  if [ -n "${DRY_RUN:-}" ]; then echo "[sweep] plan: $model n=$n key=$kl resp=$rl $strat lr=$lr lambda=$lam aug=$aug -> $run_dir"; continue; fi
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
[ -n "${DRY_RUN:-}" ] && exit 0
wait
echo "[sweep] launched $launched, skipped $skipped"
"$PY" -m privlm.report "$results"
