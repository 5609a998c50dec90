"""Write config/<stage>.env and the README's settings table from the settings' declarations.

Every setting is declared once, as a Setting (key, type, default, doc), by the module that reads
it; each stage's ENV_FILE says what its env file ships. This script writes both documents from
them, so neither can drift:

    .venv/bin/python scripts/settings_docs.py            # rewrite config/*.env and README.md's table
    .venv/bin/python scripts/settings_docs.py --check    # exit 1, naming the files, if either differs
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.realtime.limits import KEY_PREFIX as REALTIME  # noqa: E402
from gateway.realtime.limits import RealtimeSettings  # noqa: E402
from gateway.settings import SCOPE as GATEWAY  # noqa: E402
from gateway.settings import GatewaySettings  # noqa: E402
from services.asr import stage as asr  # noqa: E402
from services.llm import stage as llm  # noqa: E402
from services.models import remote  # noqa: E402
from services.models import settings as models  # noqa: E402
from services.models import store  # noqa: E402
from services.runtime import curve, endpoints, logs, observe, worker  # noqa: E402
from services.runtime.settings import EnvLine, Setting, dataclass_settings  # noqa: E402
from services.tts import stage as tts  # noqa: E402

README = ROOT / "README.md"
BEGIN = "<!-- settings table: written by scripts/settings_docs.py from the declarations; edit those -->"
END = "<!-- end of the settings table -->"
STAGES = {"asr": asr, "llm": llm, "tts": tts}
STAGE_CLASSES = {"asr": asr.AsrStage, "llm": llm.LlmStage, "tts": tts.TtsStage}
# Each stage's own settings, in the table's order (the model's first).
OWN = {
    "asr": [s for s in models.ASR_MODEL_SETTINGS if s is not models.SOURCE],
    "llm": [s for s in models.LLM_MODEL_SETTINGS if s is not models.SOURCE] + list(llm.SETTINGS)
    + list(remote.SETTINGS),
    "tts": [s for s in models.TTS_MODEL_SETTINGS if s is not models.SOURCE],
}
# S2S_<STAGE>_<KEY> for every stage.
EVERY_STAGE = [models.SOURCE, *worker.WORKER_SETTINGS, observe.METRICS_PORT, observe.METRICS_HOST]
# S2S_<KEY>, whatever the process.
PROJECT = [endpoints.RUN_DIR, endpoints.EVENTS_ENDPOINT, *curve.SETTINGS, logs.LOG_LEVEL, logs.LOG_FORMAT,
           store.MODELS_DIR, store.MODELS_CACHE, observe.WORKER_INDEX]


def shown(value) -> str:
    """A value as an env file or the README writes it (60.0 -> 60)."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def env_file(stage: str) -> str:
    lines = [f"# {stage.upper()} stage settings (S2S_{stage.upper()}_*). Edit, then `supervisorctl restart {stage}`.",
             "# Environment variables of the same name win over this file; README, Settings, says what each does."]
    commented = False
    for line in STAGES[stage].ENV_FILE:
        if line.commented and not commented:
            lines.append("")  # the optional block stands apart
        commented = line.commented
        about = line.setting.doc.replace("`", "") + "." + (" " + line.note if line.note else "")
        lines += textwrap.wrap(about, 98, initial_indent="# ", subsequent_indent="# ", break_on_hyphens=False)
        lines.append(f"{'#' if line.commented else ''}S2S_{stage.upper()}_{line.setting.key}={line.text()}")
    return "\n".join(lines) + "\n"


def default_cell(setting: Setting) -> str:
    if setting.default_doc is not None:
        return setting.default_doc
    return "" if setting.default is None else f"`{shown(setting.default)}`"


def shipped(stage: str, setting: Setting) -> EnvLine | None:
    return next((line for line in STAGES[stage].ENV_FILE if line.setting is setting and not line.commented), None)


def stage_default(stage: str, setting: Setting) -> str:
    """The default, and what the env file sets when that differs."""
    cell = default_cell(setting)
    line = shipped(stage, setting)
    if line is not None and line.text() != ("" if setting.default is None else shown(setting.default)):
        cell += f"{'; ' if cell else ''}`config/{stage}.env`: `{line.text()}`"
    return cell


def every_stage_default(setting: Setting) -> str:
    if setting is worker.INBOX:
        own = {stage: cls.INBOX for stage, cls in STAGE_CLASSES.items()}
        cell = f"`{worker.StageDefaults.INBOX}`" + "".join(
            f", `{n}` {stage}" for stage, n in own.items() if n != worker.StageDefaults.INBOX)
    else:
        cell = default_cell(setting)
    built_in = "" if setting.default is None else shown(setting.default)
    env = [(stage, line.text()) for stage in STAGES
           if (line := shipped(stage, setting)) is not None and line.text() != built_in]
    if env:
        cell += "; " + ", ".join(f"`config/{stage}.env`: `{value}`" for stage, value in env)
    return cell


def row(name: str, default: str, doc: str) -> str:
    return f"| `{name}` | {default} | {doc} |".replace("|  |", "| |")


def table() -> str:
    rows = ["| setting | default | meaning |", "|---|---|---|"]
    for stage, settings in OWN.items():
        rows += [row(f"S2S_{stage.upper()}_{s.key}", stage_default(stage, s), s.doc) for s in settings]
    rows += [row(f"S2S_<STAGE>_{s.key}", every_stage_default(s), s.doc) for s in EVERY_STAGE]
    prefix = f"S2S_{GATEWAY.upper()}_"
    rows += [row(prefix + s.key, default_cell(s), s.doc) for s in dataclass_settings(GatewaySettings).values()]
    rows += [row(prefix + s.key, default_cell(s), s.doc)
             for s in dataclass_settings(RealtimeSettings, REALTIME).values()]
    rows += [row(f"S2S_{s.key}", default_cell(s), s.doc) for s in PROJECT]
    return "\n".join(rows)


def readme(text: str) -> str:
    before, begin, rest = text.partition(BEGIN)
    _, end, after = rest.partition(END)
    if not begin or not end:
        raise SystemExit(f"README.md has no {BEGIN!r} ... {END!r} markers")
    return f"{before}{BEGIN}\n{table()}\n{END}{after}"


def documents() -> dict[Path, str]:
    """Each generated file and the text it should have."""
    out = {ROOT / "config" / f"{stage}.env": env_file(stage) for stage in STAGES}
    out[README] = readme(README.read_text())
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only say whether the files match (exit 1 if not)")
    args = parser.parse_args()
    stale = [path for path, text in documents().items() if not path.is_file() or path.read_text() != text]
    if args.check:
        for path in stale:
            print(f"{path.relative_to(ROOT)} differs from the settings' declarations: run scripts/settings_docs.py")
        return 1 if stale else 0
    for path, text in documents().items():
        if path in stale:
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
