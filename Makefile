# recog: `make demo` (install, then train -> eval -> export -> predict on the embedded digits), `make test`
# (the whole suite, what CI runs), `make test-fast` (the edit loop: the tests not marked slow).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
OUTPUTS ?= outputs
PORT ?= 5000
ARGS ?=

# paddlepaddle (CPU) unless nvidia-smi sees a GPU. Never both: they ship the same module.
# Pick a wheel yourself with e.g. `make install PADDLE=paddlepaddle-gpu==3.3.1 PADDLE_INDEX=<url>`
# (see README: GPU wheels for each CUDA version live on Paddle's own package index).
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo yes)
PADDLE_CPU := paddlepaddle>=3.0,<4
PADDLE_GPU := paddlepaddle-gpu>=3.0,<4
PADDLE ?= $(if $(HAS_GPU),$(PADDLE_GPU),$(PADDLE_CPU))
PADDLE_INDEX ?=

.PHONY: install demo train eval export predict index serve test test-fast lint ui clean-outputs

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@if $(BIN)/python -m pip show -q $(if $(HAS_GPU),paddlepaddle,paddlepaddle-gpu) 2>/dev/null; then \
		$(BIN)/python -m pip uninstall -y -q paddlepaddle paddlepaddle-gpu; fi
	$(BIN)/python -m pip install -q "$(PADDLE)" $(if $(PADDLE_INDEX),--extra-index-url $(PADDLE_INDEX))
	$(BIN)/python -m pip install -q -e ".[test]"
	# Test oracle only, not installed: PaddleClas's wheel, whose model definitions the parity tests
	# import from the archive (its own requirements would clash with ours and are not needed).
	$(BIN)/python -m pip download -q --no-deps "paddleclas==2.6.0" -d $(VENV)/oracles
	@touch $@

# The whole main job on the embedded digits, into one run folder: train, evaluate the best
# model, export it, extract features of the query images and search them in a gallery, index the
# gallery as a search model and ask the served model about one query digit.
# Its runs go to the MLflow experiment digits_demo (the recipe itself names none: your data trained
# with experiment=digits_demo goes to mlflow.experiment_name, default recog).
DIGITS := $(OUTPUTS)/data/digits
DEMO := experiment=digits_demo mlflow.experiment_name=digits_demo
demo: install
	@run=$(OUTPUTS)/runs/demo_$$(date +%Y-%m-%d_%H-%M-%S); set -e; \
	$(BIN)/python run.py stage=train $(DEMO) hydra.run.dir=$$run $(ARGS); \
	$(BIN)/python run.py stage=eval $(DEMO) model_path=$$run/best_model hydra.run.dir=$$run/eval $(ARGS); \
	$(BIN)/python run.py stage=export $(DEMO) model_path=$$run/best_model hydra.run.dir=$$run/logs/export $(ARGS); \
	$(BIN)/python run.py stage=predict $(DEMO) predict.model_dir=$$run/export \
		predict.input=$(DIGITS)/query_list.txt predict.gallery=$(DIGITS)/gallery_list.txt hydra.run.dir=$$run/predict $(ARGS); \
	$(BIN)/python run.py stage=index experiment=digits_demo index.model_dir=$$run/export \
		index.gallery=$(DIGITS)/gallery_list.txt hydra.run.dir=$$run/index_stage $(ARGS); \
	$(BIN)/python scripts/demo_summary.py $$run; \
	$(BIN)/python scripts/demo_summary.py --served-model $$run; \
	$(BIN)/python scripts/served_search.py --demo $$run

train: install
	$(BIN)/python run.py stage=train $(ARGS)

# Evaluates MODEL (default: the newest best_model under $(OUTPUTS)/runs).
eval: install
	@model="$(MODEL)"; [ -n "$$model" ] || model=$$(ls -td $(OUTPUTS)/runs/*/best_model 2>/dev/null | head -n 1); \
	if [ -z "$$model" ]; then echo "no best_model under $(OUTPUTS)/runs: run make train first" >&2; exit 2; fi; \
	$(BIN)/python run.py stage=eval model_path=$$model $(ARGS)

# Exports MODEL (default: the newest best_model under $(OUTPUTS)/runs) for deployment, into <run>/export.
export: install
	@model="$(MODEL)"; [ -n "$$model" ] || model=$$(ls -td $(OUTPUTS)/runs/*/best_model 2>/dev/null | head -n 1); \
	if [ -z "$$model" ]; then echo "no best_model under $(OUTPUTS)/runs: run make train first" >&2; exit 2; fi; \
	$(BIN)/python run.py stage=export model_path=$$model $(ARGS)

