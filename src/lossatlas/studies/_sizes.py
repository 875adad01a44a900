"""Metric settings shared by the studies at each size."""

TINY = {"steps": 7, "span": 1.0, "max_minima": 2, "lanczos_products": 30, "trace_probes": 6, "sharp_steps": 2,
        "width_steps": 9, "audit_budget": 20, "metric_n": 96, "seed": 0}
QUICK = {"steps": 21, "span": 1.0, "max_minima": 4, "lanczos_products": 150, "trace_probes": 24, "sharp_steps": 8,
         "width_steps": 21, "audit_budget": 80, "metric_n": 512, "seed": 0}
FULL = {"steps": 51, "span": 1.0, "max_minima": 20, "lanczos_products": 1000, "trace_probes": 99, "sharp_steps": 20,
        "width_steps": 51, "audit_budget": 400, "metric_n": None, "seed": 0}


def member(name, model, data, loss, train, **columns):
    return {"name": name, "model": model, "data": data, "loss": loss, "train": train, "columns": columns}
