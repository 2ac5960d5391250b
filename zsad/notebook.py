"""What a chapter notebook checks about itself: the parameters papermill injected."""
from __future__ import annotations

import types


def check_parameters(namespace: dict, names) -> None:
    """Refuse a parameter the chapter does not have (papermill itself only warns, and the defaults would run).

    Parameters
    ----------
    namespace : the notebook's ``globals()``, right after the ``parameters`` cell and papermill's injected cell.
    names : the chapter's parameter names (those its ``parameters`` cell assigns).

    Raises
    ------
    ValueError
        Naming every unknown parameter and listing the chapter's own.
    """
    hidden: set = set()
    try:
        from IPython import get_ipython

        shell = get_ipython()
        if shell is not None:
            hidden = set(shell.user_ns_hidden)  # In, Out, get_ipython, exit, ... (IPython's own names)
    except ImportError:  # pragma: no cover - notebooks always have IPython
        pass
    names = set(names)
    unknown = sorted(k for k, v in namespace.items() if not k.startswith("_") and k not in hidden
                     and k not in names and not isinstance(v, types.ModuleType))
    if unknown:
        raise ValueError(f"unknown parameter(s) {', '.join(unknown)}; this chapter's parameters are "
                         f"{', '.join(sorted(names))} (papermill -p NAME VALUE)")
