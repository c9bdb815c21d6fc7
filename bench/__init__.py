"""LocalCam benchmarks: real Home Assistant, virtual cameras, loopback only."""
