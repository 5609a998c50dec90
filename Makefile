# Shortcuts; each target runs the script named in it.
.PHONY: run test bench

run:
	bash scripts/run.sh

test:
	bash scripts/test.sh

bench:
	bash scripts/bench.sh
