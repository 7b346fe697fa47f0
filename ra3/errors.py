"""One exception type for every user-facing error: the CLI prints its message on one line and exits 2."""


class Ra3Error(Exception):
    """A problem with the user's input (config, path, data) described in one line."""


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type name if it has none): what a one-line error quotes."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
