"""A fleet of boards over MQTT: what the MQTT sink (:mod:`edge_infer.sinks.mqtt`) and ``edge-infer fleet`` share.

* :mod:`.spool` -- the bounded on-disk store-and-forward queue (append-only segments with CRCs, an ack offset)
* :mod:`.broker` -- broker URLs, TLS and credentials (secrets from files), the paho client
* :mod:`.topics` -- the topic tree ``edge-infer/<device-id>/...`` and its payloads (docs/fleet.md)
* :mod:`.control` -- signed remote commands: which ones exist, how they are checked
* :mod:`.bursts` -- fallback bursts, found in the decision stream
* :mod:`.watch` -- the fleet table ``edge-infer fleet watch`` shows
"""
