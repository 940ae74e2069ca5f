"""Delivery: where a finished download goes and how its client learns of it.

`storage` writes files to a filesystem or S3 (`aws`); `notifying` builds the original's callback
payload and sends it by HTTP, Kafka (`kafka_backend`) or SQS, signed by `signing` when asked.
"""
