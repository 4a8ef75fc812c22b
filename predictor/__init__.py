"""The latency/energy predictor: profiles fitted from measurements, their file format and buckets."""
