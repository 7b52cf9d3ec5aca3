"""The protocol's errors say whose fault it is.

- ProtocolError: a peer's bad bytes (radio, MQTT, flash). Everything `decode` rejects raises it,
  and nothing else escapes decode, for any input whatsoever.
- A caller's misuse (encoding a field out of range, a frame longer than the radio carries, a key
  of the wrong length, an unknown frame type) raises ValueError (TypeError for a value CBOR
  cannot carry).

So a handler of radio or MQTT input catches ProtocolError and never hides a bug of ours behind
"bad frame" (h11 separates RemoteProtocolError from LocalProtocolError the same way). The misuse
side uses the builtins rather than a class of our own: a class costs heap on a 112 KB board, and
ValueError is what Python code expects from a bad argument.
"""


class ProtocolError(Exception):
    """Bad bytes from outside (radio, MQTT, flash): the message says what was expected and what
    arrived. The only exception `protocol.decode` raises, for any input whatsoever."""

    def __init__(self, msg):
        super().__init__(msg)
        self.msg = msg

    def __str__(self):
        return self.msg
