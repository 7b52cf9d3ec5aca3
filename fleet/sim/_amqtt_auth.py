"""An amqtt auth plugin that lets every client in WITHOUT marking it anonymous.

Why: amqtt's own AnonymousAuthPlugin flags every session it admits as `is_anonymous`, and
amqtt then refuses persistent-session semantics to anonymous sessions (it drops them on
disconnect and does not queue QoS-1 messages for them). The virtual rig has no users, but its
collectors and gateways rely on clean_session=False, so we admit everyone as a known client.
Loaded by dotted path from fleet.sim.broker.amqtt_config(); 127.0.0.1 only.
"""
from dataclasses import dataclass

from amqtt.plugins.base import BaseAuthPlugin


class OpenAuthPlugin(BaseAuthPlugin):
    """Accept every CONNECT; sessions keep MQTT 3.1.1 persistent-session behaviour."""

    async def authenticate(self, *, session):
        return True

    @dataclass
    class Config:
        """No options."""
