"""ingest: validates chunk envelopes from the edges, decodes their H.264 frames into the Redis frame buffer, acknowledges them (chunks/ack) and deduplicates redelivered chunks by (device, boot, seq).

Built by the closed-loop issue; the configuration section is cloudtutor.config.cloud.
"""
