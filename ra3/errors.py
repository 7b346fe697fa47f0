"""One exception type for every user-facing error: the CLI prints its message on one line and exits 2."""


class Ra3Error(Exception):
    """A problem with the user's input (config, path, data) described in one line."""


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type name if it has none): what a one-line error quotes."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def import_object(path: str, what: str):
    """The object at dotted ``path`` (``pkg.module.Name``), or a one-line error naming ``what`` it was meant to be."""
    import importlib

    module, _, name = str(path).rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as e:
        raise Ra3Error(f"{what} {path!r} cannot be imported: {e}") from None
