# Two entry points: `make demo` (main job on the embedded default) and `make test` (whole suite).
# Both create .venv on first use. torch is installed first and pinned: a looser spec pulls GBs of CUDA.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install lint clean

$(STAMP): requirements.txt requirements-test.txt setup.py
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "Python 3.10+ needed"'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || \
	  { echo "error: could not create $(VENV): install python3-venv (apt-get install python3-venv)"; exit 1; }
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -r requirements.txt -r requirements-test.txt
	$(PY) -m pip install -q --no-deps -e .
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/ros2-gmskip demo

test: $(STAMP)
	CYCLONEDDS_URI=file://$(CURDIR)/config/cyclonedds-loopback.xml $(PY) -m pytest -q -p no:cacheprovider test

# ROS 2's own linters with ament's settings, as `colcon test` runs them (test_flake8/test_pep257).
LINT_PATHS := ros2_gmskip test bench launch setup.py

lint: $(STAMP)
	$(VENV)/bin/ament_flake8 $(LINT_PATHS)
	$(VENV)/bin/ament_pep257 $(LINT_PATHS)

clean:
	rm -rf $(VENV) build install log *.egg-info demo_out
