# `make demo` and `make test` create .venv and install into it; nothing else is assumed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
LOCK := constraints.txt

.PHONY: install demo transfer-demo rlhf-demo test lint lock clean slurm-up slurm-down

# The demos need the package alone; the tests also need the dev extra (pytest, ruff, and torch
# with transformers for the Hugging Face parity tests: 0.9 GB more), installed by `make test`.
$(STAMP): pyproject.toml $(LOCK)
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python >= 3.11 is required, found " + sys.version.split()[0]'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c $(LOCK) -e .
	@touch $(STAMP)

$(DEV_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -c $(LOCK) -e '.[dev]'
	@touch $(DEV_STAMP)

install: $(DEV_STAMP)

demo: $(STAMP)
	$(BIN)/scaling-train --config-dir sweeps --config-name demo hydra/launcher=local \
		hydra.launcher.n_jobs=2
	$(BIN)/scaling-report runs/demo --bootstrap 100

# Hernandez et al. 2021 in miniature: pretrain on prose, fine-tune on code, train on code from
# scratch (sweeps/transfer_cpu.yaml); the report fits D_T = k·D_F^alpha·N^beta.
transfer-demo: $(STAMP)
	$(BIN)/scaling-train --config-dir sweeps --config-name transfer_cpu hydra/launcher=local \
		hydra.launcher.n_jobs=2
	$(BIN)/scaling-report runs/transfer --bootstrap 200

# Gao et al. 2022's reward-model overoptimization in miniature (sweeps/overoptimization_cpu.yaml):
# pretrain 4 sizes, SFT one policy, a proxy reward model of each size on gold-labelled
# comparisons of the policy's samples, PPO against each, DPO from the policy at 3 values of beta;
# then best-of-n against each and the report, which fits R_bon(d) and R_RL(d) per reward-model
# size and draws DPO's gold reward against sqrt(KL) per beta (docs/rlhf.md).
rlhf-demo: $(STAMP)
	$(BIN)/scaling-train --config-dir sweeps --config-name overoptimization_cpu \
		hydra/launcher=local hydra.launcher.n_jobs=2
	$(BIN)/scaling-bon --study runs/rlhf --n-max 256 --prompts val:32 --max-new-tokens 64
	$(BIN)/scaling-report runs/rlhf --bootstrap 200

# The report's browser test needs Debian's chromium, the Slurm tests (tests/slurm/) slurm-wlm and
# munge; installed here when missing (CI runs as root).
test: $(DEV_STAMP)
	@command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }
	@$(BIN)/python -m scaling.slurm_local install
	$(BIN)/python -m pytest -q

# A single-node Slurm cluster on this machine, for trying hydra/launcher=slurm (as root;
# docs/slurm.md), with the launcher's extra (.[slurm]). slurm-up prints how to use it;
# slurm-down cancels its jobs and stops it.
slurm-up: $(STAMP)
	$(BIN)/python -m pip install -q -c $(LOCK) -e '.[slurm]'
	$(BIN)/python -m scaling.slurm_local up

slurm-down: $(STAMP)
	$(BIN)/python -m scaling.slurm_local down

lint: $(DEV_STAMP)
	$(BIN)/ruff check .

# Re-resolve the lock: the newest versions pyproject.toml allows, installed into a scratch venv.
# torch: the dev extra's torch==2.13.0 resolves here to the CPU wheel on pip's find-links, and
# the lock pins it as 2.13.0+cpu, a local version no index serves as a CUDA build.
lock:
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install -q --upgrade pip
	.venv-lock/bin/python -m pip install -q -e '.[dev,slurm]'
	{ sed -n '1,3p' $(LOCK); .venv-lock/bin/pip freeze --exclude-editable; } > $(LOCK).new
	mv $(LOCK).new $(LOCK)
	rm -rf .venv-lock

clean:
	rm -rf $(VENV) runs outputs multirun
