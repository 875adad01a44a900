"""Comparing two LinearFolds' tables bit for bit (shared by the fold tests)."""
import torch


def bits(t: torch.Tensor) -> bytes:
    return t.detach().contiguous().view(-1).view(torch.uint8).numpy().tobytes()


def assert_same_tables(new, old, *, inputs: bool = False) -> None:
    """Same folded layers, table keys and products (bits); with ``inputs``, the same input identity: a
    reference to the cached batch at the same address, or a copy (an input made inside forward) with the
    same bits — compared by value, never by address (two temporaries may or may not land at one address)."""
    assert new.active_layers == old.active_layers
    assert new.tables.keys() == old.tables.keys()
    for i, table in new.tables.items():
        assert table.keys() == old.tables[i].keys()
        for key, e in table.items():
            o = old.tables[i][key]
            assert bits(e.products) == bits(o.products)
            assert (e.copy is None) == (o.copy is None)
            if inputs and e.copy is None:
                assert e.ptr == o.ptr
            if inputs and e.copy is not None:
                assert bits(e.copy) == bits(o.copy)
