"""S2S_<STAGE>_THREADS and S2S_<STAGE>_NICE: how a stage shares the machine's CPUs with the others."""

import subprocess
import sys

import pytest

from services.runtime.errors import ConfigError
from services.runtime.settings import StageSettings
from services.runtime.worker import apply_cpu_settings

APPLY = """
import os, sys, torch
from services.runtime.settings import StageSettings
from services.runtime.worker import apply_cpu_settings
apply_cpu_settings(StageSettings("llm", {"S2S_LLM_THREADS": "1", "S2S_LLM_NICE": sys.argv[1]}))
print(torch.get_num_threads(), os.nice(0))
"""


@pytest.mark.parametrize("nice", ["0", "10"])
def test_threads_and_nice_apply_to_the_stage_process(nice):
    # in a child: a process cannot raise its priority back after lowering it
    before = subprocess.run([sys.executable, "-c", "import os; print(os.nice(0))"], capture_output=True,
                            text=True, check=True).stdout.split()
    out = subprocess.run([sys.executable, "-c", APPLY, nice], capture_output=True, text=True, check=True,
                         timeout=60).stdout.split()
    assert out == ["1", str(int(before[0]) + int(nice))]


@pytest.mark.parametrize("nice", ["-5", "20", "high"])
def test_a_bad_nice_is_a_config_error(nice):
    with pytest.raises(ConfigError, match="NICE"):
        apply_cpu_settings(StageSettings("llm", {"S2S_LLM_NICE": nice}))


def test_kokoro_speaks_a_first_sentence_on_its_own_thread_count(tiny_kokoro):
    import torch

    from services.tts.backends import KokoroBackend

    backend = KokoroBackend(model_path=tiny_kokoro["model_path"], config_path=tiny_kokoro["config_path"],
                            voices_dir=tiny_kokoro["voices_dir"], first_threads=1)
    backend.load()
    before = torch.get_num_threads()
    stream = backend.synthesize("Hello there.", "af_heart", first=True)
    assert next(stream).size and torch.get_num_threads() == 1  # while the first sentence is spoken
    stream.close()
    assert torch.get_num_threads() == before  # restored for the sentences after it
    assert next(backend.synthesize("Hello there.", "af_heart")).size and torch.get_num_threads() == before