# Features of INPUT (a folder or list) with EXPORT (default: the newest export), searched in
# GALLERY when given: make predict INPUT=imgs/ GALLERY=gallery.txt
predict: install
	@dir="$(EXPORT)"; [ -n "$$dir" ] || dir=$$(ls -td $(OUTPUTS)/runs/*/export 2>/dev/null | head -n 1); \
	if [ -z "$$dir" ]; then echo "no export under $(OUTPUTS)/runs: run make export first" >&2; exit 2; fi; \
	$(BIN)/python run.py stage=predict predict.model_dir=$$dir predict.input=$(INPUT) \
		$(if $(GALLERY),predict.gallery=$(GALLERY)) $(ARGS)

# Indexes GALLERY (a list of `path label` lines, or a folder of <label>/ subfolders) with EXPORT (default:
# the newest export) into <run>/index and logs export + index as a search model:
# make index GALLERY=gallery.txt; then make serve MODEL=runs:/<the index run's id>/model (the command prints it).
index: install
	@dir="$(EXPORT)"; [ -n "$$dir" ] || dir=$$(ls -td $(OUTPUTS)/runs/*/export 2>/dev/null | head -n 1); \
	if [ -z "$$dir" ]; then echo "no export under $(OUTPUTS)/runs: run make export first" >&2; exit 2; fi; \
	$(BIN)/python run.py stage=index index.model_dir=$$dir $(if $(GALLERY),index.gallery=$(GALLERY)) $(ARGS)

# Serves MODEL (an MLflow model URI; default: the newest run's MLflow Model, runs:/<run id>/model)
# over HTTP on 127.0.0.1:PORT (default 5001) with `mlflow models serve` in this environment, from a
# copy first checked by recog (every file against its recog_model.json, an MLmodel naming recog's
# loader and nothing else: recog/tracking/model_folder.py): make serve MODEL=models:/recog@champion PORT=5001;
# then POST {"inputs": {"image": ["<base64 PNG / JPEG / WebP>"]}} (or uint8 [N, H, W, 3] pixels) to /invocations.
SERVE_PORT := $(if $(filter command line environment,$(origin PORT)),$(PORT),5001)
serve: install
	@model="$(MODEL)"; if [ -z "$$model" ]; then \
		state=$$(ls -td $(OUTPUTS)/runs/*/best_model/state.json 2>/dev/null | head -n 1); \
		run_id=$$([ -n "$$state" ] && $(BIN)/python -c 'import json, sys; print(json.load(open(sys.argv[1])).get("mlflow_run_id") or "")' "$$state"); \
		if [ -z "$$run_id" ]; then echo "no tracked run under $(OUTPUTS)/runs: run make train first, or pass MODEL=models:/<name>@<alias>" >&2; exit 2; fi; \
		model="runs:/$$run_id/model"; fi; \
	export MLFLOW_TRACKING_URI="$${MLFLOW_TRACKING_URI:-sqlite:///$(abspath $(OUTPUTS))/mlflow.db}" MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false; \
	copy=$$(mktemp -d); trap 'rm -rf "$$copy"' EXIT; trap 'exit 130' INT; trap 'exit 143' TERM; \
	local=$$($(BIN)/python -m recog.tracking.model_folder "$$model" "$$copy/model") || exit 2; \
	echo "serving $$model (checked copy: $$local) on http://127.0.0.1:$(SERVE_PORT)/invocations"; \
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/mlflow models serve --env-manager local -m "$$local" -h 127.0.0.1 -p $(SERVE_PORT)

# The whole suite (CI: .ci/run) on TEST_WORKERS processes (pytest-xdist), one thread each, printing
# the 15 slowest tests. Tests in one xdist_group share a worker: those starting several processes, and
# those sharing a costly module fixture (a trained run, a sweep, an MLflow server).
# One process: make test TEST_WORKERS=0. Commands run in the test process (recog.app.main) unless the
# process is what a test checks (tests/commands.py).
TEST_WORKERS ?= 2
test: install lint
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup --durations=15 $(ARGS)

# ruff (configured in pyproject.toml): the lint rules and the formatting, checked, never rewritten here.
# Fix with: .venv/bin/ruff check --fix . && .venv/bin/ruff format .
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The edit loop: every test not marked slow (@pytest.mark.slow), well under 90 s on 2 cores.
test-fast: install
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -m "not slow" -n $(TEST_WORKERS) --dist loadgroup $(ARGS)

# The MLflow UI on the embedded store, bound to this machine only unless HOST says otherwise
# (HOST=0.0.0.0 serves every network interface: anyone who can reach the port sees and edits the runs).
# Prints the URL of the newest experiment's runs in the model-training view (recog/tracking/ui.py).
HOST ?= 127.0.0.1
ui: install
	$(BIN)/python -m recog.tracking.ui --output-root $(OUTPUTS) --host $(HOST) --port $(PORT)

clean-outputs:
	rm -rf $(OUTPUTS)
