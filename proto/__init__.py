"""s2s wire protocol: see proto/README.md."""

from proto.messages import *  # noqa: F401,F403
from proto.messages import PROTOCOL_VERSION, ProtocolError, decode, encode, stage_of, tag_of  # noqa: F401
from proto.states import *  # noqa: F401,F403
