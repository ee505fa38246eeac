"""Multiple shooting: the time interval cut into segments that are solved side by side, as one
batch of independent problems, then matched at their boundaries."""

__all__: list[str] = []
