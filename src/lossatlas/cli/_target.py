"""The CLI's TARGET resolution: :mod:`lossatlas._targets` (a library module, so that
:func:`lossatlas.report` can resolve targets without importing the CLI)."""

from .._targets import (Target, _center_from_checkpoint, _exception_line, _from_file, _read_checkpoint,  # noqa: F401
                        centre_line, checkpoint_note, describe_state, parse_dtype, plain_loss,
                        problem_from_checkpoint, resolve)
