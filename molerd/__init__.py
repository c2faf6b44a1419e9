"""MoLE-RD: mixture of linear latency experts with regime detection, and the pipeline that retrains it."""

__version__ = "0.1.0"
