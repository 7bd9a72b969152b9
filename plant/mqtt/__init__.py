"""The project's one MQTT client (over paho-mqtt's public API), its URL parser and its reconnect policy.

url.py      BrokerUrl: ``mqtt[s]://[user:pass@]host[:port][?ca_file=..&client_id=..]``
backoff.py  Backoff: exponential delays with jitter and a cap, for every reconnect loop
client.py   MqttClient: async, ``async with``, manual acknowledgements, persistent sessions, TLS, auth
threaded.py ThreadedClient: MqttClient on a thread of its own, reconnecting; acks on receipt or manual (Delivery)
"""

from paho.mqtt.client import topic_matches_sub

from plant.mqtt.backoff import Backoff
from plant.mqtt.client import MqttClient, MqttOptions
from plant.mqtt.threaded import Delivery, ThreadedClient
from plant.mqtt.url import BrokerUrl

__all__ = ["Backoff", "BrokerUrl", "Delivery", "MqttClient", "MqttOptions", "ThreadedClient", "topic_matches_sub"]
