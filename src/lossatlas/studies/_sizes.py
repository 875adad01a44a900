"""Metric settings shared by the studies at each size."""

TINY = {"steps": 7, "span": 1.0, "max_minima": 2, "lanczos_products": 30, "trace_probes": 6, "sharp_steps": 2,
        "width_steps": 9, "audit_budget": 20, "metric_n": 96, "seed": 0}
QUICK = {"steps": 41, "span": 1.0, "max_minima": 5, "lanczos_products": 300, "trace_probes": 30, "sharp_steps": 10,
         "width_steps": 41, "audit_budget": 200, "metric_n": None, "seed": 0}
FULL = {"steps": 51, "span": 1.0, "max_minima": 20, "lanczos_products": 1000, "trace_probes": 99, "sharp_steps": 20,
        "width_steps": 51, "audit_budget": 400, "metric_n": None, "seed": 0}


def member(name, model, data, loss, train, **columns):
    return {"name": name, "model": model, "data": data, "loss": loss, "train": train, "columns": columns}
