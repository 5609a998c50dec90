# Shortcuts; each target runs the script named in it.
.PHONY: run test bench bench-workers

run:
	bash scripts/run.sh

test:
	bash scripts/test.sh

bench:
	bash scripts/bench.sh

bench-workers:
	bash scripts/bench_workers.sh
