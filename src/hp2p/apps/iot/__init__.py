"""IoT data streaming (Q.4100 §9.1): MQTT in, live state on a SubTree, history on a SubMesh.

Readings enter the CoreTree at gateways (:mod:`hp2p.apps.iot.gateway`), one broadcast per MQTT
message, encoded by :mod:`hp2p.apps.iot.reading`; the R3 bridge hands them to a SubTree, whose
members keep the latest value per topic, and to a SubMesh, whose members keep the history.
"""
