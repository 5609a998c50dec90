"""Conversation memory, one per browser (cookie), never shared across the server."""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from proto import ChatMessage
from services.personas import DEFAULT_PERSONA, HISTORY_MESSAGES


@dataclass
class Conversation:
    id: str
    persona: str = DEFAULT_PERSONA
    history: deque = field(default_factory=lambda: deque(maxlen=HISTORY_MESSAGES))
    turns: int = 0  # turn numbers only grow, so workers can drop superseded work
    active_turn: int | None = None
    last_used: float = field(default_factory=time.monotonic)

    def set_persona(self, persona: str) -> None:
        """A persona change starts the conversation afresh, as in the original."""
        if persona != self.persona:
            self.persona = persona
            self.history.clear()

    def clear(self) -> None:
        self.history.clear()

    def next_turn(self) -> int:
        self.turns += 1
        self.active_turn = self.turns
        return self.turns

    def remember(self, user_text: str, reply_text: str) -> None:
        self.history.append(ChatMessage("user", user_text))
        self.history.append(ChatMessage("assistant", reply_text))


class ConversationStore:
    """Bounded: the least recently used conversation goes first when full."""

    def __init__(self, capacity: int = 10000):
        self._items: OrderedDict[str, Conversation] = OrderedDict()
        self._capacity = capacity

    def get_or_create(self, conversation_id: str | None) -> Conversation:
        conversation = self._items.get(conversation_id or "")
        if conversation is None:
            conversation = Conversation(secrets.token_urlsafe(18))
            self._items[conversation.id] = conversation
            while len(self._items) > self._capacity:
                self._items.popitem(last=False)
        self._items.move_to_end(conversation.id)
        conversation.last_used = time.monotonic()
        return conversation

    def get(self, conversation_id: str | None) -> Conversation | None:
        return self._items.get(conversation_id or "")

    def __len__(self) -> int:
        return len(self._items)
