# Two entry points: `make demo` (main job on the embedded default) and `make test` (whole suite).
# Both create .venv on first use. torch is installed first and pinned: a looser spec pulls GBs of CUDA.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test colcon-test install lint clean

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

# Every DDS participant on loopback: Cyclone DDS and Fast DDS (the rclpy wheels' rmw) alike.
ROS_ENV := CYCLONEDDS_URI=file://$(CURDIR)/config/cyclonedds-loopback.xml \
	ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST \
	FASTRTPS_DEFAULT_PROFILES_FILE=$(CURDIR)/config/fastdds-loopback.xml

# TEST_MARK: a pytest marker expression to run part of the suite (CI: `not linter and not ros`,
# the rest runs under `colcon test` in colcon-test); empty: the whole suite.
TEST_MARK ?=

test: $(STAMP)
	$(ROS_ENV) $(PY) -m pytest -q -p no:cacheprovider $(if $(TEST_MARK),-m "$(TEST_MARK)") test

# The package as ROS 2 users build it: a scratch colcon workspace, `colcon build
# --symlink-install`, then `colcon test` on the tests marked COLCON_MARK (the ament linters and
# the ROS tests) and `colcon test-result`, which fails on any failed test.
COLCON_WS ?= $(CURDIR)/build/colcon_ws
COLCON_MARK ?= linter or ros

colcon-test: $(STAMP)
	rm -rf $(COLCON_WS) && mkdir -p $(COLCON_WS)/src && ln -s $(CURDIR) $(COLCON_WS)/src/ros2_gmskip
	cd $(COLCON_WS) && $(ROS_ENV) $(abspath $(PY)) -m colcon build --symlink-install
	cd $(COLCON_WS) && $(ROS_ENV) $(abspath $(PY)) -m colcon test --return-code-on-test-failure \
	  --pytest-args -q -m "$(COLCON_MARK)"; rc=$$?; \
	  cd $(COLCON_WS) && $(abspath $(PY)) -m colcon test-result --verbose && exit $$rc

# ROS 2's own linters with ament's settings, as `colcon test` runs them (test_flake8/test_pep257).
LINT_PATHS := ros2_gmskip test bench launch setup.py

lint: $(STAMP)
	$(VENV)/bin/ament_flake8 $(LINT_PATHS)
	$(VENV)/bin/ament_pep257 $(LINT_PATHS)

clean:
	rm -rf $(VENV) build install log *.egg-info demo_out
