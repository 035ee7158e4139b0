"""A plugin with a misspelt hook name."""

from anygpt_core import hookimpl


@hookimpl
def anygpt_modalitys():
    return []
