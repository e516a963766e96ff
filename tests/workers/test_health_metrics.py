"""Reading Triton's Prometheus metrics."""

from workers.health import metrics_parse

SAMPLE = """# HELP nv_inference_pending_request_count Instantaneous number of pending requests
# TYPE nv_inference_pending_request_count gauge
nv_inference_pending_request_count{model="echo",version="1"} 3
nv_inference_pending_request_count{model="slow",version="1"} 2
nv_inference_request_success{model="echo",version="1"} 100
nv_inference_request_success{model="slow",version="1"} 10
nv_inference_request_duration_us{model="echo",version="1"} 50000
nv_inference_request_duration_us{model="slow",version="1"} 2000000
nv_cpu_utilization 0.5
"""


def test_pending_per_model_and_totals():
    metrics = metrics_parse(SAMPLE)
    assert metrics.pending == {"echo": 3, "slow": 2}
    assert metrics.request_count == 110
    assert metrics.request_duration_us == 2_050_000


def test_garbage_is_ignored():
    assert metrics_parse("not metrics\n{}\n").request_count == 0
