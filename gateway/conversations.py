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
    client: str = ""  # the address that created it
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
    """Bounded twice: the least recently used conversation goes first when the store is full, and
    when one address holds more than `per_client`, its own least recently used one goes, so one
    client making conversations in a loop evicts only its own."""

    def __init__(self, capacity: int = 10000, per_client: int = 64):
        self._items: OrderedDict[str, Conversation] = OrderedDict()
        self._by_client: dict[str, OrderedDict[str, None]] = {}  # address -> its conversations, LRU first
        self._capacity = capacity
        self._per_client = per_client

    def get_or_create(self, conversation_id: str | None, client: str = "") -> Conversation:
        conversation = self._items.get(conversation_id or "")
        if conversation is None:
            conversation = Conversation(secrets.token_urlsafe(18), client)
            self._items[conversation.id] = conversation
            owned = self._by_client.setdefault(client, OrderedDict())
            owned[conversation.id] = None
            while len(owned) > self._per_client:
                self._drop(next(iter(owned)))
            while len(self._items) > self._capacity:
                self._drop(next(iter(self._items)))
        self._items.move_to_end(conversation.id)
        self._by_client[conversation.client].move_to_end(conversation.id)
        conversation.last_used = time.monotonic()
        return conversation

    def _drop(self, conversation_id: str) -> None:
        conversation = self._items.pop(conversation_id)
        owned = self._by_client[conversation.client]
        del owned[conversation_id]
        if not owned:
            del self._by_client[conversation.client]

    def get(self, conversation_id: str | None) -> Conversation | None:
        return self._items.get(conversation_id or "")

    def __len__(self) -> int:
        return len(self._items)
