"""Reading Server-Sent Events in tests."""

from __future__ import annotations

import json


def parse_sse(text: str) -> list[tuple[str, dict]]:
    """(event, data) pairs from an SSE body; comments (keep-alives) are skipped."""
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        name, data = "message", []
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
        if data:
            events.append((name, json.loads("\n".join(data))))
    return events
