# Every target creates the virtual environment when it is missing.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test serve bench loadtest capacity drills clean-state

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned: anything unpinned would pull several GB of CUDA wheels.
	$(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/recserve demo

serve: $(STAMP)
	$(VENV)/bin/recserve serve

# pytest exits 5 when it collects no tests; that is not a failure of the suite.
test: $(STAMP)
	$(PY) -m pytest -q -rs $(PYTEST_ARGS); status=$$?; if [ $$status -eq 5 ]; then exit 0; else exit $$status; fi

bench: $(STAMP)
	$(PY) -m benchmarks.copy_load
	$(PY) -m benchmarks.evaluation_speed
	$(PY) -m benchmarks.serving_latency

# Locust against the budgets in loadtests/budgets.yaml; PROFILE=smoke|soak|stress, exits 1 on a broken budget.
PROFILE ?= smoke
loadtest: $(STAMP)
	$(PY) -m loadtests.run --profile $(PROFILE) $(LOADTEST_ARGS)

# The highest load at which every budget holds: Locust users stepped up until one breaks (loadtests/capacity.py).
capacity: $(STAMP)
	$(PY) -m loadtests.capacity $(CAPACITY_ARGS)

# Fault drills under load (loadtests/drills.py): kill a replica, slow a model, vector store and PostgreSQL
# down, a rollout, schemathesis fuzzing. Needs the demo's trained models and its embedded PostgreSQL.
drills: $(STAMP)
	$(PY) -m loadtests.drills $(DRILL_ARGS)

clean-state: $(STAMP)
	$(VENV)/bin/recserve db stop
	rm -rf .state artifacts reports
