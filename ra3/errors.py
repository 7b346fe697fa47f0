"""One exception type for every user-facing error: the CLI prints its message on one line and exits 2."""


class Ra3Error(Exception):
    """A problem with the user's input (config, path, data) described in one line."""
