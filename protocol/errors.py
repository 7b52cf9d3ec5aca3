"""The protocol's one error: everything decode() rejects raises ProtocolError."""


class ProtocolError(Exception):
    """Bad bytes from outside (radio, MQTT, flash): the message says what was expected and what
    arrived. The only exception `protocol.decode` raises, for any input whatsoever."""

    def __init__(self, msg):
        super().__init__(msg)
        self.msg = msg

    def __str__(self):
        return self.msg
