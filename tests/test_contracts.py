"""The page (which has no bundler) keeps its own copy of the names it shares with the gateway, in
gateway/static/js/contract.js: they must be proto's, and the page must use them."""

from __future__ import annotations

import json
import re
from pathlib import Path

from proto import STAGE_STATES, events

JS = Path(__file__).resolve().parents[1] / "gateway" / "static" / "js"


def js_const(source: str, name: str) -> str:
    """The text of `export const NAME = Object.freeze(...)`'s argument."""
    match = re.search(rf"export const {name} = Object\.freeze\((.*?)\);", source, re.DOTALL)
    assert match, f"contract.js declares no {name}"
    return match.group(1)


def js_object(text: str) -> dict[str, str]:
    return dict(re.findall(r'(\w+):\s*"([^"]*)"', text))


def test_the_pages_sse_event_names_are_protos():
    declared = js_object(js_const((JS / "contract.js").read_text(), "SSE_EVENTS"))
    assert declared == {name.upper(): name for name in events.SSE_EVENTS}


def test_the_pages_stage_states_are_protos_in_the_same_order():
    declared = json.loads(js_const((JS / "contract.js").read_text(), "STAGE_STATES"))
    assert declared == list(STAGE_STATES)


def test_the_upload_flow_listens_to_every_event_by_its_declared_name():
    source = (JS / "upload.js").read_text()
    assert set(re.findall(r"addEventListener\(SSE_EVENTS\.(\w+)", source)) == {e.upper() for e in events.SSE_EVENTS}
    # no event named by a bare string: a renamed event would go unheard
    assert not re.findall(r'es\.addEventListener\("', source)


def test_the_banner_says_something_for_every_stage_state():
    source = (JS / "stages.js").read_text()
    table = re.search(r"const STAGE_PROBLEMS = \{(.*?)\n\};", source, re.DOTALL)
    assert table, "stages.js has no STAGE_PROBLEMS table"
    assert re.findall(r"^\s{2}(\w+):", table.group(1), re.MULTILINE) == list(STAGE_STATES)


def test_every_error_event_names_its_kind():
    name, data = events.error("The LLM stage did not answer in time.", "timeout", "llm")
    assert name == "error" and data == {"message": "The LLM stage did not answer in time.", "kind": "timeout",
                                        "stage": "llm"}
    assert events.error("The turn was cancelled.", "cancelled")[1] == {"message": "The turn was cancelled.",
                                                                        "kind": "cancelled"}
