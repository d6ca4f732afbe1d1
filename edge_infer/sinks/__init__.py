"""Decision sinks, the last stage of the data path: console, JSON lines, recordings, the device.

* :mod:`.base` -- the :class:`~.base.Sink` interface (``on_decision``, ``on_frame``, ``close``)
* :mod:`.console`, :mod:`.jsonl` -- decision lines for people and for files
* :mod:`.collect`, :mod:`.recorder` -- every decision in memory (reports), MCAP recordings
* :mod:`.device` -- ACTION frames back to the sensor board over the serial link
* :mod:`.mqtt` -- decisions, health and events to the fleet's MQTT broker, spooled on disk (:mod:`edge_infer.fleet`)
"""
