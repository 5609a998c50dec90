"""`transformers serve`, unchanged, that also appends the body of every chat-completions request it
receives to the JSON-lines file $S2S_TEST_REQUEST_LOG, so a test sees what reached the real server.

    python -m tests.fakes.logged_transformers_serve serve MODEL --port N ...   (the CLI's arguments)
"""

import json
import os
import sys

from transformers.cli.serving import chat_completion
from transformers.cli.transformers import main

_handle = chat_completion.ChatCompletionHandler.handle_request


async def handle_and_log(self, body: dict, request_id: str):
    with open(os.environ["S2S_TEST_REQUEST_LOG"], "a", encoding="utf-8") as log:
        log.write(json.dumps(body) + "\n")
    return await _handle(self, body, request_id)


chat_completion.ChatCompletionHandler.handle_request = handle_and_log

if __name__ == "__main__":
    sys.argv[0] = "transformers"
    main()
