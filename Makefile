# Two commands do everything on a fresh machine:  `make demo`  and  `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.partprobe-installed
export PARTPROBE_HOME ?= $(CURDIR)/.partprobe

.PHONY: install demo test clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	# The seg extra (the onedl mmsegmentation fork, pure-Python without mmcv's compiled ops) so that the
	# segmentation tests run for real; the core imports and runs without it.
	MMCV_WITH_OPS=0 $(PY) -m pip install -q -e '.[dev,seg]'
	touch $(STAMP)

install: $(STAMP)

# Main job on built-in sample data: writes a small CUB-format dataset, runs part retrieval with the
# colour-statistics baseline (no download), exports the leaderboard and the figures.
demo: $(STAMP)
	$(PY) -m probes.demo --out demo_data
	$(PY) -m analysis.leaderboard --results demo_data/results --out demo_data/leaderboard.csv
	$(PY) -m analysis.tables --results demo_data/results --out demo_data/tables --per-class
	$(PY) -m analysis.figures --results demo_data/results --out demo_data/figures

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) demo_data results .partprobe
